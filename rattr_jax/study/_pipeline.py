"""`run_study`: the stages of a study, end to end."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from typing import Any

import numpy as np

from rattr_jax.study import _config as C
from rattr_jax.study import _eval as E
from rattr_jax.study import _run as R


@dataclasses.dataclass(frozen=True)
class ModelRun:
  """One trained model of a study (a method and a seed)."""
  label: str
  seed: int
  key: str
  path: str
  status: str = "pending"
  message: str = ""
  train_time: float = float("nan")

  @property
  def name(self) -> str:
    return f"{self.label}-s{self.seed}"


@dataclasses.dataclass(frozen=True)
class StudyResult:
  """What `run_study` returns: where everything is and what happened."""
  out_dir: str
  scores_path: str
  summary_path: str
  report_path: str
  models: tuple[ModelRun, ...]
  computed_units: int
  cached_units: int
  stage_seconds: dict
  nothing_to_do: bool


def _train_config(config: C.StudyConfig, spec: C.MethodSpec, seed: int):
  from rattr_jax import training
  objective = spec.objective
  if objective == "senn":
    from rattr_jax.senn import register_senn_training
    register_senn_training()
    terms = (training.make_term("senn", lambda_robustness=float(spec.param("lam", 1e-2))),)
    model = "senn"
  else:
    terms = training.method_terms(objective, **dict(spec.params))
    model = config.model
  base = training.preset("fast_cpu")
  cfg = base.replace(model=model, dataset=config.data.dataset, activation=spec.activation,
                     epochs=spec.epochs or config.epochs, batch_size=config.batch_size,
                     seed=seed, terms=terms, max_train=config.data.max_train,
                     data_dir=config.data.data_dir or None, data_parallel=_data_parallel(),
                     **{"optimizer.learning_rate": spec.learning_rate or config.learning_rate})
  return training.validate(cfg)


def _data_parallel():
  """One process: one device per model (seeds run one after another, README "The study").
  Several processes: data-parallel over every device of the job, as ``rattr train``."""
  import jax
  return None if jax.process_count() > 1 else False


def _model_key(config: C.StudyConfig, spec: C.MethodSpec, seed: int) -> str:
  payload = {"locked": config.locked(), "method": dataclasses.asdict(spec),
             "seed": seed, "epochs": spec.epochs or config.epochs,
             "batch_size": config.batch_size, "lr": spec.learning_rate or config.learning_rate}
  if _vectorized(config, spec):  # another training procedure: another model
    payload["vectorized"] = True
  return C.stable_hash(payload)


MAX_LOSS = 1e6  # a finite loss above this is divergence (as in `rattr_jax.training.train`)


def _vectorized(config: C.StudyConfig, spec: C.MethodSpec) -> bool:
  """Whether the seeds of ``spec`` are trained as one vmapped program (`train_many`)."""
  if spec.objective == "senn" or len(config.seeds) < 2:
    return False
  v = config.vectorize_seeds
  return v == "always" or (v == "auto" and config.model in C.VECTORIZE_WINS)


def _train_group(config: C.StudyConfig, spec: C.MethodSpec, seeds: list[int], data) -> dict:
  """The seeds of one method trained as one program (`rattr_jax.training.train_many`).

  Every seed starts from its own initialisation and sees its own data order; the models
  train on the first ``data.max_train`` training images (no validation split) with the
  method's terms and optimizer. There are no per-epoch checkpoints: a group killed
  mid-way is retrained from the start. Each model's ``train_time`` is the group's wall
  time divided by the number of seeds. A model whose epoch-mean loss is not finite, or
  above `MAX_LOSS`, is reported as stopped (vmapped models do not affect each other).
  """
  import types
  from rattr_jax import training
  cfgs = [_train_config(config, spec, s) for s in seeds]
  models = [_build_model(c, data, config) for c in cfgs]
  n = config.data.max_train or len(data.x_train)
  x = np.asarray(data.x_train[:n], np.float32)
  y = np.asarray(data.y_train[:n], np.int32)
  c0 = cfgs[0]
  tx, _ = training.make_optimizer(c0.optimizer, len(x) // c0.batch_size, c0.epochs)
  t0 = time.perf_counter()
  res = training.train_many(models, tx, c0.terms, x, y, epochs=c0.epochs,
                            batch_size=c0.batch_size, seeds=list(seeds))
  losses = np.asarray(res.losses, np.float64)
  dt = (time.perf_counter() - t0) / len(seeds)
  out = {}
  for i, seed in enumerate(seeds):
    loss = losses[i]
    means = ", ".join(f"{v:.4g}" for v in loss)
    model, status = None, "completed"
    message = f"Trained {c0.epochs} epochs with {len(seeds)} seeds in one program."
    if not np.all(np.isfinite(loss)):
      status = "nan"
      message = (f"Non-finite training loss (epoch means: {means}); training stopped "
                 f"(seeds trained as one program; the others are unaffected).")
    elif np.any(np.abs(loss) > MAX_LOSS):
      status = "diverged"
      message = (f"Training diverged: epoch-mean loss above {MAX_LOSS:g} ({means}). "
                 f"Try a smaller learning rate.")
    else:
      model = res.model(i)
    out[seed] = types.SimpleNamespace(status=status, message=message, model=model,
                                      train_time=dt, epochs=c0.epochs)
  return out


def _model_dir(out: str, config: C.StudyConfig, spec: C.MethodSpec, seed: int) -> str:
  return os.path.join(out, "models",
                      f"{spec.label}-s{seed}-{_model_key(config, spec, seed)[:8]}")


def _build_model(cfg, data, config: C.StudyConfig):
  """The untrained model of training config ``cfg``: the study's ``[model]`` (its name and
  settings, e.g. ``widths``), or a registered builder's model (SENN)."""
  from rattr_jax import models as Mo
  from rattr_jax import training
  if cfg.model in training.MODEL_BUILDERS:
    built = training.MODEL_BUILDERS[cfg.model](cfg, data)
    return built[0] if isinstance(built, tuple) else built
  settings = dict(config.model_settings) if cfg.model == config.model else {}
  return Mo.create_model(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes,
                         activation=cfg.activation, seed=cfg.seed, **settings)


def _save_model(model, path: str) -> None:
  """The final weights as an orbax checkpoint in ``path/final``."""
  import orbax.checkpoint as ocp
  from flax import nnx
  target = os.path.join(os.path.abspath(path), "final")
  if R.is_main() and os.path.exists(target):
    shutil.rmtree(target)
  R.barrier("final-cleared")
  state = nnx.state(model)
  import jax
  if jax.process_count() > 1:  # host values (every process has the same): process 0 writes
    state = jax.tree_util.tree_map(np.asarray, jax.device_get(state))
  with ocp.StandardCheckpointer() as ck:  # every process calls it: orbax syncs, process 0 writes
    ck.save(target, state)
    ck.wait_until_finished()


def _restore_model(cfg, data, config, path: str):
  import orbax.checkpoint as ocp
  from flax import nnx
  model = _build_model(cfg, data, config)
  abstract = jax_tree_abstract(nnx.state(model), local=True)
  with ocp.StandardCheckpointer() as ck:
    state = ck.restore(os.path.join(os.path.abspath(path), "final"), abstract)
  nnx.update(model, state)
  return model


def jax_tree_abstract(tree, *, local: bool = False):
  """Shapes and dtypes of ``tree``; ``local``: placed on this process's first device (every
  process of a multi-process study restores the whole model for itself)."""
  import jax
  sh = jax.sharding.SingleDeviceSharding(jax.local_devices()[0]) if local else None
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                tree)


class _Lazy(dict):
  """A dict that computes a missing value on first access."""

  def __init__(self, make):
    super().__init__()
    self._make = make

  def __missing__(self, name):
    self[name] = value = self._make(name)
    return value

  def model(self, name):
    return self[name][2]


def _functions(trained, name, config):
  """``(fn, surrogate or None, model)`` of a trained model (restored on first use)."""
  from rattr_jax import models as Mo
  model, spec = trained[name]
  if isinstance(model, functools.partial):
    model = model()
    trained[name] = (model, spec)
  fn = Mo.as_fn(model)
  beta = config.attacks.surrogate_beta
  sur = None if _attacked_exactly(spec) else Mo.surrogate_fn(model, beta=beta)
  return fn, sur, model


def _attacked_exactly(spec) -> bool:
  """Smooth models (and SENN) are attacked on themselves, ReLU models through a surrogate."""
  return _is_smooth(spec.activation) or spec.objective == "senn"


def _random_start(config, label: str, attack: str) -> bool:
  """`E.mass_center_random_start` for a method, known before its model is loaded."""
  return E.mass_center_random_start(
      attack, None if _attacked_exactly(config.method(label)) else "surrogate")


def _is_smooth(activation: str) -> bool:
  return not activation.startswith("relu")


def _load_data(config: C.StudyConfig):
  """The study's dataset. With several processes it is loaded lazily (memory-mapped,
  `rattr_jax.data.load_dataset`), so each process reads only the rows it trains and
  evaluates on; one process loads it eagerly (the values are the same)."""
  from rattr_jax.data import load_dataset
  data = load_dataset(config.data.dataset, data_dir=config.data.data_dir or None,
                      seed=config.data.split_seed, lazy=None)
  n = config.data.num_eval
  if n > len(data.x_test):
    raise ValueError(f"`data.num_eval` ({n}) exceeds the test split ({len(data.x_test)}).")
  if data.x_test.ndim != 4:
    raise ValueError(f"`data.dataset` {config.data.dataset!r} is not an image dataset; the "
                     f"study needs NHWC images.")
  return data


def _attack_payload(config, run_key, es, attack, eps, random_start=False) -> dict:
  """What an attack unit's result depends on (its file is named by this hash)."""
  a = config.attacks
  out = {"model": run_key, "explainer": dataclasses.asdict(es), "attack": attack,
         "epsilon": eps, "num_steps": a.num_steps, "step_size": a.step_size, "k": a.k,
         "beta": a.surrogate_beta, "select_on": a.select_on,
         "similarity": list(config.metrics.similarity)}
  if random_start:  # only then, so the other units keep their names
    out["random_start"] = True
  return out


def _score_payload(config, run_key, es) -> dict:
  return {"model": run_key, "explainer": dataclasses.asdict(es),
          "metrics": dataclasses.asdict(config.metrics)}


def _senn_metrics(config, label) -> list[str]:
  """The SENN-only metrics a SENN model is scored on (none for other models)."""
  if config.method(label).objective != "senn":
    return []
  m = config.metrics
  return [n for n in (*m.robustness, *m.faithfulness) if n.startswith("senn_")]


def _diagnostics_payload(config, run_key, label) -> dict:
  # version 2: PGD starts and Hessian probes keyed per example (data-parallel diagnostics)
  payload = {"model": run_key, "diagnostics": dataclasses.asdict(config.diagnostics),
             "sanity": list(config.metrics.sanity), "curve": config.metrics.curve_steps,
             "version": 2}
  senn = _senn_metrics(config, label)
  if senn:
    m = config.metrics
    payload["senn"] = {"names": senn, "epsilon": m.robustness_epsilon,
                       "steps": m.lipschitz_steps}
  return payload


def onednn_setting(config: C.StudyConfig) -> bool | None:
  """The `rattr_jax.models.onednn_convolutions` setting a study runs under.

  ``compute.onednn`` ``on``/``off`` give ``True``/``False``, unless the environment
  variable ``RATTR_JAX_ONEDNN`` is set, which wins; ``None``: the process's own
  setting is kept (``auto``, or the variable set).
  """
  if config.onednn == "auto" or os.environ.get("RATTR_JAX_ONEDNN", "").strip():
    return None
  return config.onednn == "on"


def _onednn_scope(config: C.StudyConfig):
  """The context a study lowers its programs in: `onednn_convolutions(onednn_setting)`,
  or none when the process keeps its own setting."""
  from rattr_jax import models as Mo
  setting = onednn_setting(config)
  return contextlib.nullcontext() if setting is None else Mo.onednn_convolutions(setting)


def uses_onednn(config: C.StudyConfig) -> bool:
  """Whether the study's programs would have oneDNN convolutions (`onednn_setting`).

  Never for an MLP study without SENN models (no convolutions), nor while JAX's
  persistent compilation cache is on (`rattr_jax.models.persistent_cache_enabled`).
  `rattr study` asks this before it turns the cache on, and leaves the cache off
  for a study that answers yes: jaxlib 0.10.2 cannot store such programs.
  """
  from rattr_jax import models as Mo
  if config.model == "mlp" and not any(m.objective == "senn" for m in config.methods):
    return False
  with _onednn_scope(config):
    return Mo.onednn_in_use()


def run_study(config: C.StudyConfig, *, out_dir: str, force: str | None = None,
              progress: bool = True, console=None) -> StudyResult:
  """Runs (or resumes) a study and writes its outputs to ``out_dir``.

  Args:
    config: a `StudyConfig` (`load_config`).
    out_dir: output directory; see the README section "The study" for its files.
    force: a stage name (`STAGES`): redo that stage and every later one.
    progress: show progress (a bar with ETA on a terminal, lines otherwise).
    console: a ``rich.console.Console`` for the bar (default: a new one).

  Returns:
    A `StudyResult`.

  Several processes (``rattr launch -n N -- study``, or one per host): every process
  calls `run_study` with the same arguments; training and evaluation run data-parallel
  over every device of the job, process 0 alone writes (units, models' ``DONE.json``,
  ``study.json``, tables, figures, report, manifest) and decides which units are done,
  and every process returns once the outputs are complete.

  Its programs are lowered under `onednn_setting` (``compute.onednn``).
  """
  with _onednn_scope(config):
    return _run_study(config, out_dir=out_dir, force=force, progress=progress,
                      console=console)


def _run_study(config, *, out_dir, force, progress, console) -> StudyResult:
  import jax
  from rattr_jax import models as Mo
  from rattr_jax import training
  from rattr_jax.study import _aggregate, _report

  if force is not None and force not in C.STAGES:
    raise ValueError(f"Unknown `--force` {force!r}; expected one of {list(C.STAGES)}.")
  out = R.check_out_dir(out_dir)
  R.check_lock(out, config)
  forced = set(C.STAGES[C.STAGES.index(force):]) if force else set()
  main = R.is_main()
  progress = progress and main
  if console is None:
    from rich.console import Console
    console = Console()
  data = _load_data(config)
  _check_models(config, data)
  x_eval = np.asarray(data.x_test[:config.data.num_eval], np.float32)
  y_eval = np.asarray(data.y_test[:config.data.num_eval], np.int32)
  eval_hash = hashlib.sha256(x_eval.tobytes() + y_eval.tobytes()).hexdigest()
  counts = {"computed": 0, "cached": 0}
  stage_seconds = _StageClock(os.path.join(out, "timings.jsonl"), counts, write=main)
  failures: list[dict] = []
  units: dict[str, int] = {}

  def unit_path(stage: str, payload: dict) -> str:
    return os.path.join(out, "units", stage, C.stable_hash({**payload, "eval": eval_hash},
                                                          16) + ".npz")

  def cached(path: str, stage: str) -> bool:
    if main and stage in forced and os.path.exists(path) and path not in redone:
      os.remove(path)
    ok, = R.agree([main and os.path.exists(path)])  # process 0 looks, every process follows
    counts["cached" if ok else "computed"] += 1
    units[stage] = units.get(stage, 0) + 1
    return ok

  redone: set[str] = set()
  runs: list[ModelRun] = []
  trained: dict[str, Any] = {}

  with R.Progress(progress, console) as prog:
    # ------------------------------------------------------------------ train
    t0 = time.perf_counter()
    todo = [(s, seed) for s in config.methods for seed in config.seeds]
    st = prog.stage("train", len(todo))
    group: dict = {}  # seeds trained together, waiting for their turn in the loop
    for spec, seed in todo:
      key = _model_key(config, spec, seed)
      path = _model_dir(out, config, spec, seed)
      done_file = os.path.join(path, "DONE.json")
      if "train" in forced and os.path.exists(path) and path not in redone:
        if main:
          shutil.rmtree(path)
        redone.add(path)
      cfg = _train_config(config, spec, seed)
      was_done, resume = R.agree([main and os.path.exists(done_file),
                                  main and os.path.isdir(os.path.join(path, "checkpoints"))])
      units["train"] = units.get("train", 0) + 1
      counts["cached" if was_done else "computed"] += 1
      if was_done:
        done = R.read_json(done_file)
        run = ModelRun(spec.label, seed, key, path, done["status"], done["message"],
                       done["train_time"])
        runs.append(run)
        if run.status != "completed":
          failures.append({"model": run.name, "message": run.message})
        else:
          trained[run.name] = (functools.partial(_restore_model, cfg, data, config, path), spec)
        st.advance(f"{spec.label} s{seed}", cached=True)
        continue
      if _vectorized(config, spec):
        if (spec.label, seed) not in group:
          done_now = R.agree([main and os.path.exists(os.path.join(
              _model_dir(out, config, spec, s), "DONE.json")) for s in config.seeds])
          pending = [s for s, d in zip(config.seeds, done_now) if not d]
          group.update({(spec.label, s): r for s, r in
                        _train_group(config, spec, pending, data).items()})
        res = group.pop((spec.label, seed))
        train_time, epochs, extra = res.train_time, res.epochs, {"vectorized_seeds": True}
      else:
        # the study's model (with its [model] settings); SENN: the trainer builds its own
        model = None if cfg.model in training.MODEL_BUILDERS else _build_model(cfg, data, config)
        res = training.train(cfg, model=model, dataset=data, out_dir=path, resume=resume,
                             progress=False)
        train_time = float(sum(h.get("seconds", 0.0) for h in res.history))
        epochs, extra = len(res.history), {}
      run = ModelRun(spec.label, seed, key, path, res.status, res.message, train_time)
      os.makedirs(path, exist_ok=True)
      if res.status == "completed":
        _save_model(res.model, path)
      if main:
        R.write_json(done_file, {"status": res.status, "message": res.message,
                                 "train_time": train_time, "epochs": epochs, **extra})
      runs.append(run)
      if res.status != "completed":
        failures.append({"model": run.name, "message": res.message})
        if main:
          console.print(f"[yellow]model {run.name} stopped: {res.message} The study carries "
                        f"on without it.")
      else:
        trained[run.name] = (res.model, spec)
      st.advance(f"{spec.label} s{seed}")
    stage_seconds["train"] = time.perf_counter() - t0

    ok_runs = [r for r in runs if r.status == "completed"]
    fns = _Lazy(lambda name: _functions(trained, name, config))

    # ---------------------------------------------------------------- explain
    t0 = time.perf_counter()
    attributions: dict[tuple[str, str], np.ndarray] = {}
    st = prog.stage("explain", len(ok_runs) * len(config.explainers))
    for r in ok_runs:
      for es in config.explainers:
        p = unit_path("explain", {"model": r.key, "explainer": dataclasses.asdict(es)})
        if not cached(p, "explain"):
          fn, _, model = fns[r.name]
          ex = E.model_explainer(es, model)
          key = E.unit_key("explain", r.seed, es.name)
          n = E.num_examples(es, len(x_eval))
          attr = E.attributions(fn, ex, x_eval[:n], y_eval[:n], key=key)
          m = np.asarray(E.to_map(attr))
          if main:
            R.save_unit(p, {"model": r.name, "explainer": es.name}, {"attribution": attr,
                                                                     "map": m})
          # the saved array itself, not read back from a file process 0 may still be writing
          attributions[(r.name, es.name)] = np.asarray(attr)
        else:
          attributions[(r.name, es.name)] = R.load_unit(p)[1]["attribution"]
        if main:
          _link_map(out, r.name, es.name, p)
        st.advance(f"{r.name} {es.name}")
    stage_seconds["explain"] = time.perf_counter() - t0

    # ----------------------------------------------------------------- attack
    t0 = time.perf_counter()
    a = config.attacks
    todo = [(r, en, an, eps) for r in ok_runs for en in a.explainers for an in a.names
            for eps in a.epsilons]
    labels = _Lazy(lambda name: E.predictions(fns[name][0], x_eval))
    st = prog.stage("attack", len(todo))
    for r, en, an, eps in todo:
      es = config.explainer(en)
      p = unit_path("attack", _attack_payload(config, r.key, es, an, eps,
                                              _random_start(config, r.label, an)))
      if not cached(p, "attack"):
        fn, sur, model = fns[r.name]
        ex = E.model_explainer(es, model)
        key = E.unit_key("attack", r.seed, en, an, eps)
        n = E.num_examples(es, len(x_eval))
        xs, ys = x_eval[:n], y_eval[:n]
        x_adv = E.attack(fn, sur, ex, xs, ys, name=an, epsilon=eps,
                         num_steps=a.num_steps, step_size=a.step_size, k=a.k,
                         select_on=a.select_on, key=key)
        m0 = E.to_map(attributions[(r.name, en)])
        m1 = E.explain(fn, ex, x_adv, ys, key=E.unit_key("explain", r.seed, en))
        vals = E.similarities(m0, m1, config.metrics.similarity, k=a.k)
        vals["label_kept"] = E.accuracy(fn, x_adv, labels[r.name][:n])
        vals = E.pad(vals, len(x_eval))
        linf = np.max(np.abs(x_adv - xs).reshape(n, -1), axis=1)
        if main:
          R.save_unit(p, {"model": r.name, "explainer": en, "attack": an, "epsilon": eps},
                      {**{f"score/{k}": v for k, v in vals.items()}, "map_adv": m1,
                       "x_adv": x_adv.astype(np.float32), "linf": linf})
      st.advance(f"{r.name} {en} {an} eps={eps:.3g}")
    stage_seconds["attack"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ score
    t0 = time.perf_counter()
    ms, dg = config.metrics, config.diagnostics
    st = prog.stage("score", len(ok_runs) * (len(config.explainers) + 1))
    for r in ok_runs:
      spec = trained[r.name][1]
      for es in config.explainers:
        p = unit_path("score", _score_payload(config, r.key, es))
        if not cached(p, "score"):
          fn, _, model = fns[r.name]
          ex = E.model_explainer(es, model)
          key = E.unit_key("score", r.seed, es.name)
          n = E.num_examples(es, len(x_eval))
          xs, ys = x_eval[:n], y_eval[:n]
          # DANCE: the local Lipschitz estimate would differentiate through the decoy
          # solver at every ascent step; max-sensitivity (regenerated decoys) is its measure.
          rob = [m for m in ms.robustness if es.name != "decoy" or m != "local_lipschitz"]
          vals = E.robustness(fn, ex, xs, ys, names=rob,
                              epsilon=ms.robustness_epsilon, num_samples=ms.num_samples,
                              lipschitz_steps=ms.lipschitz_steps, key=key,
                              example_chunk=E.example_chunk(es))
          vals.update(E.faithfulness(fn, attributions[(r.name, es.name)], xs, ys,
                                     names=ms.faithfulness, curve_steps=ms.curve_steps,
                                     num_samples=ms.num_samples,
                                     key=jax.random.fold_in(key, 7)))
          if "parameter_randomization" in ms.sanity:
            rand = _build_model(_train_config(config, spec, 10_000 + r.seed), data, config)
            m_rand = E.explain(Mo.as_fn(rand), E.model_explainer(es, rand), xs, ys, key=key)
            vals["parameter_randomization"] = E.similarities(
                E.to_map(attributions[(r.name, es.name)]), m_rand, ("spearman",),
                k=config.attacks.k)["spearman"]
          if main:
            R.save_unit(p, {"model": r.name, "explainer": es.name},
                        {f"score/{k}": v for k, v in E.pad(vals, len(x_eval)).items()})
        st.advance(f"{r.name} {es.name}")
      # model diagnostics (and the random-map baseline, which is model-level)
      p = unit_path("score", _diagnostics_payload(config, r.key, r.label))
      if not cached(p, "score"):
        fn = fns[r.name][0]
        model = fns.model(r.name)
        key = E.unit_key("diagnostics", r.seed)
        vals = {"accuracy": E.accuracy(fn, data.x_test, data.y_test)}
        nd = min(dg.num_examples, len(x_eval))
        sub = {"robust_accuracy": E.robust_accuracy(
            fn, x_eval[:nd], y_eval[:nd], epsilon=dg.pgd_epsilon, num_steps=dg.pgd_steps,
            restarts=dg.pgd_restarts, key=key)}
        sub.update(E.geometry(Mo.as_fn(model), x_eval[:nd], y_eval[:nd],
                              iters=dg.hessian_iters, samples=dg.hutchinson_samples,
                              key=jax.random.fold_in(key, 1)))
        vals.update(E.pad(sub, len(x_eval)))
        if "random_map" in ms.sanity:
          rnd = E.random_attribution(x_eval, key=jax.random.fold_in(key, 2))
          f = E.faithfulness(fn, rnd, x_eval, y_eval, names=("insertion", "deletion"),
                             curve_steps=ms.curve_steps, num_samples=1, key=key)
          vals["random_map_insertion"] = f["insertion"]
          vals["random_map_deletion"] = f["deletion"]
        senn = _senn_metrics(config, r.label)
        if senn:
          d = float(np.prod(x_eval.shape[1:]))
          vals.update(E.senn_scores(model, x_eval, y_eval, names=senn,
                                    epsilon=float(ms.robustness_epsilon * np.sqrt(d)),
                                    num_steps=ms.lipschitz_steps,
                                    key=jax.random.fold_in(key, 3)))
        if main:
          R.save_unit(p, {"model": r.name}, {f"score/{k}": v for k, v in vals.items()})
      st.advance(f"{r.name} diagnostics")
    stage_seconds["score"] = time.perf_counter() - t0

  # ------------------------------------------------------------- aggregate/report
  t0 = time.perf_counter()
  plan = _plan(config, ok_runs, unit_path)
  agg_key = C.stable_hash({"plan": plan, "runs": [dataclasses.asdict(r) for r in runs]}, 16)
  nothing, = R.agree([counts["computed"] == 0 and not forced and main
                      and _outputs_current(out, agg_key)])
  scores_path = os.path.join(out, "scores.csv")
  summary_path = os.path.join(out, "summary.csv")
  report_path = os.path.join(out, "REPORT.md")
  if not nothing and main:
    rows = _aggregate.collect_rows(plan, runs, config)
    _aggregate.write_scores(scores_path, rows)
    summary = _aggregate.summarize(rows, config)
    _aggregate.write_summary(out, summary)
    stage_seconds["aggregate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _report.write_report(out, config, runs, rows, summary, x_eval=x_eval, y_eval=y_eval,
                         stage_seconds=stage_seconds.totals()["stage_seconds_total"])
    stage_seconds["report"] = time.perf_counter() - t0
    man = R.manifest(config, eval_hash=eval_hash, stage_seconds=dict(stage_seconds),
                     units=units, failures=failures)
    man.update(stage_seconds.totals())
    R.write_json(os.path.join(out, "manifest.json"), man)
    with open(os.path.join(out, ".aggregate_key"), "w") as f:
      f.write(agg_key)
  R.barrier("outputs-written")  # every process returns with the outputs on disk
  return StudyResult(out_dir=out, scores_path=scores_path, summary_path=summary_path,
                     report_path=report_path, models=tuple(runs),
                     computed_units=counts["computed"], cached_units=counts["cached"],
                     stage_seconds=stage_seconds, nothing_to_do=nothing)


class _StageClock(dict):
  """Stage wall times of this run; each is also appended to ``timings.jsonl``, so a study
  resumed over several runs (a long preset, a killed run) reports its total time per stage.

  A record holds the stage, its seconds, the units it computed (cumulative in this run),
  the load average and the UTC time. The time spent in a stage that was killed before it
  ended is not recorded (its finished units are, by the run that completes the stage)."""

  def __init__(self, path: str, counts: dict, *, write: bool = True):
    super().__init__()
    self._path, self._counts, self._write = path, counts, write

  def __setitem__(self, stage, seconds):
    super().__setitem__(stage, seconds)
    if not self._write:  # a process other than 0 of a multi-process study
      return
    from rattr_jax import models as Mo
    rec = {"stage": stage, "seconds": round(float(seconds), 3),
           "computed_units": self._counts["computed"],
           "load_average": [round(v, 2) for v in os.getloadavg()],
           "onednn": Mo.onednn_in_use(),
           "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(self._path, "a") as f:
      f.write(json.dumps(rec) + "\n")

  def totals(self) -> dict:
    """``stage_seconds_total`` (summed over every run of this folder) and ``runs``."""
    tot: dict[str, float] = {}
    loads, runs = [], 0
    try:
      with open(self._path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    except OSError:
      recs = []
    for r in recs:
      tot[r["stage"]] = tot.get(r["stage"], 0.0) + r["seconds"]
      loads.append(r["load_average"][0])
      runs += r["stage"] == "train"
    return {"stage_seconds_total": tot, "runs": runs,
            "load_average_1min": {"min": min(loads), "max": max(loads)} if loads else None}


def _check_models(config, data) -> None:
  """Each method's model is built once and checked before anything is trained: it takes the
  method's training terms (e.g. an activation-sensitivity layer it has), the error naming
  the method, and every DANCE layer the study names."""
  from rattr_jax import training
  x, y = np.asarray(data.x_train[:2], np.float32), np.asarray(data.y_train[:2], np.int32)
  decoys = [e for e in config.explainers if e.name == "decoy" and dict(e.params).get("layer")]
  for spec in config.methods:
    cfg = _train_config(config, spec, 0)
    model = _build_model(cfg, data, config)
    if spec.objective != "senn":
      try:
        training.resolve_terms(cfg.terms, model, x, y)
      except ValueError as e:
        raise ValueError(f"`methods.{spec.label}`: {e}") from None
    for es in decoys:
      E.model_explainer(es, model)


def _outputs_current(out: str, agg_key: str) -> bool:
  try:
    with open(os.path.join(out, ".aggregate_key")) as f:
      ok = f.read().strip() == agg_key
  except OSError:
    return False
  return ok and all(os.path.exists(os.path.join(out, n)) for n in
                    ("scores.csv", "summary.csv", "summary.json", "REPORT.md", "manifest.json"))


def _link_map(out: str, model: str, explainer: str, unit: str) -> None:
  """``maps/<model>/<explainer>.npz``: the saved maps under a readable name."""
  dst = os.path.join(out, "maps", model, f"{explainer}.npz")
  if os.path.exists(dst) and os.path.samefile(dst, unit):
    return
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  tmp = dst + ".tmp"
  if os.path.lexists(tmp):
    os.remove(tmp)
  try:
    os.link(unit, tmp)
  except OSError:
    shutil.copyfile(unit, tmp)
  os.replace(tmp, dst)


def _plan(config, ok_runs, unit_path) -> list[dict]:
  """Every unit file of this config, with what it holds (for `collect_rows`)."""
  plan = []
  a = config.attacks
  for r in ok_runs:
    row = {"model": r.name, "label": r.label, "seed": r.seed}
    for en in a.explainers:
      es = config.explainer(en)
      for an in a.names:
        for eps in a.epsilons:
          plan.append({**row, "kind": "attack", "explainer": en, "attack": an, "epsilon": eps,
                       "path": unit_path("attack", _attack_payload(
                           config, r.key, es, an, eps, _random_start(config, r.label, an)))})
    for es in config.explainers:
      plan.append({**row, "kind": "score", "explainer": es.name, "attack": "", "epsilon": None,
                   "path": unit_path("score", _score_payload(config, r.key, es))})
    plan.append({**row, "kind": "diagnostics", "explainer": "", "attack": "", "epsilon": None,
                 "path": unit_path("score", _diagnostics_payload(config, r.key, r.label))})
  return plan
