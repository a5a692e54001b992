"""Smoke test of the benchmark scripts: each answers ``--help``, with and without
the optional ``bench`` extra (torch, captum, quantus), and one runs for real.

Every ``benchmarks/*.py`` that is not a private module (``_timing``,
``_torch_models``) runs as ``python benchmarks/X.py --help`` in its own process
(the way the README runs them: ``benchmarks/`` is then on ``sys.path``). The
``hidden`` runs put packages named torch, captum and quantus that raise
``ModuleNotFoundError`` first on ``PYTHONPATH``, so a script that needs a peer
just to print its usage fails here even where the extra is installed.

The real run is retain_heap.py on one model, one method, batch 16 and two
steps (a few seconds), with the peers hidden, written to a temporary folder:
its JSON must have the usual keys and `_timing.device_info`'s device block.

Each ``--help`` sweep runs two scripts at a time (one per core of a 2-core
runner): about 7-9 s each, 5 s for the real run, about 21 s in all, hence
``slow``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
PEERS = ("torch", "captum", "quantus")


def _env(hide_in: Path | None) -> dict[str, str]:
  """The environment for a script: CPU JAX; with ``hide_in``, the peers made unimportable."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if hide_in is not None:
    for name in PEERS:
      (hide_in / name).mkdir(parents=True, exist_ok=True)
      (hide_in / name / "__init__.py").write_text(
          f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(hide_in)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  return env


def _run(script: Path, args: list[str], env: dict[str, str],
         timeout: float = 120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(script.relative_to(ROOT)), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def test_scripts_found():
  names = {p.name for p in SCRIPTS}
  assert {"retain_heap.py", "training_cost.py", "attribution_throughput.py"} <= names
  assert not any(n.startswith("_") for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("peers", ["installed", "hidden"])
def test_every_script_answers_help(peers, tmp_path):
  env = _env(tmp_path / "no_peers" if peers == "hidden" else None)
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    runs = dict(zip(SCRIPTS, pool.map(lambda s: _run(s, ["--help"], env), SCRIPTS)))
  failures = []
  for script, proc in runs.items():
    if proc.returncode != 0:
      failures.append(f"{script.name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    elif script.name not in proc.stdout and "usage" not in proc.stdout.lower():
      failures.append(f"{script.name}: no usage text\n{proc.stdout[-2000:]}")
  assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_retain_heap_quick_run_without_bench_extra(tmp_path):
  out = tmp_path / "retain_heap.json"
  proc = _run(ROOT / "benchmarks" / "retain_heap.py",
              ["--models", "cnn", "--methods", "ce", "--batch", "16", "--steps", "2",
               "--repeats", "1", "--mmap", "--out", str(out)], _env(tmp_path / "no_peers"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert list(result) == ["benchmark", "settings", "device", "results"]
  assert result["benchmark"] == "retain_heap"
  device = result["device"]
  assert {"jax_devices", "jax", "cpu_count", "platform", "python", "torch", "load_average",
          "load_average_start", "load_average_end"} <= set(device)
  assert device["torch"] is None and "torch_threads" not in device
  assert device["jax_devices"] and device["cpu_count"] == os.cpu_count()
  assert [r["model"] for r in result["results"]] == ["cnn"]
  row = result["results"][0]
  assert set(row["median_ms_per_step"]) == {f"{k}_{s}" for k in ("single", "fused")
                                            for s in ("off", "mmap", "on")}
  assert {"single_off_over_on", "single_mmap_over_on", "fused_mmap_over_on"} <= set(row)
