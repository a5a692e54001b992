"""Wall time of `rattr study` presets, stage by stage.

    python benchmarks/study_cost.py                    # the quick preset
    python benchmarks/study_cost.py --presets quick,mnist --data-dir ../shared/data
    python benchmarks/study_cost.py --presets "" --runs benchmarks/results/study_mnist

Each preset runs twice into a fresh temporary directory: a cold run (every
unit computed) and a warm re-run (every unit cached: the cost of "nothing to
do"). Writes ``benchmarks/results/study_cost.json`` with the settings, the
device, the load average before and after, the stage seconds and the unit
counts. ``--runs DIR,...`` adds finished studies (a preset run for hours, resumed
across sessions) from their ``manifest.json``: stage seconds, units and the load
average recorded when each stage ended.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--presets", default="quick")
  ap.add_argument("--data-dir", default=None, help="folder with mnist_t10k.npz / cifar10.npz")
  ap.add_argument("--runs", default="", help="finished study folders to read manifests from")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                "study_cost.json"))
  args = ap.parse_args()
  import rattr_jax
  if hasattr(rattr_jax, "configure_cpu"):
    rattr_jax.configure_cpu()
  import jax
  from rattr_jax import study
  results = []
  for name in [p for p in args.presets.split(",") if p]:
    cfg = study.load_config(preset=name)
    if args.data_dir:
      cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=args.data_dir))
    with tempfile.TemporaryDirectory() as tmp:
      load0 = os.getloadavg()
      t0 = time.perf_counter()
      cold = study.run_study(cfg, out_dir=tmp, progress=True)
      t_cold = time.perf_counter() - t0
      t0 = time.perf_counter()
      warm = study.run_study(cfg, out_dir=tmp, progress=False)
      t_warm = time.perf_counter() - t0
      results.append({
          "preset": name, "cold_seconds": t_cold, "warm_seconds": t_warm,
          "cold_stage_seconds": cold.stage_seconds, "warm_stage_seconds": warm.stage_seconds,
          "units_computed": cold.computed_units, "warm_nothing_to_do": warm.nothing_to_do,
          "models": len(cold.models), "load_before": load0, "load_after": os.getloadavg()})
      print(json.dumps(results[-1], indent=2))
  for run in [r for r in args.runs.split(",") if r]:
    with open(os.path.join(run, "manifest.json")) as f:
      man = json.load(f)
    results.append({"run": run, "preset": man.get("config", {}).get("name"),
                    "from_manifest": True, "stage_seconds": man.get("stage_seconds"),
                    "units": man.get("units"), "load": man.get("load"),
                    "devices": man.get("devices"), "created": man.get("created")})
    print(json.dumps(results[-1], indent=2))
  from _timing import device_info, write_result
  payload = {"device": device_info(backend=jax.default_backend(),
                                   num_devices=jax.device_count()),
             "results": results}
  write_result(args.out, payload)


if __name__ == "__main__":
  main()
