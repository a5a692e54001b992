"""`rattr study`: statistics against scipy, config errors, and a tiny study end to end."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats as st

from rattr_jax import study
from rattr_jax.cli import main
from rattr_jax.study import _aggregate as G
from rattr_jax.study import _stats as S

TINY = """
name = "tiny"
[model]
name = "mlp"
[data]
dataset = "mnist_embedded"
num_eval = 10
max_train = 256
[training]
seeds = [0, 1]
epochs = 1
batch_size = 32
[methods.ce]
objective = "ce"
[methods.softplus]
objective = "ce"
activation = "softplus:3"
[methods.diverged]
objective = "ce"
learning_rate = 1e30
[explainers.gradient]
[attacks]
names = ["random_sign", "topk"]
epsilons = [0.1]
num_steps = 2
k = 40
[metrics]
num_samples = 2
lipschitz_steps = 1
curve_steps = 4
[diagnostics]
pgd_steps = 2
hessian_iters = 2
hutchinson_samples = 2
num_examples = 4
"""


# ------------------------------------------------------------------ statistics
def test_paired_wilcoxon_equals_scipy():
  rng = np.random.default_rng(0)
  a = rng.normal(size=40)
  b = a + rng.normal(0.3, 1.0, size=40)
  d, p, n = S.paired_wilcoxon(a, b)
  ref = st.wilcoxon(a, b)
  assert p == pytest.approx(ref.pvalue, rel=1e-12)
  assert d == pytest.approx(np.median(a - b))
  assert n == 40
  # NaN pairs are dropped, exactly as if they were absent
  a2, b2 = np.append(a, np.nan), np.append(b, 1.0)
  assert S.paired_wilcoxon(a2, b2)[1] == pytest.approx(ref.pvalue, rel=1e-12)
  # all differences zero: no evidence
  assert S.paired_wilcoxon(a, a) == (0.0, 1.0, 40)


def test_holm_matches_hand_computation():
  p = [0.01, 0.04, 0.03, 0.005]
  # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
  np.testing.assert_allclose(S.holm(p), [0.03, 0.06, 0.06, 0.02])
  np.testing.assert_allclose(S.holm([0.5, 0.9]), [1.0, 1.0])
  assert S.holm([]).size == 0


def test_bootstrap_matches_plain_bootstrap_and_brackets_mean():
  rng = np.random.default_rng(1)
  v = rng.exponential(size=60)
  mean, lo, hi = S.bootstrap_ci(v, num_resamples=4000, seed=3)
  assert mean == pytest.approx(v.mean())
  assert lo <= mean <= hi
  # a plain percentile bootstrap (scipy) on the same data agrees to Monte-Carlo error
  ref = st.bootstrap((v,), np.mean, n_resamples=4000, method="percentile",
                     random_state=np.random.default_rng(4)).confidence_interval
  se = v.std() / math.sqrt(v.size)
  assert abs(lo - ref.low) < 0.25 * se and abs(hi - ref.high) < 0.25 * se
  # constant data: a zero-width interval; two seeds of the same values: the same interval
  assert S.bootstrap_ci(np.full(10, 2.5)) == (2.5, 2.5, 2.5)
  two = S.bootstrap_ci(np.stack([v, v]), num_resamples=4000, seed=3)
  assert two[0] == pytest.approx(mean)
  assert two[1] < mean < two[2]
  assert all(math.isnan(x) for x in S.bootstrap_ci(np.array([np.nan, np.nan])))


def test_rank_table_and_kendall_w():
  means = {"acc": {"a": 0.9, "b": 0.8, "c": 0.7}, "sens": {"a": 0.1, "b": 0.2, "c": 0.3}}
  ranks, spread, w = S.rank_table(means, {"acc": True, "sens": False})
  assert ranks["acc"] == {"a": 1.0, "b": 2.0, "c": 3.0} == ranks["sens"]
  assert w == pytest.approx(1.0)
  assert spread == {"a": 0.0, "b": 0.0, "c": 0.0}
  ranks, spread, w = S.rank_table({"m1": {"a": 1, "b": 2}, "m2": {"a": 2, "b": 1}},
                                  {"m1": True, "m2": True})
  assert w == pytest.approx(0.0)
  assert spread["a"] == pytest.approx(0.5)


# ------------------------------------------------------------------ bad configs
def _write(tmp_path, text, name="c.toml"):
  p = tmp_path / name
  p.write_text(text)
  return str(p)


@pytest.mark.parametrize("edit,field", [
    (lambda t: t + "\n[[broken", "not valid TOML"),
    (lambda t: t.replace('objective = "ce"\n[methods.softplus]',
                         'objective = "magic"\n[methods.softplus]'), "methods.ce.objective"),
    (lambda t: t.replace('names = ["random_sign", "topk"]', 'names = ["random_sign", "nope"]'),
     "attacks.names"),
    (lambda t: t.replace("num_samples = 2", 'num_samples = 2\nrobustness = ["wiggle"]'),
     "metrics.robustness"),
    (lambda t: t.replace("[explainers.gradient]", "[explainers.lime]"), "explainers"),
    (lambda t: t.replace('dataset = "mnist_embedded"', 'dataset = "imagenet"'), "data.dataset"),
    (lambda t: t.replace('dataset = "mnist_embedded"',
                         'dataset = "mnist"\ndata_dir = "/no/such/dir"'), "data.data_dir"),
    (lambda t: t.replace("epsilons = [0.1]", "epsilons = [8]"), "attacks.epsilons"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [0, 0]"), "training.seeds"),
    (lambda t: t.replace("[training]", "[training]\nbogus = 1"), "training.bogus"),
    (lambda t: t.replace("[training]", '[training]\nvectorize_seeds = "maybe"'),
     "training.vectorize_seeds"),
    (lambda t: t + '\n[compute]\nonednn = "fast"\n', "compute.onednn"),
    (lambda t: t + "\n[compute]\nthreads = 2\n", "compute.threads"),
    (lambda t: t + '\n[explainers.decoy]\nbase = "lime"\n', "explainers.decoy.base"),
    (lambda t: t + "\n[explainers.decoy]\npatches = 3\n", "explainers.decoy.patches"),
    (lambda t: t + '\n[explainers.decoy]\nlayer = "conv9"\n', "explainers.decoy.layer"),
    # a training term the model cannot take fails before any model is trained
    (lambda t: t.replace("[methods.diverged]", '[methods.as]\nobjective = "activation_sensitivity"'
                         '\nlayers = ["fc9"]\n[methods.diverged]'), "methods.as"),
])
def test_bad_config_is_one_line_error(tmp_path, capsys, edit, field):
  path = _write(tmp_path, edit(TINY))
  out = tmp_path / "out"
  assert main(["study", path, "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("rattr study: error:") and field in err, err
  assert "\n" not in err and "Traceback" not in err
  assert not (out / "scores.csv").exists()


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
  f = tmp_path / "file"
  f.write_text("x")
  cases = [(["study", "--preset", "nope"], "--preset"),
           (["study", "--preset", "quick", "--out", str(f)], "--out"),
           (["study", "--preset", "quick", "--out", str(f / "sub")], "--out"),
           (["study", "--preset", "quick", "--out", ""], "--out"),
           (["study", "--preset", "quick", "--force", "everything"], "--force"),
           (["study", str(tmp_path / "missing.toml")], "CONFIG")]
  for argv, flag in cases:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err, (argv, err)


def test_presets_parse():
  names = study.preset_names()
  assert {"quick", "mnist", "cifar10"} <= set(names)
  for n in names:
    cfg = study.load_config(preset=n)
    assert cfg.methods and cfg.explainers
  # every layer a preset names exists in its model (ResNet-18 has no "fc1")
  from rattr_jax import models
  for n in names:
    cfg = study.load_config(preset=n)
    shape = {"cifar10": (32, 32, 3)}.get(cfg.data.dataset, (28, 28, 1))
    model = models.create_model(cfg.model, input_shape=shape, num_classes=10,
                                **dict(cfg.model_settings))
    layers = set(models.layer_names(model))
    named = {l for m in cfg.methods for l in dict(m.params).get("layers", ())}
    named |= {dict(e.params)["layer"] for e in cfg.explainers if "layer" in dict(e.params)}
    assert named <= layers, (n, named - layers)
  assert {c.model for c in map(lambda n: study.load_config(preset=n), names)} >= {"lenet",
                                                                                "resnet18"}
  full = study.load_config(preset="mnist")
  assert len(full.seeds) >= 3 and full.data.num_eval >= 100
  objectives = {m.objective for m in full.methods}
  assert set(study.OBJECTIVES) <= objectives


def test_study_lowers_its_programs_under_compute_onednn(tmp_path, monkeypatch):
  # `compute.onednn` decides the convolutions of every program the study lowers (restored
  # after it, also when it fails); an explicitly set RATTR_JAX_ONEDNN wins (the process
  # keeps the setting it read from it); `auto` keeps the process's setting. The quick
  # preset runs on XLA's convolutions (cacheable programs).
  from rattr_jax import models
  from rattr_jax.models import _conv
  from rattr_jax.study import _pipeline as Pl
  assert study.load_config(preset="quick").onednn == "off"
  assert study.load_config(preset="mnist").onednn == "auto"
  seen = []
  def spy(config, **kw):
    seen.append((_conv.ONEDNN, models.onednn_in_use()))
    if config.name == "boom":
      raise RuntimeError("boom")
  monkeypatch.setattr(Pl, "_run_study", spy)
  monkeypatch.delenv("RATTR_JAX_ONEDNN", raising=False)
  monkeypatch.setattr(_conv, "ONEDNN", "auto")
  for value, want in [("off", False), ("on", True), ("auto", None)]:
    cfg = study.load_config(_write(tmp_path, TINY + f'\n[compute]\nonednn = "{value}"\n'))
    assert cfg.onednn == value and Pl.onednn_setting(cfg) is want
    study.run_study(cfg, out_dir=str(tmp_path / value), progress=False)
    assert seen[-1][0] == ("auto" if want is None else want) and _conv.ONEDNN == "auto"
  assert seen[0][1] is False and seen[2][1] == _conv.onednn_available()
  assert study.load_config(_write(tmp_path, TINY + "\n[compute]\nonednn = true\n")).onednn == "on"
  boom = study.load_config(_write(tmp_path, TINY.replace('name = "tiny"', 'name = "boom"')
                                  + '\n[compute]\nonednn = "off"\n'))
  with pytest.raises(RuntimeError, match="boom"):
    study.run_study(boom, out_dir=str(tmp_path / "boom"), progress=False)
  assert seen[-1][0] is False and _conv.ONEDNN == "auto"
  # RATTR_JAX_ONEDNN=0 was read at import (ONEDNN False): the quick study (`off`) and an `on`
  # study keep it; with =1 (ONEDNN True) the quick study runs on oneDNN
  on = study.load_config(_write(tmp_path, TINY + '\n[compute]\nonednn = "on"\n'))
  for env, process in [("0", False), ("1", True)]:
    monkeypatch.setenv("RATTR_JAX_ONEDNN", env)
    monkeypatch.setattr(_conv, "ONEDNN", process)
    for cfg in (study.load_config(preset="quick"), on):
      assert Pl.onednn_setting(cfg) is None
      study.run_study(cfg, out_dir=str(tmp_path / f"env{env}{cfg.name}"), progress=False)
      assert seen[-1][0] is process and _conv.ONEDNN is process


def test_study_with_onednn_runs_without_the_persistent_cache(tmp_path, monkeypatch, capsys):
  # `rattr study` leaves JAX's persistent compilation cache off for a study whose
  # convolutions are oneDNN's (jaxlib 0.10.2 cannot store them) and says so; a study on
  # XLA's convolutions (the quick preset) or without convolutions (an MLP) turns it on.
  from rattr_jax import models
  from rattr_jax.models import _conv
  monkeypatch.delenv("RATTR_JAX_ONEDNN", raising=False)
  monkeypatch.setattr(_conv, "ONEDNN", "auto")
  mlp = study.load_config(_write(tmp_path, TINY + '\n[compute]\nonednn = "on"\n'))
  cnn_on = study.load_config(_write(tmp_path, TINY.replace('name = "mlp"', 'name = "cnn"')
                                    + '\n[compute]\nonednn = "on"\n', name="cnn.toml"))
  assert not study.uses_onednn(mlp) and not study.uses_onednn(study.load_config(preset="quick"))
  assert study.uses_onednn(cnn_on) == _conv.onednn_available()
  assert study.uses_onednn(study.load_config(preset="mnist")) == _conv.onednn_available()
  enabled = []
  monkeypatch.setattr(study, "enable_compilation_cache", enabled.append)
  def stop(config, **kw):
    raise ValueError(f"stopped before running {config.name}")
  monkeypatch.setattr(study, "run_study", stop)
  for path, cached in [(str(tmp_path / "cnn.toml"), not _conv.onednn_available()),
                       (_write(tmp_path, TINY), True)]:
    enabled.clear()
    assert main(["study", path, "--out", str(tmp_path / "o"), "--cache-dir",
                 str(tmp_path / "cache")]) == 2
    printed = capsys.readouterr()
    assert "stopped before running" in printed.err
    assert enabled == ([str(tmp_path / "cache")] if cached else [])
    assert ("Persistent compilation cache off" in printed.out) is not cached
  assert models.persistent_cache_enabled() is False


@pytest.mark.slow
def test_model_settings_reach_every_model_the_study_builds(tmp_path, monkeypatch):
  # `[model] widths` (here one hidden layer of 7 units) is the architecture of the models the
  # study trains (one at a time, and vmapped seeds), restores, randomises and checks.
  from rattr_jax import training
  from rattr_jax.study import _pipeline as Pl
  text = TINY.replace('name = "mlp"', 'name = "mlp"\nwidths = [7]')
  text = text.replace("seeds = [0, 1]", 'seeds = [0]\nvectorize_seeds = "never"')
  text = text.replace("[methods.diverged]\nobjective = \"ce\"\nlearning_rate = 1e30\n", "")
  text = text.replace("[methods.softplus]\nobjective = \"ce\"\nactivation = \"softplus:3\"\n", "")
  cfg = study.load_config(_write(tmp_path, text))
  assert [m.label for m in cfg.methods] == ["ce"]
  data = Pl._load_data(cfg)
  built = Pl._build_model(Pl._train_config(cfg, cfg.methods[0], 0), data, cfg)
  assert [l.out_features for l in built.hidden] == [7]
  seen = []
  real = training.train
  def spy(c, **kw):
    seen.append([l.out_features for l in kw["model"].hidden])
    return real(c, **kw)
  monkeypatch.setattr(training, "train", spy)
  res = study.run_study(cfg, out_dir=str(tmp_path / "run"), progress=False)
  assert seen == [[7]]
  model = Pl._restore_model(Pl._train_config(cfg, cfg.methods[0], 0), data, cfg,
                            res.models[0].path)
  assert [l.out_features for l in model.hidden] == [7]


# ------------------------------------------------------------------ end to end
def _rows_without_time(path):
  with open(path) as f:
    return [r for r in csv.reader(f) if r[4] != "train_time"]


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
  cfg_path = _write(tmp_path, TINY)
  out = tmp_path / "run"
  cache = str(tmp_path / "jax-cache")
  # the reference run in a subprocess: it fills a persistent compilation cache that the
  # killed and resumed runs below reuse, without changing this process's JAX config
  cmd = [sys.executable, "-m", "rattr_jax.cli", "study", cfg_path, "--no-progress",
         "--cache-dir", cache, "--out"]
  ref = subprocess.run(cmd + [str(out)], capture_output=True, text=True)
  assert ref.returncode == 0, ref.stderr[-2000:]
  assert "did not finish" in ref.stdout and "diverged-s0" in ref.stdout
  for name in ("manifest.json", "scores.csv", "summary.csv", "summary.json", "REPORT.md",
               "study.json", "figures/saliency_grid.png", "figures/epsilon_curves.png",
               "figures/robustness_vs_accuracy.png", "figures/metric_bars.png",
               "maps/ce-s0/gradient.npz", "maps/softplus-s1/gradient.npz"):
    assert (out / name).exists(), name
  cfg = study.load_config(cfg_path)
  # the diverged model stopped cleanly and is reported; the others were evaluated
  report = (out / "REPORT.md").read_text()
  assert "diverged-s0" in report and "did not finish" in report
  # which convolutions ran: XLA's, since an MLP study keeps the persistent cache on
  assert ('Convolutions on CPU: XLA\'s (`compute.onednn = "auto"`; the persistent compilation '
          'cache was on') in report
  timings = [json.loads(l) for l in (out / "timings.jsonl").read_text().splitlines() if l]
  assert timings and all(t["onednn"] is False for t in timings)
  rows = study.read_scores(str(out / "scores.csv"))
  methods = {r["method"] for r in rows}
  assert methods == {"ce", "softplus"}
  # MLP seeds are trained as one vmapped program (training.vectorize_seeds = "auto")
  done = [json.loads(p.read_text()) for p in sorted(out.glob("models/*/DONE.json"))]
  assert len(done) == 6 and all(d.get("vectorized_seeds") for d in done)
  # one row per (method, seed, explainer, attack/metric, eps, example)
  keys = [(r["method"], r["seed"], r["explainer"], r["attack"], r["metric"], r["epsilon"],
           r["example"]) for r in rows]
  assert len(keys) == len(set(keys))
  # attacks keep labels and stay in the ball
  assert all(r["value"] == 1.0 for r in rows if r["metric"] == "label_kept")
  # summary.csv is recomputed exactly from scores.csv, and every CI brackets its mean
  again = G.summarize_file(str(out / "scores.csv"), cfg)
  with open(out / "summary.csv") as f:
    written = list(csv.DictReader(f))
  assert len(written) == len(again["rows"])
  for w, r in zip(written, again["rows"]):
    for col in G.SUMMARY_COLUMNS:
      assert w[col] == str(G._fmt(r[col])), (col, w, r)
    if r["n"]:
      assert r["ci_low"] <= r["mean"] <= r["ci_high"]
  # the claims are computed from the scores: the random-sign vs top-k claim has numbers
  claim = again["claims"][0]
  assert claim["status"] in ("reproduced", "not reproduced", "inconclusive")
  a, b = G.paired(*(G._groups(rows)[0][("ce", "gradient", att, "topk_intersection", "0.1")]
                    for att in ("random_sign", "topk")))
  assert claim["mean_a"] == pytest.approx(a.mean()) and claim["mean_b"] == pytest.approx(
      b.mean())
  reference = _rows_without_time(out / "scores.csv")
  # a second run does nothing
  res = study.run_study(cfg, out_dir=str(out), progress=False)
  assert res.nothing_to_do and res.computed_units == 0
  # changing one method re-runs only what depends on it (in a subprocess, with the cache)
  changed = _write(tmp_path, TINY.replace('activation = "softplus:3"',
                                          'activation = "softplus:3"\nlearning_rate = 3e-3'),
                   name="changed.toml")
  run = subprocess.run(cmd[:4] + [changed] + cmd[5:] + [str(out)], capture_output=True,
                       text=True)
  assert run.returncode == 0, run.stderr[-2000:]
  # per softplus model: train, explain, 2 attacks, 2 score units; x 2 seeds. Cached: the
  # ce models' 12 units and the 2 diverged trainings.
  assert "(12 units computed, 14 cached)" in " ".join(run.stdout.split()), run.stdout[-500:]
  # a config whose data changes under the same --out is refused, naming the field
  with pytest.raises(ValueError, match="data.num_eval"):
    study.run_study(study.parse_config(__import__("tomllib").loads(
        TINY.replace("num_eval = 10", "num_eval = 12"))), out_dir=str(out), progress=False)

  # killed mid-way (SIGTERM) and re-run: the same scores.csv (train_time is wall time)
  killed = tmp_path / "killed"
  cmd = cmd + [str(killed)]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not (killed / "units" / "attack").exists():
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=60)
  assert not (killed / "scores.csv").exists()
  assert subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode == 0
  assert _rows_without_time(killed / "scores.csv") == reference


MESH = """
name = "mesh"
[model]
name = "mlp"
[data]
num_eval = 6
max_train = 128
[training]
seeds = [3]
epochs = 1
batch_size = 32
[methods.softplus]
objective = "ce"
activation = "softplus:3"
[explainers.gradient]
[explainers.smoothgrad]
num_samples = 3
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


@pytest.mark.slow
def test_study_on_two_devices_equals_one_device(tmp_path):
  """The explain/attack/score stages run data-parallel over a 2-device mesh (6 images:
  3 per device) and give the same scores per example as one device."""
  cfg = _write(tmp_path, MESH)
  outs = {}
  for n in (1, 2):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(n), JAX_PLATFORMS="cpu")
    out = tmp_path / f"dev{n}"
    r = subprocess.run([sys.executable, "-m", "rattr_jax.cli", "study", cfg, "--out", str(out),
                        "--no-progress", "--cache-dir", "none"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    outs[n] = [r for r in study.read_scores(str(out / "scores.csv"))
               if r["metric"] != "train_time"]
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert len(manifest["devices"]) == n
  assert [(r["explainer"], r["attack"], r["metric"], r["example"]) for r in outs[1]] == [
      (r["explainer"], r["attack"], r["metric"], r["example"]) for r in outs[2]]
  a = np.array([r["value"] for r in outs[1]])
  b = np.array([r["value"] for r in outs[2]])
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, equal_nan=True)


DANCE_SENN = """
name = "dance-senn"
[model]
name = "mlp"
[data]
num_eval = 6
max_train = 128
[training]
seeds = [0]
epochs = 1
batch_size = 32
[methods.ce]
objective = "ce"
activation = "softplus:3"
[methods.senn_small]
objective = "senn"
lam = 1e-4
[methods.senn_large]
objective = "senn"
lam = 1e-1
[explainers.gradient]
[explainers.decoy]
num_examples = 5
patch_size = 14
num_steps = 3
epsilon = 1.0
[attacks]
names = ["random_sign"]
epsilons = [0.1]
num_steps = 2
k = 40
[metrics]
robustness = ["max_sensitivity", "local_lipschitz", "senn_stability"]
faithfulness = ["deletion", "senn_faithfulness"]
sanity = ["parameter_randomization"]
num_samples = 2
lipschitz_steps = 2
curve_steps = 4
[diagnostics]
pgd_steps = 2
hessian_iters = 2
hutchinson_samples = 2
num_examples = 3
"""


@pytest.mark.slow
def test_study_dance_and_senn_scores(tmp_path):
  """DANCE is a study explainer (on a subset of the images, its maps equal the library's
  explainer called per example with the study's keys), SENN models get their own stability
  and faithfulness, and the DANCE and SENN claims are computed from those scores."""
  import jax
  from rattr_jax import explainers, models
  from rattr_jax.study import _eval as E
  from rattr_jax.study import _pipeline as P
  cfg = study.parse_config(__import__("tomllib").loads(DANCE_SENN))
  out = tmp_path / "run"
  res = study.run_study(cfg, out_dir=str(out), progress=False)
  assert all(r.status == "completed" for r in res.models)
  rows = study.read_scores(res.scores_path)

  def vals(method, explainer, metric):
    return {r["example"]: r["value"] for r in rows if r["method"] == method
            and r["explainer"] == explainer and r["metric"] == metric and not r["attack"]}

  # DANCE on the first 5 of 6 images: finite there, NaN (left out) on the last
  for metric in ("max_sensitivity", "deletion", "parameter_randomization"):
    v = vals("ce", "decoy", metric)
    assert sorted(v) == list(range(6)) and math.isnan(v[5]), metric
  assert all(math.isfinite(x) for x in vals("ce", "decoy", "max_sensitivity").values()
             if x == x)
  assert not vals("ce", "decoy", "local_lipschitz")  # not computed through the solver
  # the saved DANCE maps are the library's explainer per example, keyed by example index
  run = next(r for r in res.models if r.label == "ce")
  spec = cfg.method("ce")
  data = P._load_data(cfg)
  model = P._restore_model(P._train_config(cfg, spec, 0), data, cfg, run.path)
  saved = np.load(out / "maps" / "ce-s0" / "decoy.npz")["attribution"]
  assert saved.shape == (5, 28, 28, 1)
  ex = explainers.get("decoy", layer=models.layer_names(model)[1], model=model,
                      patch_size=14, num_steps=3, epsilon=1.0)
  key = E.unit_key("explain", 0, "decoy")
  x = np.asarray(data.x_test[:5], np.float32)
  y = np.asarray(data.y_test[:5], np.int32)
  # recomputed by the study's path: bit-identical (what a resumed run relies on)
  np.testing.assert_array_equal(E.attributions(models.as_fn(model), ex, x, y, key=key), saved)
  # the library's explainer on one example: equal up to float reduction order, which the
  # decoy solver's steps amplify (a few % of the map's maximum on some pixels)
  for i in (0, 4):
    ref = np.asarray(ex(models.as_fn(model), x[i:i + 1], y[i:i + 1],
                        key=jax.random.fold_in(key, i)))[0]
    assert np.max(np.abs(saved[i] - ref)) < 0.05 * np.max(np.abs(ref))
    assert np.corrcoef(saved[i].ravel(), ref.ravel())[0, 1] > 0.99
  # SENN models carry senn_stability / senn_faithfulness; the CE model does not
  for m in ("senn_small", "senn_large"):
    stab = vals(m, "", "senn_stability")
    assert len(stab) == 6 and all(v >= 0 for v in stab.values())
    faith = vals(m, "", "senn_faithfulness")
    assert all(-1 - 1e-6 <= v <= 1 + 1e-6 for v in faith.values() if v == v)
  assert not vals("ce", "", "senn_stability")
  # the claims are computed from these scores
  claims = {c["claim"]: c for c in G.summarize_file(res.scores_path, cfg)["claims"]}
  senn = claims["SENN explanations get more stable as the robustness weight grows"]
  a, b = (np.array(list(vals(m, "", "senn_stability").values()))
          for m in ("senn_large", "senn_small"))
  assert senn["mean_a"] == pytest.approx(a.mean()) and senn["mean_b"] == pytest.approx(
      b.mean())
  dance = claims["DANCE decoy maps are less sensitive than gradient maps"]
  d = vals("ce", "decoy", "max_sensitivity")
  assert dance["n"] == 5 and dance["mean_a"] == pytest.approx(np.mean([d[i] for i in range(5)]))
  assert dance["status"] in ("reproduced", "not reproduced", "inconclusive")


def test_mass_center_attack_on_a_smooth_model_leaves_x():
  """The centre-of-mass objective has zero gradient at x_adv = x. A smooth model attacked
  exactly (no surrogate) never leaves x from x; the study starts it from a random-sign
  corner, which moves the map's centre (label kept, inside the ball)."""
  import jax
  import jax.numpy as jnp
  from rattr_jax import attacks, explainers, metrics, models
  from rattr_jax.study import _eval as E
  model = models.create_model("cnn", input_shape=(28, 28, 1), num_classes=10, widths=(4, 4, 8),
                              activation="softplus:3")
  fn = models.as_fn(model)
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  t = jnp.argmax(fn(x), -1)
  grad = explainers.get("gradient")
  cfg = attacks.AttackConfig(epsilon=0.1, step_size=0.05, num_steps=4, select_on="measure")
  stuck = attacks.mass_center_attack(fn, grad, x, t, key=jax.random.key(1), config=cfg)
  assert float(jnp.max(jnp.abs(stuck.x_adv - x))) == 0.0
  assert E.mass_center_random_start("mass_center", None)
  assert not E.mass_center_random_start("mass_center", fn)
  assert not E.mass_center_random_start("topk", None)
  x_adv = E.attack(fn, None, grad, np.asarray(x), np.asarray(t), name="mass_center",
                   epsilon=0.1, num_steps=4, step_size=0.05, k=20, select_on="measure",
                   key=jax.random.key(1))
  assert np.max(np.abs(x_adv - np.asarray(x))) <= 0.1 + 1e-6
  assert np.all(np.asarray(jnp.argmax(fn(jnp.asarray(x_adv)), -1)) == np.asarray(t))
  m0 = E.to_map(grad(fn, x, t))
  m1 = E.to_map(grad(fn, jnp.asarray(x_adv), t))
  assert float(np.mean(np.asarray(metrics.center_shift(jnp.asarray(m0), jnp.asarray(m1))))) > 0


def test_senn_scores_compile_once_per_shape_and_match_senn_stability(monkeypatch):
  """The study's SENN stability passes the weights as arguments: a second SENN of the
  same shape reuses the compiled program, and each value is `senn_stability` on that
  example with the example's folded key."""
  import jax
  from rattr_jax import senn as SN
  from rattr_jax.study import _eval as E
  traces = []
  real = SN.senn_stability

  def counted(*a, **k):
    traces.append(1)
    return real(*a, **k)

  monkeypatch.setattr(SN, "senn_stability", counted)
  x = np.asarray(jax.random.uniform(jax.random.key(0), (3, 30)), np.float32)
  t = np.array([0, 1, 0], np.int32)
  key = jax.random.key(7)
  models = [SN.create_senn(input_shape=(30,), num_classes=2, seed=s)
            for s in (0, 1)]
  first = E.senn_scores(models[0], x, t, names=("senn_stability",), epsilon=0.2, num_steps=3,
                        key=key)["senn_stability"]
  n = len(traces)
  second = E.senn_scores(models[1], x, t, names=("senn_stability",), epsilon=0.2, num_steps=3,
                         key=key)["senn_stability"]
  assert len(traces) == n, "a second SENN of the same shape recompiled"
  assert not np.allclose(first, second)
  for m, got in zip(models, (first, second)):
    want = [float(real(m, x[i:i + 1], key=jax.random.fold_in(key, i), target=t[i:i + 1],
                       epsilon=0.2, denominator="input", num_steps=3, num_restarts=1)[0])
            for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("name", ["topk", "frame"])
def test_study_attacks_compile_once_for_every_epsilon(monkeypatch, name):
  """The study's attack radius and step are traced config leaves: a second epsilon (the
  epsilon curve) reuses the compiled program, and each result equals the library attack
  called with that epsilon per example (example i's key folded with i)."""
  import jax
  import jax.numpy as jnp
  from rattr_jax import attacks, explainers, models
  from rattr_jax.study import _eval as E
  model = models.create_model("cnn", input_shape=(12, 12, 1), num_classes=3, widths=(4, 4, 8),
                              activation="softplus:3", seed=0)
  fn = models.as_fn(model)
  x = np.asarray(jax.random.uniform(jax.random.key(0), (3, 12, 12, 1)), np.float32)
  t = np.asarray(jnp.argmax(fn(jnp.asarray(x)), -1), np.int32)
  grad = explainers.get("gradient")
  traces = []
  lib = attacks.topk_attack if name == "topk" else attacks.frame_attack
  monkeypatch.setattr(E.A, lib.__name__, lambda *a, **k: (traces.append(1), lib(*a, **k))[1])
  E._runner.cache_clear()
  out = {}
  for eps in (0.05, 0.1, 0.05):
    out[eps] = E.attack(fn, None, grad, x, t, name=name, epsilon=eps, num_steps=3,
                        step_size=None, k=10, select_on="surrogate", key=jax.random.key(1))
  assert len(traces) == 1, "a second epsilon recompiled the attack"
  for eps in (0.05, 0.1):
    assert np.max(np.abs(out[eps] - x)) <= eps + 1e-6
    if name == "topk":
      cfg = attacks.AttackConfig(epsilon=eps, step_size=2.5 * eps / 3, num_steps=3, k=10)
      want = [np.asarray(lib(fn, grad, jnp.asarray(x[i:i + 1]), jnp.asarray(t[i:i + 1]),
                             key=jax.random.fold_in(jax.random.key(1), i), config=cfg).x_adv[0])
              for i in range(3)]
      np.testing.assert_allclose(out[eps], np.stack(want), atol=1e-6)
  E._runner.cache_clear()
