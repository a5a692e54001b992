"""Data-parallel training over 4 simulated CPU devices equals single-device training.

The device count is fixed when JAX initialises its backend, so the comparison
runs in a subprocess with ``JAX_NUM_CPU_DEVICES=4`` (JAX's setting for the CPU
device count; ``--xla_force_host_platform_device_count`` is not needed).
"""

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from rattr_jax import models, training
from rattr_jax.data import load_dataset

assert len(jax.devices()) == 4, jax.devices()


class BNNet(nnx.Module):
  def __init__(self, rngs):
    # No bias before BatchNorm: its exact gradient is zero, and Adam would
    # turn the float noise of that zero into lr-sized, device-dependent steps.
    self.fc = nnx.Linear(64, 32, use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)
    self.activation = models.Activation.softplus(3.0)

  def __call__(self, x):
    return self.head(self.activation(self.bn(self.fc(x.reshape(x.shape[0], -1)))))


data = load_dataset("digits", seed=0)
cfg = training.preset("fast_cpu", method="gradient_alignment", model="bnnet", dataset="digits",
                      epochs=2, batch_size=32, max_train=256, max_test=128,
                      **{"optimizer.schedule": "cosine"})
out = {}
for dp in (True, False):
  res = training.train(cfg.replace(data_parallel=dp), model=BNNet(nnx.Rngs(0)), dataset=data,
                       progress=False)
  leaves = jax.tree_util.tree_leaves(res.state.params) + jax.tree_util.tree_leaves(res.state.rest)
  if dp:
    shardings = {str(getattr(l, "sharding", None).__class__.__name__) for l in leaves}
    out["num_devices_used"] = len(leaves[0].sharding.device_set)
    out["addressable"] = all(len(l.addressable_shards) == 4 for l in leaves)
    ts = training.make_train_step(BNNet(nnx.Rngs(0)), training.make_optimizer(cfg.optimizer, 8, 2)[0],
                                  cfg.terms, mesh=training.default_mesh())
    s0 = ts.init(0)
    out["init_replicated"] = all(l.sharding.is_fully_replicated and len(l.addressable_shards) == 4
                                 for l in jax.tree_util.tree_leaves(s0))
    out["shardings"] = sorted(shardings)
  out["dp" if dp else "single"] = {
      "leaves": [np.asarray(l).ravel().tolist() for l in leaves],
      "history": res.history, "status": res.status}
print("RESULT" + json.dumps(out))
"""


def _run(script: str, devices: int) -> dict:
  """``script`` in a subprocess with ``devices`` CPU devices; its ``RESULT`` JSON line."""
  env = dict(os.environ)
  env["JAX_NUM_CPU_DEVICES"] = str(devices)
  env["JAX_PLATFORMS"] = "cpu"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_data_parallel_equals_single_device():
  out = _run(_SCRIPT, 4)
  assert out["num_devices_used"] == 4
  assert out["addressable"] and out["init_replicated"]
  assert out["shardings"] == ["NamedSharding"]
  dp, single = out["dp"], out["single"]
  assert dp["status"] == single["status"] == "completed"
  assert len(dp["leaves"]) == len(single["leaves"]) == 7  # 5 params + BatchNorm mean/var
  for a, b in zip(dp["leaves"], single["leaves"]):
    import numpy as np
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  for ha, hb in zip(dp["history"], single["history"]):
    assert abs(ha["train_loss"] - hb["train_loss"]) < 1e-4
    assert abs(ha["test_accuracy"] - hb["test_accuracy"]) <= 1 / 128 + 1e-9


_ONEDNN_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from rattr_jax.models import _conv

assert len(jax.devices()) == 2, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.random.normal(jax.random.key(0), (4, 9, 9, 8))
w = jax.random.normal(jax.random.key(1), (3, 3, 8, 6)) * 0.2
loss = lambda x, w: jnp.sum(jax.nn.softplus(_conv.conv2d(x, w, impl="fast")) ** 2)
step = jax.jit(jax.grad(loss, (0, 1)))
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
text = lambda a: step.lower(a, w).as_text()
one, sharded = step(x, w), step(xs, w)
print("RESULT" + json.dumps({
    "available": _conv.onednn_available(),
    "one_device_calls": text(x).count("__onednn$convolution"),
    "sharded_calls": text(xs).count("__onednn$convolution"),
    "max_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(one, sharded)),
    "scale": max(float(jnp.max(jnp.abs(a))) for a in one)}))
"""


def test_onednn_convolutions_only_in_one_device_programs():
  # XLA's SPMD partitioner has no rule for the oneDNN custom call (it would gather the
  # batch onto every device), so a program sharded over a mesh keeps XLA's convolutions;
  # a one-device program in the same process uses oneDNN; both give the same gradients.
  out = _run(_ONEDNN_SCRIPT, 2)
  if not out["available"]:
    pytest.skip("this jaxlib has no oneDNN convolutions")
  assert out["one_device_calls"] == 2 and out["sharded_calls"] == 0, out
  assert out["max_diff"] <= 1e-5 * out["scale"], out
