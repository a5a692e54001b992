"""Attribution throughput: rattr_jax vs Captum on the same networks and weights.

Times `gradient`, `integrated_gradients` and `smoothgrad` of rattr_jax through
the library's general code path (``rattr_jax.attribution.*`` on
``rattr_jax.models.as_fn(model)``) on the MNIST CNN, the CIFAR LeNet and an MLP
at several batch sizes, and reports images per second (medians over repeats,
after warm-up; the first call's time, i.e. tracing + compilation, is reported
separately).

When torch and captum are installed (the ``bench`` extra), Captum's
``Saliency``, ``IntegratedGradients`` and ``NoiseTunnel(Saliency)`` run on the
PyTorch twin of the same network with the same weights
(`benchmarks/_torch_models.py`), **round-robin in the same process**: every
repeat times each variant once in turn, so CPU contention from other
processes hits all variants alike. Ratios are medians of the per-repeat paired
ratios ``captum_time / ours_time`` (> 1 means rattr_jax is faster). It also
checks that the attributions agree (gradient and IG exactly up to float
rounding; SmoothGrad deterministically at zero noise, and as the agreement of
the two Monte-Carlo estimates at the benchmark's noise level).

Chunking: IG path points / SmoothGrad samples are evaluated ``chunk`` at a
time, ``chunk`` being the largest divisor of ``num_steps`` with
``chunk * B <= --chunk-images``; Captum gets the same chunk
(``internal_batch_size = chunk * B``, ``nt_samples_batch_size = chunk``). The
variant ``ours_default`` calls rattr_jax with ``chunk_size=None`` (the
library's default) against the same Captum run.

Interference: a PyTorch call leaves its worker threads spinning for a while,
and the next variant shares the 2 cores with them. ``--rewarm N`` makes N
untimed calls of a variant right before each of its timed calls, and
``--settle S`` sleeps S seconds first. A sleep lets every framework's threads
go idle, so each timed call starts cold; measured, that made Captum 3x slower
on the MLP, so it is not a fair default. Both default to 0 (plain
round-robin). Small-call ratios (MLP, batch 1) vary by +-30% between runs of
the same code. On 2026-12-05 eight rows (CNN and LeNet, gradient and IG, batch 1
and 16) were timed in three regimes, plain, ``--rewarm 3`` and ``--settle 0.05
--rewarm 1`` (each call as in a loop of itself): ratios moved by up to 0.5 between
regimes, none favoured either side consistently (`results/attribution_throughput_settle.json`
is a full run of the last).

Usage:
  python benchmarks/attribution_throughput.py            # full run (~10 min on 2 cores)
  python benchmarks/attribution_throughput.py --quick    # smoke run (~1 min)
  python benchmarks/attribution_throughput.py --xla-flags=--xla_cpu_experimental_ynn_fusion_type=
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _timing  # noqa: E402
MODELS = {"cnn": (28, 28, 1), "lenet": (32, 32, 3), "mlp": (64,)}
METHODS = ("gradient", "ig", "smoothgrad")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="short run: batches 1,16, 3 repeats")
  p.add_argument("--models", default="cnn,lenet,mlp")
  p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,16,128)")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7; quick 3)")
  p.add_argument("--num-steps", type=int, default=50, help="IG path points")
  p.add_argument("--ig-method", default="gausslegendre", help="IG rule (Captum's default)")
  p.add_argument("--num-samples", type=int, default=50, help="SmoothGrad samples")
  p.add_argument("--stddev", type=float, default=0.15, help="SmoothGrad noise, fraction of range")
  p.add_argument("--chunk-images", type=int, default=800,
                 help="max images per chunk (path points x batch) for both frameworks")
  p.add_argument("--no-default", action="store_true",
                 help="skip the ours_default (chunk_size=None) variant")
  p.add_argument("--no-peer", action="store_true", help="skip torch/captum")
  p.add_argument("--torch-threads", type=int, default=2)
  p.add_argument("--settle", type=float, default=0.0,
                 help="seconds of sleep before each timed call (0 disables)")
  p.add_argument("--rewarm", type=int, default=0,
                 help="untimed calls of a variant right before each of its timed calls")
  p.add_argument("--xla-flags", default=None,
                 help="appended to XLA_FLAGS before jax is imported")
  p.add_argument("--out", default=str(HERE / "results" / "attribution_throughput.json"))
  args = p.parse_args(argv)
  if args.batches is None:
    args.batches = "1,16" if args.quick else "1,16,128"
  if args.repeats is None:
    args.repeats = 3 if args.quick else 7
  args.batches = [int(b) for b in args.batches.split(",")]
  args.models = [m for m in args.models.split(",") if m]
  args.methods = [m for m in args.methods.split(",") if m]
  for m in args.models:
    if m not in MODELS:
      p.error(f"unknown model {m!r}; choose from {list(MODELS)}")
  for m in args.methods:
    if m not in METHODS:
      p.error(f"unknown method {m!r}; choose from {list(METHODS)}")
  return args


def chunk_points(n: int, batch: int, max_images: int) -> int:
  """Largest divisor ``d`` of ``n`` with ``d * batch <= max_images`` (at least 1)."""
  best = 1
  for d in range(1, n + 1):
    if n % d == 0 and d * batch <= max_images:
      best = d
  return best


def _timeit(f):
  s = time.perf_counter()
  f()
  return time.perf_counter() - s


def _agreement(a, b) -> dict:
  import numpy as np
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  diff = float(np.max(np.abs(a - b)))
  scale = float(np.max(np.abs(b)))
  cos = float(np.sum(a * b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
  return {"max_abs_diff": diff, "max_abs_ref": scale,
          "rel_err": diff / max(scale, 1e-30), "cosine": cos}


def run(args) -> dict:
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  sys.path.insert(0, str(HERE))
  import jax
  import jax.numpy as jnp
  import numpy as np

  import rattr_jax
  from rattr_jax import attribution as A
  import rattr_jax  # noqa: E402
  rattr_jax.configure_cpu()  # inline CPU dispatch, as `rattr` does
  from rattr_jax.models import as_fn, create_model

  peer = None
  if not args.no_peer:
    try:
      import captum
      import torch
      from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

      import _torch_models as TM
      torch.set_num_threads(args.torch_threads)
      peer = dict(torch=torch, captum=captum, TM=TM, Saliency=Saliency,
                  IntegratedGradients=IntegratedGradients, NoiseTunnel=NoiseTunnel)
    except ImportError as e:  # pragma: no cover - depends on the extra
      print(f"[peer disabled: {e}]")

  import warnings
  warnings.filterwarnings("ignore", message=".*required_grads has been set automatically.*")

  results = []
  key = jax.random.key(0)
  n, s = args.num_steps, args.num_samples
  for model_name in args.models:
    shape = MODELS[model_name]
    model = create_model(model_name, input_shape=shape, num_classes=10, seed=0)
    fn = as_fn(model)
    if peer:
      tm = peer["TM"].torch_from_flax(model)
      sal = peer["Saliency"](tm)
      ig = peer["IntegratedGradients"](tm)
      nt = peer["NoiseTunnel"](peer["Saliency"](tm))
    for batch in args.batches:
      rng = np.random.RandomState(batch)
      x = rng.uniform(0.0, 1.0, (batch,) + shape).astype(np.float32)
      flat = x.reshape(batch, -1)
      flat[:, 0], flat[:, 1] = 0.0, 1.0  # every example spans [0, 1]: sigma = stddev
      t = (np.arange(batch) % 10).astype(np.int32)
      xj, tj = jnp.asarray(x), jnp.asarray(t)
      if peer:
        xt = peer["TM"].to_torch_input(tm, x)
        tt = peer["torch"].from_numpy(t.astype(np.int64))
      for method in args.methods:
        chunk = chunk_points(n if method == "ig" else s, batch, args.chunk_images)
        ours, theirs = {}, None
        if method == "gradient":
          ours["ours"] = lambda: A.gradient(fn, xj, tj)
          if peer:
            theirs = lambda: sal.attribute(xt, target=tt, abs=False)
        elif method == "ig":
          ours["ours"] = lambda c=chunk: A.integrated_gradients(
              fn, xj, tj, num_steps=n, method=args.ig_method, chunk_size=c)
          if not args.no_default:
            ours["ours_default"] = lambda: A.integrated_gradients(
                fn, xj, tj, num_steps=n, method=args.ig_method)
          if peer:
            theirs = lambda c=chunk: ig.attribute(
                xt, target=tt, n_steps=n, method=args.ig_method, internal_batch_size=c * batch)
        else:
          ours["ours"] = lambda c=chunk: A.smoothgrad(
              fn, xj, tj, key=key, num_samples=s, stddev=args.stddev, chunk_size=c)
          if not args.no_default:
            ours["ours_default"] = lambda: A.smoothgrad(
                fn, xj, tj, key=key, num_samples=s, stddev=args.stddev)
          if peer:
            theirs = lambda c=chunk: nt.attribute(
                xt, nt_type="smoothgrad", nt_samples=s, nt_samples_batch_size=c,
                stdevs=args.stddev, target=tt, abs=False)

        fns = {k: (lambda f=f: jax.block_until_ready(f())) for k, f in ours.items()}
        compile_s = {k: _timeit(f) for k, f in fns.items()}  # first call: trace + compile
        outs = {k: np.asarray(f()) for k, f in ours.items()}  # second call: warm-up
        if theirs is not None:
          fns["captum"] = theirs
          ref = peer["TM"].from_torch(tm, theirs())  # warm-up
        # The callables block themselves (`fns` wraps ours in block_until_ready)
        # and were warmed up above.
        times, _ = _timing.round_robin(fns, args.repeats, sync={k: (lambda a: a) for k in fns},
                                       warmup=0, settle=args.settle, rewarm=args.rewarm)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "model": model_name, "batch": batch, "method": method,
            "chunk_points": chunk if method != "gradient" else None,
            "median_s": med,
            "images_per_s": {k: batch / v for k, v in med.items()},
            "first_call_s": compile_s,
            "all_s": times,
        }
        if theirs is not None:
          row["ratio_captum_over"] = {
              k: statistics.median([c / o for c, o in zip(times["captum"], times[k])])
              for k in ours}
          if method == "smoothgrad":
            # Different random streams: compare the two Monte-Carlo estimates,
            # and check exact agreement at zero noise (both reduce to gradient).
            row["agreement_noisy"] = _agreement(outs["ours"], ref)
            z_ours = A.smoothgrad(fn, xj, tj, key=key, num_samples=4, stddev=0.0)
            z_ref = peer["TM"].from_torch(tm, nt.attribute(
                xt, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, target=tt, abs=False))
            row["agreement"] = _agreement(z_ours, z_ref)
          else:
            row["agreement"] = _agreement(outs["ours"], ref)
        results.append(row)
        ratio = row.get("ratio_captum_over", {})
        print(f"{model_name:6s} B={batch:<4d} {method:10s} chunk={row['chunk_points']!s:4s} "
              + " ".join(f"{k}={1e3 * v:8.1f}ms" for k, v in med.items())
              + (" | ratio " + " ".join(f"{k}={v:.2f}x" for k, v in ratio.items()) if ratio else "")
              + (f" | rel_err={row['agreement']['rel_err']:.1e}" if "agreement" in row else ""),
              flush=True)

  return {
      "benchmark": "attribution_throughput",
      "settings": {
          "quick": args.quick, "models": {m: list(MODELS[m]) for m in args.models},
          "batches": args.batches, "methods": args.methods, "repeats": args.repeats,
          "settle_s": args.settle, "rewarm": args.rewarm,
          "num_steps": n, "ig_method": args.ig_method, "num_samples": s,
          "stddev": args.stddev, "chunk_images": args.chunk_images,
          "torch_threads": args.torch_threads, "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "timing": "round-robin per repeat, medians; ratio = median of paired "
                    "captum_time / ours_time (>1: rattr_jax faster)",
          "model_init": "random (seed 0), relu, 10 classes; inputs uniform in [0, 1]",
      },
      "device": _timing.device_info(
          jax_backend=jax.default_backend(),
          processor=platform.processor() or platform.machine(),
          load_average_at_end=list(os.getloadavg())),
      "versions": {
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": getattr(__import__("jaxlib"), "__version__", None),
          "rattr_jax": rattr_jax.__version__, "numpy": np.__version__,
          "torch": peer["torch"].__version__ if peer else None,
          "captum": peer["captum"].__version__ if peer else None,
      },
      "results": results,
      "targets": _targets(results),
  }


def _targets(results) -> dict:
  """The issue's targets: ratio >= 1.4 (CNN, IG/SmoothGrad, B >= 16); >= 5 (MLP, and B == 1).

  Checked on the library default (``ours_default``) when it was timed.
  """
  out = []
  for r in results:
    if "ratio_captum_over" not in r or r["method"] == "gradient":
      continue
    if r["model"] == "mlp" or r["batch"] == 1:
      need = 5.0
    elif r["model"] == "cnn" and r["batch"] >= 16:
      need = 1.4
    else:
      continue
    # The library's general code path (`chunk_size=None`) is what users get; the
    # matched-chunk ratio is kept beside it for an apples-to-apples reading.
    ratios = r["ratio_captum_over"]
    got = ratios.get("ours_default", ratios["ours"])
    out.append({"model": r["model"], "batch": r["batch"], "method": r["method"],
                "required_ratio": need, "ratio": got, "ratio_matched_chunk": ratios["ours"],
                "met": got >= need})
  return {"checks": out, "all_met": all(c["met"] for c in out) if out else None}


def main(argv=None) -> int:
  args = parse_args(argv)
  t0 = time.perf_counter()
  report = run(args)
  report["settings"]["wall_time_s"] = time.perf_counter() - t0
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))
  print(f"wrote {out} ({report['settings']['wall_time_s']:.0f} s); targets met: "
        f"{report['targets']['all_met']}")
  for c in report["targets"]["checks"]:
    if not c["met"]:
      print(f"  MISSED {c['model']} B={c['batch']} {c['method']}: {c['ratio']:.2f}x "
            f"< {c['required_ratio']}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
