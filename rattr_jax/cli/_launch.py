"""``rattr launch``: run a rattr command as N local processes of one JAX job.

Example::

  rattr launch --num-processes 2 -- train --model mlp --dataset digits --out runs/mp
  rattr launch -n 2 --devices-per-process 2 -- train ... --out runs/mp --resume

Each process runs ``python -m rattr_jax.cli <command>``, which first calls
`rattr_jax.distributed.join_job`: `rattr_jax.distributed.initialize` from the
environment set here (a free localhost port, the process count and id, ``JAX_NUM_CPU_DEVICES``). For
development and tests on one machine; on a cluster start one process per host
with its launcher (Slurm, mpirun) instead: JAX reads the layout from it.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "launch", help="run a rattr command as N local processes (multi-process JAX)",
      description="Start N processes of `rattr <command>` on localhost as one JAX "
                  "multi-controller job (coordinator on a free port, CPU collectives via gloo). "
                  "Exit status: 0, or the first failing process's code; SIGINT/SIGTERM are "
                  "forwarded to every process, and a failing process stops the others.")
  p.add_argument("-n", "--num-processes", dest="num_processes", type=int, required=True)
  p.add_argument("--devices-per-process", dest="devices_per_process", type=int, default=None,
                 help="CPU devices per process (sets JAX_NUM_CPU_DEVICES)")
  p.add_argument("--heartbeat-timeout", dest="heartbeat_timeout", type=int, default=None,
                 help="seconds before a silent process is declared dead (JAX default 100)")
  p.add_argument("rattr_command", nargs=argparse.REMAINDER,
                 help="-- followed by a rattr command and its options")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  from rattr_jax.cli import build_parser
  from rattr_jax import distributed as _launch
  cmd = list(args.rattr_command)
  if cmd and cmd[0] == "--":
    cmd = cmd[1:]
  sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
  valid = sorted(c for c in sub.choices if c != "launch")
  if not cmd or cmd[0] not in valid:
    got = repr(cmd[0]) if cmd else "nothing"
    raise ValueError(f"expected `-- <command> [options]` after the launch options, with "
                     f"<command> one of {valid}; got {got}.")
  if args.num_processes < 1:
    raise ValueError(f"`--num-processes` must be >= 1; got {args.num_processes}.")
  if args.devices_per_process is not None and args.devices_per_process < 1:
    raise ValueError(f"`--devices-per-process` must be >= 1; got {args.devices_per_process}.")
  if args.heartbeat_timeout is not None and args.heartbeat_timeout < 1:
    raise ValueError(f"`--heartbeat-timeout` must be >= 1; got {args.heartbeat_timeout}.")
  command = [sys.executable, "-m", "rattr_jax.cli", *cmd]  # joins the job: cli.main
  return _launch.launch(command, num_processes=args.num_processes,
                        devices_per_process=args.devices_per_process,
                        heartbeat_timeout=args.heartbeat_timeout)
