"""`rattr_jax.distributed` in one process: per-example methods over 4 simulated devices.

The device count is fixed when JAX starts its backend, and the pytest process
has one CPU device, so the 4-device comparisons run in a subprocess with
``JAX_NUM_CPU_DEVICES=4``. Every attribution method, every attack and the
robustness/faithfulness metrics run through `per_example` on a 4-device mesh
and on one device (``mesh=None``); per-example values must agree to
``rtol=1e-5, atol=1e-6`` (float32; the same per-example program runs on every
device, so they are in fact bitwise equal here) and the outputs must be
sharded over the 4 devices. A batch of 6 (not a multiple of 4) on the mesh
checks padding (`test_per_example_contract_and_index`).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rattr_jax import attribution, distributed as dist, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(num_devices: int) -> dict:
  env = dict(os.environ)
  env["JAX_NUM_CPU_DEVICES"] = str(num_devices)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


_SCRIPT = r"""
import functools, json
import jax, jax.numpy as jnp, numpy as np
from jax.tree_util import Partial
from rattr_jax import attacks, attribution, curvature, distributed as dist, metrics, models

assert jax.device_count() == 4, jax.devices()
mesh = dist.data_mesh()
model = models.create_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=0,
                            activation="softplus:5")
fn = models.as_fn(model)
rng = np.random.default_rng(0)
x = rng.uniform(0.05, 0.95, size=(6, 8, 8, 1)).astype(np.float32)
t = np.asarray(jax.numpy.argmax(fn(x), -1))
key = jax.random.key(3)
grad = attribution.gradient                        # the explainer; fn carries the weights
acfg = attacks.AttackConfig(num_steps=4, k=8, epsilon=0.05, step_size=0.01)
mcfg = attacks.ManipulationConfig(num_steps=4, learning_rate=1e-2, epsilon=0.05)
feats = models.feature_fn(model, models.layer_names(model, x[:1])[0])
v = rng.normal(size=x.shape).astype(np.float32)

CASES = {
  "gradient": (attribution.gradient, (fn, x, t), {}),
  "input_x_gradient": (attribution.input_x_gradient, (fn, x, t), {}),
  "integrated_gradients": (attribution.integrated_gradients, (fn, x, t), {"num_steps": 8}),
  "smoothgrad": (attribution.smoothgrad, (fn, x, t), {"key": key, "num_samples": 4}),
  "vargrad": (attribution.vargrad, (fn, x, t), {"key": key, "num_samples": 4}),
  "decoy_saliency": (attribution.decoy_saliency, (fn, x, t),
                     {"key": key, "layer": feats, "num_steps": 3, "patch_size": 4}),
  "random_sign_attack": (attacks.random_sign_attack, (fn, attribution.gradient, x, t),
                         {"config": acfg, "key": key}),
  "topk_attack": (attacks.topk_attack, (fn, attribution.gradient, x, t),
                  {"config": acfg, "key": key}),
  "mass_center_attack": (attacks.mass_center_attack, (fn, attribution.gradient, x, t),
                         {"config": acfg, "key": key}),
  "targeted_attack": (attacks.targeted_attack, (fn, attribution.gradient, x, t),
                      {"mask": np.eye(8, dtype=np.float32), "config": acfg, "key": key}),
  "frame_attack": (attacks.frame_attack, (fn, attribution.gradient, x, t),
                   {"config": mcfg, "key": key}),
  "max_sensitivity": (metrics.max_sensitivity, (fn, grad, x, t), {"key": key, "num_samples": 4}),
  "avg_sensitivity": (metrics.avg_sensitivity, (fn, grad, x, t), {"key": key, "num_samples": 4}),
  "local_lipschitz_estimate": (metrics.local_lipschitz_estimate, (fn, grad, x, t),
                               {"key": key, "num_samples": 4, "num_steps": 2,
                                "num_restarts": 1}),
  "random_perturbation_similarity": (metrics.random_perturbation_similarity, (fn, grad, x, t),
                                     {"key": key, "num_samples": 3}),
  "relative_input_stability": (metrics.relative_input_stability, (fn, grad, x, t),
                               {"key": key, "num_samples": 4}),
  "insertion": (metrics.insertion, (fn, grad, x, t), {"num_steps": 5}),
  "deletion": (metrics.deletion, (fn, grad, x, t), {"num_steps": 5}),
  "faithfulness_estimate": (metrics.faithfulness_estimate, (fn, grad, x, t), {"patch_size": 4}),
  "infidelity": (metrics.infidelity, (fn, grad, x, t), {"key": key, "num_samples": 4}),
  "explanation_sensitivity": (curvature.explanation_sensitivity, (fn, grad, x, t, v), {}),
}

out = {}
for name, (f, args, kw) in CASES.items():
  kw = dict(kw)
  k = kw.pop("key", None)
  sharded = dist.per_example(f, mesh)
  single = dist.per_example(f, None)
  # 8 examples on the mesh (2 per device) against the first 6 on one device.
  args8 = tuple(np.concatenate([a_, a_[:2]]) if isinstance(a_, np.ndarray) and a_.shape[:1] == (6,)
                else a_ for a_ in args)
  a8 = sharded(*args8, key=k, **kw)
  b = single(*args, key=k, **kw)
  lb, l8 = (jax.tree_util.tree_leaves(o) for o in (b, a8))
  la = lb
  diffs = []
  for w, u8 in zip(lb, l8):
    w, u8 = np.asarray(w, np.float64), np.asarray(u8, np.float64)[:6]
    fin = np.isfinite(w)
    assert (np.isfinite(u8) == fin).all(), name
    diffs.append(float(np.max(np.abs(u8[fin] - w[fin]) / (1e-6 + 1e-5 * np.abs(w[fin])),
                              initial=0.0)))
  big = [l for l in l8 if l.ndim >= 1]
  out[name] = {
      "max_scaled_diff": max(diffs),
      "num_leaves": len(la),
      "sharded": all(l.sharding.spec[:1] == ("data",) and len(l.sharding.device_set) == 4
                     and len(l.addressable_shards) == 4
                     and l.addressable_shards[0].data.shape[0] == 2 for l in big),
      "shape0": [int(l.shape[0]) for l in la],
  }
# The per-example contract: example i equals the method on x[i:i+1] with fold_in(key, i).
direct = np.concatenate([np.asarray(attribution.smoothgrad(
    fn, x[i:i + 1], t[i:i + 1], key=jax.random.fold_in(key, i), num_samples=4)) for i in range(6)])
viamesh = np.asarray(dist.per_example(attribution.smoothgrad, mesh)(fn, x, t, key=key,
                                                                     num_samples=4))
out["contract_max_abs"] = float(np.max(np.abs(direct - viamesh)))
# Chunked per device (lax.map over each device's rows): the same values.
chunked = np.asarray(dist.per_example(attribution.smoothgrad, mesh, chunk_size=1)(
    fn, x, t, key=key, num_samples=4))
out["chunk_max_abs"] = float(np.max(np.abs(chunked - viamesh)))
adv_c = dist.per_example(attacks.topk_attack, mesh, chunk_size=1)(fn, attribution.gradient,
                                                                  x, t, config=acfg, key=key)
adv_v = dist.per_example(attacks.topk_attack, mesh)(fn, attribution.gradient, x, t,
                                                    config=acfg, key=key)
out["chunk_attack_max_abs"] = float(np.max(np.abs(np.asarray(adv_c.x_adv) - np.asarray(adv_v.x_adv))))
# `index` moves the keys with the dataset position, not the row.
shifted = np.asarray(dist.per_example(attribution.smoothgrad, mesh)(
    fn, x[2:], t[2:], key=key, index=np.arange(2, 6), num_samples=4))
out["index_max_abs"] = float(np.max(np.abs(shifted - viamesh[2:])))
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_device_results():
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=subprocess_env(4),
                        capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-6000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


METHODS = ["gradient", "input_x_gradient", "integrated_gradients", "smoothgrad", "vargrad",
           "decoy_saliency", "random_sign_attack", "topk_attack", "mass_center_attack",
           "targeted_attack", "frame_attack", "max_sensitivity", "avg_sensitivity",
           "local_lipschitz_estimate", "random_perturbation_similarity",
           "relative_input_stability", "insertion", "deletion", "faithfulness_estimate",
           "infidelity", "explanation_sensitivity"]


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_four_devices_equal_one_device_per_example(four_device_results, name):
  r = four_device_results[name]
  assert r["num_leaves"] >= 1
  assert all(s == 6 for s in r["shape0"]), r
  assert r["max_scaled_diff"] <= 1.0, r       # |a - b| <= 1e-6 + 1e-5 |b|
  assert r["sharded"], r


@pytest.mark.slow
def test_per_example_contract_index_and_chunks(four_device_results):
  assert four_device_results["contract_max_abs"] <= 1e-6
  assert four_device_results["index_max_abs"] <= 1e-6
  assert four_device_results["chunk_max_abs"] <= 1e-6
  assert four_device_results["chunk_attack_max_abs"] <= 1e-6


# ----------------------------------------------------------- one device ----
def _mlp_fn():
  model = models.create_model("mlp", input_shape=(4, 4, 1), num_classes=3, seed=1)
  return models.as_fn(model)


def test_per_example_keys_do_not_depend_on_batch():
  fn = _mlp_fn()
  x = np.random.default_rng(1).uniform(size=(5, 4, 4, 1)).astype(np.float32)
  t = np.array([0, 1, 2, 0, 1])
  key = jax.random.key(7)
  run = dist.per_example(attribution.smoothgrad, None)
  full = np.asarray(run(fn, x, t, key=key, num_samples=3))
  part = np.asarray(run(fn, x[3:], t[3:], key=key, index=np.array([3, 4]), num_samples=3))
  np.testing.assert_allclose(part, full[3:], rtol=1e-6, atol=1e-7)
  # Different examples get different noise (the key is really folded per example).
  same_x = np.repeat(x[:1], 2, 0)
  two = np.asarray(run(fn, same_x, t[:2] * 0, key=key, num_samples=3))
  assert np.abs(two[0] - two[1]).max() > 1e-4
  # Chunks of 2 per device (3 chunks, the last one short): the same values.
  chunked = np.asarray(dist.per_example(attribution.smoothgrad, None, chunk_size=2)(
      fn, x, t, key=key, num_samples=3))
  np.testing.assert_allclose(chunked, full, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="chunk_size"):
    dist.per_example(attribution.gradient, chunk_size=0)
  # Without a key the function gets none (gradient takes no key).
  g = np.asarray(dist.per_example(attribution.gradient)(fn, x, t))
  np.testing.assert_allclose(g, np.asarray(attribution.gradient(fn, x, t)), rtol=1e-6, atol=1e-7)


def test_per_example_bad_input():
  fn = _mlp_fn()
  x = np.zeros((3, 4, 4, 1), np.float32)
  run = dist.per_example(attribution.gradient)
  with pytest.raises(ValueError, match="index"):
    run(fn, x, np.zeros(3, int), index=np.arange(2))
  with pytest.raises(ValueError, match="leading size"):
    dist.per_example(attribution.gradient, batch_argnums=(1, 2))(fn, x, np.zeros(2, int))
  with pytest.raises(ValueError, match="no positional array"):
    run(fn, 0, 1)


def test_process_slice_tiles_and_mesh():
  for n in (0, 1, 7, 8, 10):
    for c in (1, 2, 3):
      parts = [dist.process_slice(n, process_index=p, process_count=c) for p in range(c)]
      covered = np.concatenate([np.arange(n)[s] for s in parts])
      np.testing.assert_array_equal(covered, np.arange(n))
      m = -(-n // c)
      assert [s.stop - s.start for s in parts] == [min(m, max(0, n - p * m)) for p in range(c)]
  mesh = dist.data_mesh()
  assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
  with pytest.raises(ValueError, match="`n`"):
    dist.process_slice(-1)


def test_single_process_helpers():
  mesh = dist.data_mesh()
  x = np.arange(10, dtype=np.float32).reshape(5, 2)
  xs = dist.shard_batch(x, mesh)
  np.testing.assert_array_equal(np.asarray(xs), x)
  np.testing.assert_array_equal(dist.gather_examples(xs, 5), x)
  r = dist.replicate({"a": jax.numpy.ones(3), "b": 2}, mesh)
  assert r["b"] == 2 and r["a"].sharding.is_fully_replicated
  assert dist.is_main_process()
  assert dist.initialize() is False  # one process: a no-op
  with pytest.raises(ValueError, match="process_id"):
    dist.initialize(coordinator="localhost:1", num_processes=2, process_id=5)
  with pytest.raises(ValueError, match="missing"):
    dist.initialize(coordinator="localhost:1", num_processes=2)


# ------------------------------------------------------------- launcher ----
_CHILD = r"""
import os, signal, sys, time
pid = int(os.environ["RATTR_PROCESS_ID"])
assert os.environ["RATTR_NUM_PROCESSES"] == "3"
assert os.environ["JAX_COORDINATOR_ADDRESS"].startswith("localhost:")
assert os.environ["JAX_NUM_CPU_DEVICES"] == "2"
mode = sys.argv[1]
if mode == "ok":
  sys.exit(0)
if mode == "fail" and pid == 2:
  sys.exit(7)
if mode == "ignore":  # like a process of a jax.distributed job (SIGTERM = preemption notice)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
  signal.signal(signal.SIGTERM, lambda *a: (open(os.path.join(sys.argv[2], f"term{pid}"), "w").close(),
                                            sys.exit(143)))
open(os.path.join(sys.argv[2], f"started{pid}"), "w").close()
time.sleep(120)
"""


def _run_launch(mode, tmp_path):
  from rattr_jax import distributed as _launch
  t0 = time.monotonic()
  rc = _launch.launch([sys.executable, "-c", _CHILD, mode, str(tmp_path)], num_processes=3,
                      devices_per_process=2)
  return rc, time.monotonic() - t0


def test_launch_exit_status_and_failure_stops_the_others(tmp_path):
  assert _run_launch("ok", tmp_path)[0] == 0
  rc, seconds = _run_launch("fail", tmp_path)
  assert rc == 7 and seconds < 60
  # The processes still running were terminated (SIGTERM reached them).
  started = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("started"))
  termed = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("term"))
  assert [s.replace("started", "") for s in started] == [t.replace("term", "") for t in termed]


def test_launch_forwards_sigterm(tmp_path):
  code = ("import sys; from rattr_jax import distributed as _launch; "
          f"sys.exit(_launch.launch([sys.executable, '-c', {_CHILD!r}, 'wait', {str(tmp_path)!r}], "
          "num_processes=3, devices_per_process=2))")
  p = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env(1), cwd=ROOT)
  deadline = time.monotonic() + 60
  while len([f for f in os.listdir(tmp_path) if f.startswith("started")]) < 3:
    assert time.monotonic() < deadline and p.poll() is None
    time.sleep(0.1)
  p.send_signal(signal.SIGTERM)
  assert p.wait(timeout=60) == 143
  assert sorted(f for f in os.listdir(tmp_path) if f.startswith("term")) == [
      "term0", "term1", "term2"]


def test_launch_kills_processes_that_ignore_sigterm(tmp_path):
  code = ("import sys; from rattr_jax import distributed as _launch; "
          "from rattr_jax.distributed import _launch as L; L.GRACE_SECONDS = 1.0; "
          f"sys.exit(_launch.launch([sys.executable, '-c', {_CHILD!r}, 'ignore', {str(tmp_path)!r}], "
          "num_processes=3, devices_per_process=2))")
  p = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env(1), cwd=ROOT)
  deadline = time.monotonic() + 60
  while len([f for f in os.listdir(tmp_path) if f.startswith("started")]) < 3:
    assert time.monotonic() < deadline and p.poll() is None
    time.sleep(0.1)
  t0 = time.monotonic()
  p.send_signal(signal.SIGTERM)
  assert p.wait(timeout=60) == 143  # the children sleep 120 s: they were killed
  assert time.monotonic() - t0 < 30


def test_launch_cli_rejects_bad_input(capsys):
  from rattr_jax.cli import main
  assert main(["launch", "-n", "2", "--", "nonsense"]) == 2
  err = capsys.readouterr().err
  assert "rattr launch: error:" in err and "'train'" in err and "'nonsense'" in err
  assert main(["launch", "-n", "0", "--", "train", "--out", "x"]) == 2
  assert "num-processes" in capsys.readouterr().err
