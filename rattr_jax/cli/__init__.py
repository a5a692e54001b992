"""The ``rattr`` command line: ``rattr <command> [options]``.

Each command lives in its own private module exposing ``register(subparsers)``,
which adds a sub-parser whose ``func`` default runs the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Command modules; a module that does not exist yet is skipped.
_COMMAND_MODULES = (
    "rattr_jax.cli._explain",
    "rattr_jax.cli._attack",
    "rattr_jax.cli._train",
    "rattr_jax.cli._senn_report",
)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="rattr", description="rattr_jax: robust attributions in JAX.")
  sub = parser.add_subparsers(dest="command", required=True)
  for name in _COMMAND_MODULES:
    try:
      mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name == name:
        continue
      raise
    mod.register(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return int(args.func(args) or 0)
  except ValueError as e:
    print(f"rattr {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
  sys.exit(main())
