"""The jitted training step: model + optax optimizer + weighted loss terms.

`make_train_step` returns a `TrainStep` bundle of compiled pure functions on a
`TrainState` pytree:

* ``step(state, x, y) -> (state, metrics)``: one optimisation step;
* ``run(state, x_all, y_all, idx) -> (state, metrics)``: ``idx.shape[0]``
  steps fused in one `lax.scan`, gathering each batch ``x_all[idx[i]]``
  on device (the loop uses this; metrics are stacked per step);
* ``run_batches(state, xb, yb) -> (state, metrics)``: the same for batches
  given as ``[k, B, ...]`` stacks (the loop uses this when the mesh spans
  several processes: each process puts on its devices only its columns of
  each batch, `rattr_jax.distributed.global_array`);
* ``evaluate(state, x, y) -> (loss_sum, num_correct)`` in inference mode;
* ``refresh(state, x, y) -> state``: recomputes the terms' per-epoch aux data.

The state argument is donated, so its buffers are reused in place. A step
whose loss or gradient is not finite leaves the state unchanged and sets
``state.nonfinite``; every later step is then a no-op, so the last good state
survives until the host notices.

Data parallelism: with a `jax.sharding.Mesh` (axis ``"data"``), the batch is
sharded over the devices and the state replicated; the same program runs
under GSPMD, so results equal single-device training up to float reduction
order. The mesh may span several processes (`rattr_jax.distributed`): every
process runs the same steps on the same global arrays, and the gradient
all-reduce crosses hosts. ``place`` replicates host values (every process
passes the same ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rattr_jax import distributed
from rattr_jax.models import call_with_features
from rattr_jax.models import view
from rattr_jax.training.terms.cross_entropy import cross_entropy
from rattr_jax.training._term import Term
from rattr_jax.training._terms import Batch, LossTerm, TermContext


@struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree; checkpointed as a whole).

  Attributes:
    step: global step (int32 scalar).
    params: trainable parameters (`nnx.State` of ``nnx.Param``).
    rest: other model state (BatchNorm statistics, RNG counters).
    opt_state: optax state.
    key: raw PRNG key data (uint32 ``[2]``); step ``s`` uses
      ``fold_in(key, s)``, so randomness does not depend on how steps are
      grouped into compiled calls (needed for exact resume).
    aux: per-term data refreshed each epoch (``{term_name: pytree}``).
    nonfinite: set once a step produced a non-finite loss or gradient.
  """

  step: jax.Array
  params: Any
  rest: Any
  opt_state: Any
  key: jax.Array
  aux: Any
  nonfinite: jax.Array


class TrainStep(NamedTuple):
  """Compiled functions of one training setup (see module docstring)."""

  init: Callable[[int], TrainState]
  step: Callable
  run: Callable
  evaluate: Callable
  refresh: Callable
  model_of: Callable[[TrainState], nnx.Module]
  mesh: Mesh | None
  place: Callable[[Any], Any]
  run_batches: Callable | None = None


def make_optimizer(config, steps_per_epoch: int, epochs: int
                   ) -> tuple[optax.GradientTransformation, Callable[[int], float]]:
  """Builds the optax optimizer and its learning-rate schedule from an `OptimizerConfig`."""
  o = config
  lr = float(o.learning_rate)
  total = max(1, steps_per_epoch * epochs)
  if o.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif o.schedule == "multistep":
    schedule = optax.piecewise_constant_schedule(
        lr, {int(m) * steps_per_epoch: float(o.gamma) for m in o.milestones})
  else:
    warm = int(o.warmup_epochs) * steps_per_epoch
    if warm > 0:
      schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warm, total)
    else:
      schedule = optax.cosine_decay_schedule(lr, total)
  parts = []
  if o.clip_norm is not None:
    parts.append(optax.clip_by_global_norm(float(o.clip_norm)))
  if o.name == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=float(o.weight_decay)))
  else:
    if o.weight_decay:
      parts.append(optax.add_decayed_weights(float(o.weight_decay)))
    if o.name == "adam":
      parts.append(optax.adam(schedule))
    else:
      parts.append(optax.sgd(schedule, momentum=float(o.momentum) or None,
                             nesterov=bool(o.nesterov)))
  return optax.chain(*parts), schedule


def default_mesh(data_parallel: bool | None = None) -> Mesh | None:
  """A 1-D ``"data"`` mesh over all devices, or ``None`` for one device."""
  devices = jax.devices()
  if data_parallel is False or (data_parallel is None and len(devices) == 1):
    return None
  return Mesh(np.array(devices), ("data",))


def _where_tree(pred, a, b):
  return jax.tree_util.tree_map(lambda u, v: jnp.where(pred, u, v), a, b)


def default_conv_impls() -> tuple[str | None, str | None]:
  """``(training passes, inner-attack loops)`` convolution implementations.

  ``(None, None)``: every pass keeps the model's own setting, whose
  ``"auto"`` is the ``"fast"`` convolution primitive on XLA:CPU and plain
  ``"lax"`` on GPU/TPU, whatever ``XLA_FLAGS`` says. Plain ``lax``
  convolutions must not be used for training on CPU: `TrainStep.run` fuses
  the steps in a `lax.scan`, and inside a loop body XLA:CPU compiles their
  autodiff weight-gradients with a generic emitter (measured 7-30x slower per
  step than the same step outside a loop, with or without the
  ``--xla_cpu_experimental_ynn_fusion_type=`` flag); the ``"fast"``
  convolution's own weight gradient stays on the fast path
  (`rattr_jax.models.conv2d`).
  """
  return None, None


def make_train_step(model: nnx.Module, optimizer: optax.GradientTransformation,
                    terms: Sequence[LossTerm], *, seed: int = 0, mesh: Mesh | None = None,
                    refresh_example: tuple[jax.Array, jax.Array] | None = None,
                    conv_impl: str | None = "auto",
                    attack_conv_impl: str | None = "auto") -> TrainStep:
  """Compiles the training step of ``model`` for ``terms`` and ``optimizer``.

  Args:
    model: a Flax NNX classifier ``[B, *F] -> [B, C]`` (its current weights
      initialise the state).
    optimizer: an optax transformation.
    terms: the objective: `rattr_jax.training.Term`\\ s (validated, not prepared
      against the model: a Hessian term's ``mode="auto"`` means
      reverse-over-reverse; `train` prepares them) or engine `LossTerm`\\ s;
      names must be unique.
    seed: seed of the state's PRNG key.
    mesh: optional mesh with a ``"data"`` axis for data parallelism.
    refresh_example: ``(x, y)`` arrays (or `jax.ShapeDtypeStruct`\\ s) shaped like the
      per-epoch refresh batch (needed when a term has a ``refresh``, to allocate ``aux``).
    conv_impl: convolution implementation of the training passes (clean
      forward, regularizer passes, backward) for models built from
      `rattr_jax.models.Conv2D`: ``"fast"``, ``"lax"``, ``None`` (the model's
      own) or ``"auto"`` (`default_conv_impls`).
    attack_conv_impl: the same for the inference-mode function used by inner
      attacks and evaluation (``ctx.eval_fn``).

  Returns:
    A `TrainStep`.
  """
  terms = tuple(t.loss_term() if isinstance(t, Term) else t for t in terms)
  if not terms:
    raise ValueError("`terms` must contain at least one LossTerm.")
  names = [t.name for t in terms]
  if len(set(names)) != len(names):
    raise ValueError(f"Loss-term names must be unique; got {names}.")
  if conv_impl == "auto" or attack_conv_impl == "auto":
    auto_train, auto_attack = default_conv_impls()
    conv_impl = auto_train if conv_impl == "auto" else conv_impl
    attack_conv_impl = auto_attack if attack_conv_impl == "auto" else attack_conv_impl
  m_train = view(model, train=True, conv_impl=conv_impl)
  m_eval = view(model, train=False, conv_impl=attack_conv_impl)
  graphdef_train, params0, rest0 = nnx.split(m_train, nnx.Param, ...)
  graphdef_eval, _, _ = nnx.split(m_eval, nnx.Param, ...)

  if mesh is not None:
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    def place(tree):
      # From host values, never `device_put` of a JAX array: a committed
      # array cannot be put on a multi-process mesh (no cross-host transfer
      # on CPU), and arrays placed that way broke orbax's multi-host save.
      return distributed.replicate(tree, mesh)

    def shard_batch(a):
      return jax.lax.with_sharding_constraint(a, batch_sharding)

    def replicate(tree):
      return jax.lax.with_sharding_constraint(tree, replicated)
  else:
    def place(tree):
      return tree

    def shard_batch(a):
      return a

    def replicate(tree):
      return tree

  def eval_model(params, rest):
    return nnx.merge(graphdef_eval, params, rest)

  refreshers = [(t.name, t.refresh) for t in terms if t.refresh is not None]
  clean_layers = tuple(dict.fromkeys(layer for t in terms for layer in t.clean_layers))

  def compute_aux(params, rest, x, y, key):
    out = {}
    for i, (name, fn) in enumerate(refreshers):
      out[name] = fn(eval_model(params, rest), x, y, jax.random.fold_in(key, i))
    return out

  def init(seed_: int = seed) -> TrainState:
    key = jax.random.key_data(jax.random.key(seed_))
    aux = {}
    if refreshers:
      if refresh_example is None:
        raise ValueError("`refresh_example` is required when a term has a refresh function.")
      shapes = jax.eval_shape(lambda p, r, x, y: compute_aux(p, r, x, y, jax.random.key(0)),
                              params0, rest0, *refresh_example)
      aux = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params0, rest=rest0,
                       opt_state=optimizer.init(params0), key=key, aux=aux,
                       nonfinite=jnp.zeros((), bool))
    # Copy so that donation never invalidates the model's own arrays (with a
    # mesh, `place` copies through host memory).
    return place(state) if mesh is not None else jax.tree_util.tree_map(jnp.array, state)

  def loss_fn(params, state, x, y, key):
    m = nnx.merge(graphdef_train, params, jax.tree_util.tree_map(lambda a: a, state.rest))
    if clean_layers:  # one clean pass for the logits and the hidden features terms read
      logits, feats = call_with_features(m, x, clean_layers)
      features = dict(zip(clean_layers, feats))
    else:
      logits, features = m(x), {}
    new_rest = nnx.split(m, nnx.Param, ...)[2]
    ctx = TermContext(params=params, rest=state.rest, graphdef_train=graphdef_train,
                      graphdef_eval=graphdef_eval, logits=logits, step=state.step,
                      aux=state.aux, features=features)
    batch = Batch(x, y)
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    keys = jax.random.split(key, len(terms))
    for term, k in zip(terms, keys):
      value, extra = term.fn(dataclasses.replace(ctx, name=term.name), batch, k)
      value = jnp.asarray(value, jnp.float32)
      total = total + term.weight * value
      metrics[term.name] = value
      metrics.update({kk: jnp.asarray(vv, jnp.float32) for kk, vv in extra.items()})
    return total, (new_rest, logits, metrics)

  def one_step(state: TrainState, x, y):
    x = shard_batch(x)
    y = shard_batch(y)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    (loss, (new_rest, logits, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state, x, y, key)
    grad_norm = optax.global_norm(grads)
    updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & ~state.nonfinite
    new_state = state.replace(
        step=jnp.where(ok, state.step + 1, state.step),
        params=_where_tree(ok, new_params, state.params),
        rest=_where_tree(ok, new_rest, state.rest),
        opt_state=_where_tree(ok, new_opt, state.opt_state),
        nonfinite=state.nonfinite | ~ok)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   acc=jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32)),
                   finite=ok)
    return replicate(new_state), metrics

  def run_steps(state, x_all, y_all, idx):
    def body(st, ix):
      return one_step(st, x_all[ix], y_all[ix])
    return jax.lax.scan(body, state, idx)

  def run_batches(state, xb, yb):
    return jax.lax.scan(lambda st, b: one_step(st, *b), state, (xb, yb))

  def evaluate(state, x, y):
    """Inference-mode ``(sum of CE, number correct)`` over ``x`` (padded rows: y = -1)."""
    logits = eval_model(state.params, state.rest)(shard_batch(x))
    valid = y >= 0
    ce = cross_entropy(logits, jnp.maximum(y, 0))
    correct = (jnp.argmax(logits, -1) == y) & valid
    return jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(correct)

  def refresh(state, x, y):
    key = jax.random.fold_in(
        jax.random.fold_in(jax.random.wrap_key_data(state.key), 0x7FFFFFFF), state.step)
    return replicate(state.replace(aux=compute_aux(state.params, state.rest, x, y, key)))

  def model_of(state: TrainState) -> nnx.Module:
    return nnx.merge(graphdef_eval, jax.device_get(state.params), jax.device_get(state.rest))

  return TrainStep(
      init=init,
      step=jax.jit(one_step, donate_argnums=0),
      run=jax.jit(run_steps, donate_argnums=0),
      evaluate=jax.jit(evaluate),
      refresh=jax.jit(refresh, donate_argnums=0),
      model_of=model_of,
      mesh=mesh,
      place=place,
      run_batches=jax.jit(run_batches, donate_argnums=0),
  )
