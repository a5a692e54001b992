"""``rattr study``: the library's main job (see `rattr_jax.study`).

Several processes run one study together: ``rattr launch -n 2 -- study --preset quick
--out D`` on one machine, or one ``rattr study ...`` per host
(``--coordinator``/``--num-processes``/``--process-id``, or the cluster's environment).
Process 0 writes and prints; the others compute with it.
"""

from __future__ import annotations

import os
import sys
import time

from rattr_jax.cli import _common


def register(sub) -> None:
  p = sub.add_parser(
      "study", help="train, explain, attack and score every method; write tables, figures "
      "and REPORT.md (resumable)",
      description="Runs a study: which training makes explanations robust and faithful. "
      "Give a CONFIG.toml or --preset NAME. Re-running continues where a killed run stopped; "
      "a finished study does nothing.")
  p.add_argument("config", nargs="?", default=None, help="study TOML file")
  p.add_argument("--preset", default=None,
                 help="a shipped study: quick (README, ~5 min on 2 cores), mnist, cifar10")
  p.add_argument("--out", default=None, help="output directory (default: out/study-NAME)")
  p.add_argument("--force", default=None, metavar="STAGE",
                 help="redo STAGE and every later one: train, explain, attack, score, "
                 "aggregate, report")
  p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
  p.add_argument("--cache-dir", default=None,
                 help="JAX persistent compilation cache, so a re-run does not compile again "
                 "(default: $RATTR_JAX_CACHE_DIR or ~/.cache/rattr_jax/jax; 'none' disables)")
  p.add_argument("--print-config", action="store_true",
                 help="print the preset's TOML and exit (a starting point for your own)")
  _common.add_multihost_args(p)
  p.set_defaults(func=run)
  return p


def check(args) -> None:
  _common.check_multihost_args(args)


def run(args) -> int:
  from rattr_jax import study as S
  if args.force is not None and args.force not in S.STAGES:
    raise ValueError(f"--force: unknown stage {args.force!r}; expected one of "
                     f"{list(S.STAGES)}.")
  if args.config is None and args.preset is None:
    args.preset = "quick"
  if args.config is not None and args.preset is not None:
    raise ValueError("give either CONFIG.toml or --preset, not both.")
  if args.print_config:
    print(S.preset_text(args.preset or "quick"))
    return 0
  config = S.load_config(args.config, preset=args.preset)
  out = args.out if args.out is not None else os.path.join("out", f"study-{config.name}")
  try:
    S.check_out_dir(out)
  except ValueError as e:
    raise ValueError(str(e).replace("`--out`", "--out")) from None
  cache = args.cache_dir or os.environ.get("RATTR_JAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "rattr_jax", "jax")
  if cache != "none":
    try:
      os.makedirs(cache, exist_ok=True)
    except OSError as e:
      raise ValueError(f"--cache-dir {cache!r} cannot be created ({e.strerror or e}).") from None
  from rattr_jax import distributed
  distributed.initialize_from_args(args)  # before any JAX computation; no-op for one process
  import rattr_jax
  if hasattr(rattr_jax, "configure_cpu"):
    rattr_jax.configure_cpu()
  note = None
  if cache != "none" and S.uses_onednn(config):
    note = (f"Persistent compilation cache off: this study's convolutions are oneDNN's "
            f"(compute.onednn = {config.onednn!r}), which jaxlib 0.10.2 cannot store; "
            f"compute.onednn = 'off' makes every program cacheable.")
    cache = "none"
  if cache != "none":
    S.enable_compilation_cache(cache)
  import jax
  from rich.console import Console
  from rattr_jax.study import claims_table, headline_table, run_study, summarize_file
  console = Console()
  if not console.is_terminal:
    console = Console(width=200)
  t0 = time.perf_counter()
  if distributed.is_main_process():
    console.print(f"[bold]rattr study[/] {config.name}: {len(config.methods)} methods x "
                  f"{len(config.seeds)} seed(s), {len(config.explainers)} explainers, "
                  f"{len(config.attacks.names)} attacks x {len(config.attacks.epsilons)} "
                  f"radii, {config.data.num_eval} images -> {out}"
                  + (f" ({jax.process_count()} processes)" if jax.process_count() > 1 else ""))
    if note:
      console.print(note)
  res = run_study(config, out_dir=out, force=args.force, progress=not args.no_progress,
                  console=console)
  if not distributed.is_main_process():
    return 0  # process 0 prints the summary
  if res.nothing_to_do:
    console.print(f"Study {config.name!r} in {res.out_dir} is complete: nothing to do "
                  f"({res.cached_units} units cached). Use --force STAGE to redo a stage.")
  summary = summarize_file(res.scores_path, config)
  _table(console, f"{config.name}: headline (mean [95% CI])", *headline_table(summary, config))
  h, rows = claims_table(summary)
  _table(console, "claims", ["claim", "a vs b", "mean diff [95% CI]", "p (Holm)", "status"],
         [[r[0], r[3], r[6], r[7], r[9].replace("**", "")] for r in rows])
  failed = [m for m in res.models if m.status != "completed"]
  for m in failed:
    console.print(f"[yellow]model {m.name} did not finish: {m.message}")
  console.print(f"Wrote {res.report_path}, {res.scores_path}, {res.summary_path} and "
                f"figures/ in {time.perf_counter() - t0:.0f} s ({res.computed_units} units "
                f"computed, {res.cached_units} cached).")
  return 0


def _table(console, title, header, rows):
  from rich.table import Table
  t = Table(title=title, show_lines=False)
  for i, c in enumerate(header):
    t.add_column(c, overflow="fold", justify="left" if i == 0 else "right")
  for r in rows:
    t.add_row(*[str(v) for v in r])
  console.print(t)
