"""Property-based fuzz of the ``rattr`` command line (hypothesis).

Random commands with random flags and values (numbers of every sign and size,
``inf``/``nan``, fractions, garbage, paths that cannot be written) run
in-process through `rattr_jax.cli.main`. Whatever the input:

* no exception escapes (no traceback): the run either fails with status 2 and
  one line ``rattr <command>: error: ...`` naming a ``--flag``, or passes
  every check and reaches data loading, which the test intercepts (so the
  fuzz never trains anything);
* when a value known to be invalid for its flag was drawn, the status is 2.

`test_cli_fuzz_subprocess` runs a few such cases through the real console
entry point (``python -m rattr_jax.cli``).
"""

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rattr_jax.cli import main

EXAMPLES = 1000


class Reached(Exception):
  pass


@pytest.fixture(scope="module")
def fs(tmp_path_factory):
  root = tmp_path_factory.mktemp("fuzz")
  f = root / "file.txt"
  f.write_text("hello\n")
  run = root / "run"
  (run / "checkpoints" / "latest" / "3").mkdir(parents=True)
  return {"root": str(root), "file": str(f), "run": str(run)}


@pytest.fixture(scope="module")
def no_data():
  import rattr_jax.data
  mp = pytest.MonkeyPatch()

  def load_dataset(*a, **k):
    raise Reached()
  mp.setattr(rattr_jax.data, "load_dataset", load_dataset)
  yield
  mp.undo()


# Values: (text, valid?) per kind; paths are filled in from the `fs` fixture.
NUM_BAD = ["-1", "-0.5", "inf", "-inf", "nan", "abc", "", "1e999", "8/0", "1/2/3", "0x10"]
POSINT_GOOD = ["1", "2", "7"]
POSINT_BAD = ["0", "-3", "1.5", "99999999999999999999999999", "x", "", "inf"]
EPS_GOOD = ["0", "0.1", "8/255", "1/255", "1"]
EPS_BAD = ["1e9", "2", "8"] + NUM_BAD
STEP_GOOD = ["0.5/255", "1e-3"]
STEP_BAD = ["0", "5"] + NUM_BAD
POSF_GOOD = ["1e-3", "0.5", "3"]
POSF_BAD = ["0"] + NUM_BAD
NONNEG_GOOD = ["0", "1e-4", "2"]
SEED_GOOD = ["0", "1", "4294967295"]
SEED_BAD = ["-1", "4294967296", "99999999999999999999999", "1.0", "seed"]

COMMON = {
    "--seed": (SEED_GOOD, SEED_BAD),
    "--max-train": (["100", "640"], POSINT_BAD),
    "--dataset": (["mnist_embedded", "digits", "cifar10", "wine"], ["imagenet", "", "MNIST"]),
    "--data-dir": (["@root"], ["@missing", "@file", ""]),
}
FLAGS = {
    "explain": dict(COMMON, **{
        "--model": (["mlp", "cnn", "lenet"], ["resnet", ""]),
        "--epochs": (POSINT_GOOD, POSINT_BAD),
        "--num-images": (POSINT_GOOD, POSINT_BAD),
        "--method": (["gradient", "ig", "sg", "decoy", "input_x_gradient"], ["foo", ""]),
        "--num-steps": (POSINT_GOOD, POSINT_BAD),
        "--num-samples": (POSINT_GOOD, POSINT_BAD),
    }),
    "attack": dict(COMMON, **{
        "--model": (["mlp", "cnn", "lenet"], ["resnet", ""]),
        "--attack": (["topk", "mass_center", "targeted", "frame"], ["bogus", ""]),
        "--method": (["gradient", "ig", "smoothgrad"], ["decoy", "x"]),
        "--epsilon": (EPS_GOOD, EPS_BAD),
        "--step-size": (STEP_GOOD, STEP_BAD),
        "--num-steps": (POSINT_GOOD, POSINT_BAD),
        "--k": (POSINT_GOOD, POSINT_BAD),
        "--beta": (POSF_GOOD, POSF_BAD),
        "--num-eval": (["8", "16"], POSINT_BAD),
        "--num-images": (["1", "2"], POSINT_BAD),
        "--epochs": (POSINT_GOOD, POSINT_BAD),
        "--weights": (["@new_npz"], ["@file", "@root", "@missing_npz", "/proc/w.npz", ""]),
    }),
    "train": {
        "--seed": (SEED_GOOD, SEED_BAD),
        "--data-dir": (["@root"], ["@missing", "@file", ""]),
        "--preset": (["fast_cpu", "aga_cifar_lenet"], ["nope", ""]),
        "--method": (["ce", "pgd", "trades", "gradient_alignment", "hessian_norm"], ["nope", ""]),
        "--model": (["cnn", "mlp", "lenet"], ["vgg", ""]),
        "--dataset": (["mnist_embedded", "cifar10"], ["imagenet", ""]),
        "--epochs": (POSINT_GOOD, POSINT_BAD),
        "--batch-size": (["16", "32"], POSINT_BAD),
        "--activation": (["relu", "softplus:3", "tanh", "softplus"],
                         ["softplus:abc", "softplus:-1", "softplus:inf", "gelu", ""]),
        "--max-train": (["200"], POSINT_BAD),
        "--max-test": (["100"], POSINT_BAD),
        "--val-fraction": (["0", "0.1"], ["1", "-0.1", "nan", "x"]),
        "--lr": (POSF_GOOD, POSF_BAD),
        "--optimizer": (["adam", "adamw", "sgd"], ["rmsprop", ""]),
        "--weight-decay": (NONNEG_GOOD, NUM_BAD),
        "--schedule": (["constant", "multistep", "cosine"], ["step", ""]),
        "--milestones": (["1", "1,2"], ["a,b", "0", "-1,2", ","]),
        "--clip-norm": (POSF_GOOD, POSF_BAD),
        "--epsilon": (EPS_GOOD, EPS_BAD),
        "--lam": (NONNEG_GOOD, NUM_BAD),
        "--step-size": (STEP_GOOD, STEP_BAD),
        "--num-steps": (POSINT_GOOD, POSINT_BAD),
        "--beta": (NONNEG_GOOD, NUM_BAD),
        "--num-samples": (POSINT_GOOD, POSINT_BAD),
        "--layers": (["fc1"], [",", ""]),
        "--perturbation": (["uniform", "gaussian"], ["laplace", ""]),
    },
    "senn-report": dict(COMMON, **{
        "--lambdas": (["1e-4,1e-2,1", "0,1"], ["a,b", "-1", "", "inf", "1,nan"]),
        "--epochs": (POSINT_GOOD, POSINT_BAD),
        "--lr": (POSF_GOOD, POSF_BAD),
        "--batch-size": (POSINT_GOOD, POSINT_BAD),
        "--num-concepts": (POSINT_GOOD, POSINT_BAD),
        "--convention": (["clean", "original"], ["x", ""]),
        "--num-projections": (["0", "4"], ["-1", "x", "1.5"]),
        "--num-eval": (POSINT_GOOD, POSINT_BAD),
        "--blackbox-epochs": (POSINT_GOOD, POSINT_BAD),
    }),
}
OUT_GOOD = ["@new_dir"]
OUT_BAD = ["", "/proc/x", "@file", "@file_sub", "/proc/self/x/y"]


def _resolve(v, fs, counter):
  if not v.startswith("@"):
    return v
  root = fs["root"]
  return {
      "@root": root, "@file": fs["file"], "@file_sub": os.path.join(fs["file"], "sub"),
      "@missing": os.path.join(root, "missing_dir"),
      "@missing_npz": os.path.join(root, "missing_dir", "w.npz"),
      "@new_npz": os.path.join(root, f"w{counter}.npz"),
      "@new_dir": os.path.join(root, f"out{counter}"),
      "@run": fs["run"],
  }[v]


@st.composite
def command_lines(draw):
  cmd = draw(st.sampled_from(sorted(FLAGS)))
  flags = FLAGS[cmd]
  chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=5, unique=True))
  argv, bad = [cmd], False
  for flag in chosen:
    good_vals, bad_vals = flags[flag]
    is_bad = draw(st.booleans()) and draw(st.booleans())  # about a quarter of the flags
    v = draw(st.sampled_from(bad_vals if is_bad else good_vals))
    bad |= is_bad
    argv += [flag, v]
  if cmd == "train" or draw(st.booleans()):
    out_bad = draw(st.integers(0, 4)) == 0
    argv += ["--out", draw(st.sampled_from(OUT_BAD if out_bad else OUT_GOOD))]
    bad |= out_bad
  if cmd == "train" and draw(st.integers(0, 9)) == 0:  # an earlier run without --resume
    argv[argv.index("--out") + 1] = "@run"
    bad = True
  return argv, bad


_counter = [0]


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=command_lines())
def test_cli_fuzz(case, fs, no_data, capsys):
  argv, known_bad = case
  _counter[0] += 1
  argv = [_resolve(a, fs, _counter[0]) for a in argv]
  capsys.readouterr()
  try:
    rc = main(argv)
  except Reached:
    assert not known_bad, f"invalid input reached data loading: {argv}"
    return
  out, err = capsys.readouterr()
  assert "Traceback" not in err and "Traceback" not in out
  assert rc == 2, (argv, rc, err)
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, (argv, err)
  assert lines[0].startswith(f"rattr {argv[0]}: error: "), (argv, err)
  assert "--" in lines[0], (argv, err)  # names a flag


@pytest.mark.parametrize("argv", [
    ["train", "--activation", "softplus:abc", "--out", "/proc/x"],
    ["attack", "--weights", "/no/such/dir/w.npz", "--out", "/tmp/rattr_fuzz_attack"],
    ["senn-report", "--out", "/proc/x"],
    ["explain", "--max-train", "-4"],
], ids=lambda a: " ".join(a))
def test_cli_fuzz_subprocess(argv):
  r = subprocess.run([sys.executable, "-m", "rattr_jax.cli", *argv], capture_output=True,
                     text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 2, r.stderr
  assert "Traceback" not in r.stderr
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"rattr {argv[0]}: error: --")
