"""Bad command-line input fails fast and clearly: one line naming the flag, exit 2, no traceback.

Every case here must fail before any data is loaded: the `no_data` fixture
replaces `rattr_jax.data.load_dataset` with a function that raises, so a
check that runs too late shows up as a test failure.
"""

import os
import subprocess
import sys
import time

import pytest

from rattr_jax.cli import _checks
from rattr_jax.cli import main


class Reached(Exception):
  """Raised instead of loading data: the arguments passed every check."""


@pytest.fixture
def no_data(monkeypatch):
  import rattr_jax.data

  def load_dataset(*a, **k):
    raise Reached()
  monkeypatch.setattr(rattr_jax.data, "load_dataset", load_dataset)


@pytest.fixture
def paths(tmp_path):
  f = tmp_path / "a_file"
  f.write_text("not a weights file\n")
  run = tmp_path / "old_run"
  (run / "checkpoints" / "latest" / "8").mkdir(parents=True)
  return {"FILE": str(f), "FILE_SUB": str(f / "sub"), "TMP": str(tmp_path / "new"),
          "RUN": str(run), "MISSING_DIR": str(tmp_path / "missing" / "w.npz"),
          "NO_DIR": str(tmp_path / "no_such_dir"), "DIR": str(tmp_path)}


def _sub(argv, paths):
  return [paths.get(a, a) for a in argv]


# (argv, the flag the message must name). "TMP" etc. are replaced by real paths.
BAD = [
    # --out: empty, unwritable, an existing file, under a file, missing
    (["explain", "--out", ""], "--out"),
    (["explain", "--out", "/proc/x"], "--out"),
    (["explain", "--out", "FILE"], "--out"),
    (["explain", "--out", "FILE_SUB"], "--out"),
    (["attack", "--out", "/proc/x"], "--out"),
    (["attack", "--out", "FILE_SUB"], "--out"),
    (["senn-report", "--out", "/proc/x"], "--out"),
    (["senn-report", "--out", ""], "--out"),
    (["train", "--out", "/proc/x"], "--out"),
    (["train", "--out", "FILE"], "--out"),
    (["train", "--out", ""], "--out"),
    (["train"], "--out"),
    (["train", "--out", "RUN"], "--out"),  # an earlier run without --resume
    # --weights
    (["attack", "--weights", "MISSING_DIR", "--out", "TMP"], "--weights"),
    (["attack", "--weights", "FILE", "--out", "TMP"], "--weights"),
    (["attack", "--weights", "DIR", "--out", "TMP"], "--weights"),
    (["attack", "--weights", "/proc/w.npz", "--out", "TMP"], "--weights"),
    # --seed
    (["explain", "--seed", "-1", "--out", "TMP"], "--seed"),
    (["explain", "--seed", "99999999999999999999999", "--out", "TMP"], "--seed"),
    (["train", "--seed", "-1", "--out", "TMP"], "--seed"),
    (["train", "--seed", "1.5", "--out", "TMP"], "--seed"),
    (["attack", "--seed", "abc"], "--seed"),
    # sizes
    (["explain", "--max-train", "-5", "--out", "TMP"], "--max-train"),
    (["explain", "--max-train", "0", "--out", "TMP"], "--max-train"),
    (["attack", "--max-train", "-1"], "--max-train"),
    (["train", "--max-train", "0", "--out", "TMP"], "--max-train"),
    (["senn-report", "--max-train", "-3"], "--max-train"),
    (["explain", "--epochs", "0", "--out", "TMP"], "--epochs"),
    (["explain", "--num-images", "0"], "--num-images"),
    (["explain", "--num-steps", "-2"], "--num-steps"),
    (["attack", "--num-eval", "0"], "--num-eval"),
    (["attack", "--k", "0"], "--k"),
    (["attack", "--num-images", "10", "--num-eval", "4", "--out", "TMP"], "--num-images"),
    (["train", "--batch-size", "0", "--out", "TMP"], "--batch-size"),
    (["train", "--val-fraction", "1", "--out", "TMP"], "--val-fraction"),
    (["train", "--num-processes", "0", "--out", "TMP"], "--num-processes"),
    (["train", "--num-processes", "2", "--process-id", "2", "--out", "TMP"], "--process-id"),
    (["senn-report", "--blackbox-epochs", "0"], "--blackbox-epochs"),
    (["senn-report", "--num-eval", "0"], "--num-eval"),
    (["senn-report", "--num-projections", "-1"], "--num-projections"),
    # radii and rates
    (["attack", "--epsilon", "1e9"], "--epsilon"),
    (["attack", "--epsilon", "inf"], "--epsilon"),
    (["attack", "--epsilon", "nan"], "--epsilon"),
    (["attack", "--epsilon", "-1"], "--epsilon"),
    (["attack", "--epsilon", "8/0"], "--epsilon"),
    (["attack", "--epsilon", "8"], "--epsilon"),  # the old 0-255 scale
    (["attack", "--step-size", "0"], "--step-size"),
    (["attack", "--epsilon", "1/255", "--step-size", "2/255", "--out", "TMP"], "--step-size"),
    (["attack", "--beta", "0"], "--beta"),
    (["train", "--epsilon", "1e9", "--out", "TMP"], "--epsilon"),
    (["train", "--epsilon", "inf", "--out", "TMP"], "--epsilon"),
    (["train", "--lr", "inf", "--out", "TMP"], "--lr"),
    (["train", "--lr", "0", "--out", "TMP"], "--lr"),
    (["train", "--lr", "-1e-3", "--out", "TMP"], "--lr"),
    (["train", "--clip-norm", "inf", "--out", "TMP"], "--clip-norm"),
    (["train", "--weight-decay", "-1", "--out", "TMP"], "--weight-decay"),
    (["senn-report", "--lr", "nan"], "--lr"),
    # parsed values
    (["train", "--activation", "softplus:abc", "--out", "TMP"], "--activation"),
    (["train", "--activation", "softplus:-1", "--out", "TMP"], "--activation"),
    (["train", "--activation", "gelu", "--out", "TMP"], "--activation"),
    (["train", "--milestones", "a,b", "--out", "TMP"], "--milestones"),
    (["train", "--milestones", "0,5", "--out", "TMP"], "--milestones"),
    (["train", "--layers", ",", "--out", "TMP"], "--layers"),
    (["senn-report", "--lambdas", "a,b"], "--lambdas"),
    (["senn-report", "--lambdas", "-1,1"], "--lambdas"),
    (["senn-report", "--lambdas", ""], "--lambdas"),
    (["senn-report", "--lambdas", "0.1,1", "--explain-lambda", "5", "--out", "TMP"],
     "--explain-lambda"),
    # choices
    (["explain", "--method", "foo"], "--method"),
    (["explain", "--model", "resnet"], "--model"),
    (["explain", "--dataset", "imagenet"], "--dataset"),
    (["attack", "--attack", "bogus"], "--attack"),
    (["attack", "--method", "decoy"], "--method"),
    (["train", "--preset", "nope", "--out", "TMP"], "--preset"),
    (["train", "--method", "nope", "--out", "TMP"], "--method"),
    (["train", "--optimizer", "rmsprop", "--out", "TMP"], "--optimizer"),
    (["senn-report", "--convention", "x"], "--convention"),
    # --data-dir, and flag combinations that cannot work
    (["explain", "--data-dir", "NO_DIR", "--out", "TMP"], "--data-dir"),
    (["attack", "--data-dir", "FILE", "--out", "TMP"], "--data-dir"),
    (["train", "--data-dir", "NO_DIR", "--out", "TMP"], "--data-dir"),
    (["senn-report", "--data-dir", "NO_DIR", "--out", "TMP"], "--data-dir"),
    (["explain", "--method", "decoy", "--dataset", "wine", "--out", "TMP"], "--method"),
    (["explain", "--model", "cnn", "--dataset", "wine", "--out", "TMP"], "--model"),
    (["attack", "--dataset", "breast_cancer", "--out", "TMP"], "--dataset"),
    (["train", "--method", "activation_sensitivity", "--layers", "nope", "--out", "TMP"],
     None),  # checked against the model once it is built: may pass the pre-flight checks
]


@pytest.mark.parametrize("argv, flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag(argv, flag, paths, no_data, capsys):
  argv = _sub(argv, paths)
  try:
    rc = main(argv)
  except Reached:
    assert flag is None, f"{argv} reached data loading"
    return
  out, err = capsys.readouterr()
  assert rc == 2, (rc, err)
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith(f"rattr {argv[0]}: error: "), err
  assert "Traceback" not in err
  if flag is not None:
    assert flag in lines[0], err
  assert out == ""


@pytest.mark.parametrize("argv", [
    ["explain", "--method", "ig", "--method", "sg", "--out", "TMP"],
    ["explain", "--dataset", "wine", "--out", "TMP"],  # tabular: --model defaults to mlp
    ["attack", "--epsilon", "8/255", "--step-size", "0.5/255", "--out", "TMP"],
    ["attack", "--method", "ig", "--model", "lenet", "--dataset", "cifar10", "--out", "TMP"],
    ["train", "--epsilon", "4/255", "--method", "pgd", "--step-size", "1/255", "--out", "TMP"],
    ["train", "--activation", "softplus:3", "--milestones", "1,2", "--out", "TMP"],
    ["senn-report", "--lambdas", "0,1e-2", "--explain-lambda", "0.01", "--out", "TMP"],
], ids=lambda a: " ".join(a))
def test_good_input_reaches_data_loading(argv, paths, no_data):
  with pytest.raises(Reached):
    main(_sub(argv, paths))


def test_resume_without_checkpoint_says_so(paths, no_data, capsys):
  with pytest.raises(Reached):
    main(["train", "--out", paths["TMP"], "--resume"])
  err = capsys.readouterr().err
  assert "--resume" in err and "no checkpoint" in err and "from scratch" in err


def test_out_dir_check_creates_nothing(tmp_path):
  target = tmp_path / "a" / "b" / "c"
  _checks.out_dir(str(target))
  assert not (tmp_path / "a").exists()


def test_epsilon_accepts_fractions_in_input_units():
  assert _checks.epsilon("8/255") == pytest.approx(8 / 255)
  assert _checks.epsilon("0.1") == 0.1
  assert _checks.epsilon("0") == 0.0
  from rattr_jax.cli import build_parser
  a = build_parser().parse_args(["attack"])
  assert a.epsilon == pytest.approx(8 / 255) and a.step_size == pytest.approx(0.5 / 255)


def test_method_aliases():
  from rattr_jax.cli import build_parser
  a = build_parser().parse_args(["explain", "--method", "ig", "--method", "sg"])
  assert a.method == ["integrated_gradients", "smoothgrad"]
  a = build_parser().parse_args(["attack", "--method", "ig"])
  assert a.method == "integrated_gradients"


def test_cli_choice_lists_match_the_library():
  from rattr_jax import data, models, training
  from rattr_jax.cli import _train
  assert set(_train.METHODS) == set(training.METHODS)
  assert set(_train.PRESETS) == set(training.PRESETS)
  assert set(_train.MODELS) - {"senn"} == set(models.MODELS)
  assert set(_checks.DATASETS) == set(data.DATASETS)
  assert set(_checks.IMAGE_DATASETS).isdisjoint(_checks.TABULAR_DATASETS)


@pytest.mark.parametrize("command", ["train", "study"])
def test_multihost_flags_match_the_library(command):
  import argparse

  from rattr_jax.cli import build_parser
  from rattr_jax.distributed import add_cli_args
  ref = argparse.ArgumentParser()
  add_cli_args(ref)
  sub = next(a for a in build_parser()._actions
             if isinstance(a, argparse._SubParsersAction)).choices[command]
  ours = {a.dest: a.option_strings for a in sub._actions}
  for a in ref._actions:
    if a.dest != "help":
      assert ours.get(a.dest) == a.option_strings, a.dest


def test_study_process_id_beyond_num_processes_is_one_line_error(capsys):
  assert main(["study", "--num-processes", "2", "--process-id", "2"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("rattr study: error: --process-id (2)") and "\n" not in err


def test_oserror_at_the_top_names_the_flag(tmp_path, monkeypatch, capsys):
  from rattr_jax.cli import _explain

  def boom(args):
    raise PermissionError(13, "Permission denied", os.path.join(args.out, "summary.json"))
  monkeypatch.setattr(_explain, "run", boom)  # `register` looks `run` up when called
  assert main(["explain", "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("rattr explain: error: --out: Permission denied") and "\n" not in err


_NO_JAX = """
import sys, time
t0 = time.perf_counter()
from rattr_jax.cli import main
rc = main({argv!r})
print("RESULT", rc, "jax" in sys.modules, time.perf_counter() - t0)
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--seed", "-1"],
                                  ["attack", "--epsilon", "1e9"], ["senn-report", "--lambdas", "x"]],
                         ids=lambda a: " ".join(a))
def test_help_and_argument_errors_do_not_import_jax(argv):
  t0 = time.perf_counter()
  r = subprocess.run([sys.executable, "-c", _NO_JAX.format(argv=argv)], capture_output=True,
                     text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  wall = time.perf_counter() - t0
  assert "Traceback" not in r.stderr, r.stderr
  line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")][0].split()
  rc, imported = int(line[1]), line[2] == "True"
  assert rc == (0 if "--help" in argv else 2)
  assert not imported, f"{argv} imported jax ({wall:.1f} s, load {os.getloadavg()})"


@pytest.mark.parametrize("argv, flag", [
    (["train", "--seed", "99999999999999999999999", "--out", "x"], "--seed"),
    (["explain", "--out", "/proc/x"], "--out"),
    (["attack", "--epsilon", "inf"], "--epsilon"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_console_script_exit_status(argv, flag):
  r = subprocess.run([sys.executable, "-m", "rattr_jax.cli", *argv], capture_output=True,
                     text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and flag in lines[0] and "Traceback" not in r.stderr


def test_out_dir_check_tolerates_another_process_creating_the_directory(tmp_path, monkeypatch):
  # Every process of a multi-process job checks the same --out at once: a directory that
  # appears between this process's look and its mkdir (another process made it) is fine,
  # and is not removed by this process's clean-up.
  from rattr_jax.cli import _checks
  target = tmp_path / "run" / "out"
  real = _checks._nearest_existing
  def stale(path):  # what this process saw before the other one created the directories
    base = real(path)
    os.makedirs(target, exist_ok=True)
    return base
  monkeypatch.setattr(_checks, "_nearest_existing", stale)
  assert _checks.out_dir(str(target), "--out") == str(target)
  assert target.is_dir()
