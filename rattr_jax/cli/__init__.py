"""The ``rattr`` command line: ``rattr <command> [options]``.

Each command lives in its own private module exposing ``register(subparsers)``,
which adds a sub-parser whose ``func`` default runs the command, and
optionally ``check(args)``, which checks paths and flag combinations before
anything is loaded or compiled. Command modules import JAX only inside
``run``, so ``rattr --help`` and argument errors return at once.

Bad input (a value out of range, a path that cannot be written, a flag
combination that cannot work) prints one line ``rattr <command>: error:
--flag ...`` on stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Command modules; a module that does not exist yet is skipped.
_COMMAND_MODULES = (
    "rattr_jax.cli._explain",
    "rattr_jax.cli._attack",
    "rattr_jax.cli._train",
    "rattr_jax.cli._senn_report",
    "rattr_jax.cli._launch",
    "rattr_jax.cli._study",
)

#: Flags whose values are paths, checked against the file name of an `OSError`.
_PATH_FLAGS = (("out", "--out"), ("weights", "--weights"), ("data_dir", "--data-dir"),
               ("config", "--config"))


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line (``prog: error: message``), status 2."""

  def error(self, message):  # noqa: D401 - argparse API
    if message.startswith("argument "):
      message = message[len("argument "):]
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="rattr", description="rattr_jax: robust attributions in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name in _COMMAND_MODULES:
    try:
      mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name == name:
        continue
      raise
    p = mod.register(sub)
    if p is not None and hasattr(mod, "check"):
      p.set_defaults(_check=mod.check)
  return parser


def _flag_of_path(args, filename) -> str | None:
  if not filename:
    return None
  target = os.path.abspath(os.fsdecode(filename))
  for dest, flag in _PATH_FLAGS:
    v = getattr(args, dest, None)
    if isinstance(v, str) and v:
      root = os.path.abspath(v)
      if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
        return flag
  return None


def main(argv: list[str] | None = None) -> int:
  """Runs ``rattr`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help (0) or an argument error (2), already printed
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
  prog = f"rattr {args.command}"
  try:
    if args.command != "launch" and "RATTR_PROCESS_ID" in os.environ:
      # A process of `rattr launch` (rattr_jax.distributed.ENV_PROCESS_ID): join the job
      # before any JAX computation.
      from rattr_jax import distributed
      distributed.join_job()
    check = getattr(args, "_check", None)
    if check is not None:
      check(args)
    return int(args.func(args) or 0)
  except ValueError as e:  # CLIError included: bad input, named by the message
    print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except OSError as e:
    flag = _flag_of_path(args, getattr(e, "filename", None))
    what = f"{e.strerror or e}" + (f": {e.filename!r}" if getattr(e, "filename", None) else "")
    if flag is not None:
      print(f"{prog}: error: {flag}: {what}", file=sys.stderr)
      return 2
    print(f"{prog}: error: {what}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())


if __name__ == "__main__":  # pragma: no cover
  sys.exit(main())
