"""A study with an empty persistent compilation cache against one on the warm cache.

    python benchmarks/compile_cache.py                       # quick preset, oneDNN off / on, 2 repeats
    python benchmarks/compile_cache.py --settings preset --repeats 1

For each setting of the convolutions (``0``: XLA's own, ``1``: oneDNN's, through
``RATTR_JAX_ONEDNN``, which wins over the preset's ``compute.onednn``; ``preset``: the
preset's own) and each repeat: ``rattr study`` in a fresh output folder with an empty
compilation cache (``cold``), then the same study in another fresh folder on that cache
(``warm``: what another study, a ``--force`` re-run or a re-run after deleting the
outputs pays). Settings alternate within each repeat. Every run is its own process,
with ``JAX_LOG_COMPILES=1``: its wall time, stage seconds (``manifest.json``), the
programs it compiled (XLA compilations that were not persistent-cache hits), the
persistent-cache hits, and the seconds in tracing, lowering and XLA compilation.

jaxlib 0.10.2 cannot store programs with oneDNN convolutions (the custom call does not
serialize), so with ``1`` a warm study compiles every convolutional program again; since
the sixth session of 2026-12-05 `rattr study` runs such a study without the persistent
cache at all (the results file was measured just before: the cache on, the oneDNN
programs not stored).

Writes ``benchmarks/results/compile_cache.json`` (``--out``) with the settings, the device
and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

_COMPILE = re.compile(r"Finished XLA compilation of .*? in ([0-9.e-]+) sec")
_TRACE = re.compile(r"Finished tracing \+ transforming .*? in ([0-9.e-]+) sec")
_LOWER = re.compile(r"Finished jaxpr to MLIR module conversion .*? in ([0-9.e-]+) sec")
_HIT = re.compile(r"Persistent compilation cache hit")


def _one(preset: str, setting: str, out: str, cache: str) -> dict:
  env = dict(os.environ, JAX_LOG_COMPILES="1", JAX_PLATFORMS="cpu")
  env.pop("RATTR_JAX_ONEDNN", None)
  if setting != "preset":
    env["RATTR_JAX_ONEDNN"] = setting
  cmd = [sys.executable, "-m", "rattr_jax.cli", "study", "--preset", preset, "--out", out,
         "--cache-dir", cache, "--no-progress"]
  load0 = os.getloadavg()[0]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"rattr study failed (setting {setting}):\n{proc.stderr[-3000:]}")
  log = proc.stderr + proc.stdout
  compiles = [float(s) for s in _COMPILE.findall(log)]
  hits = len(_HIT.findall(log))
  with open(os.path.join(out, "manifest.json")) as f:
    man = json.load(f)
  return {"wall_seconds": round(wall, 2),
          "stage_seconds": {k: round(v, 2) for k, v in man["stage_seconds"].items()},
          "programs_compiled": len(compiles) - hits, "persistent_cache_hits": hits,
          "xla_compile_seconds": round(sum(compiles), 2),
          "tracing_seconds": round(sum(float(s) for s in _TRACE.findall(log)), 2),
          "lowering_seconds": round(sum(float(s) for s in _LOWER.findall(log)), 2),
          "load_average_start": load0, "load_average_end": os.getloadavg()[0]}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="quick")
  ap.add_argument("--settings", default="0,1",
                  help="comma-separated: 0 (XLA convolutions), 1 (oneDNN), preset")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                "compile_cache.json"))
  args = ap.parse_args()
  settings = [s for s in args.settings.split(",") if s]
  bad = [s for s in settings if s not in ("0", "1", "preset")]
  if bad or not settings:
    ap.error(f"--settings: expected a comma-separated list of 0, 1, preset; got {args.settings!r}")
  if args.repeats < 1:
    ap.error(f"--repeats must be >= 1; got {args.repeats}")
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from _timing import device_info, medians, write_result
  load_start = list(os.getloadavg())
  runs = []
  with tempfile.TemporaryDirectory(prefix="rattr_compile_cache_") as tmp:
    for r in range(args.repeats):
      for s in settings:
        cache = os.path.join(tmp, f"cache_{s}_{r}")
        for phase in ("cold", "warm"):
          res = _one(args.preset, s, os.path.join(tmp, f"out_{s}_{r}_{phase}"), cache)
          res.update(setting=s, repeat=r, phase=phase)
          runs.append(res)
          print(f"onednn={s} repeat {r} {phase}: {res['wall_seconds']:.1f} s, "
                f"{res['programs_compiled']} programs compiled "
                f"({res['xla_compile_seconds']:.1f} s in XLA), "
                f"{res['persistent_cache_hits']} cache hits", flush=True)
  walls = {f"{s}_{phase}": sorted(x["wall_seconds"] for x in runs
                                  if x["setting"] == s and x["phase"] == phase)
           for s in settings for phase in ("cold", "warm")}
  summary = {k: {"median_wall_seconds": round(m, 2), "wall_seconds": walls[k]}
             for k, m in medians(walls).items()}
  write_result(args.out, {
      "benchmark": "compile_cache",
      "settings": {"preset": args.preset, "onednn": settings, "repeats": args.repeats},
      "device": device_info(load_average_start=load_start,
                            load_average_end=list(os.getloadavg())),
      "summary": summary, "runs": runs})


if __name__ == "__main__":
  main()
