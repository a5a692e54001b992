"""The README's command-line synopsis and ten-line example stay true."""

import argparse
import pathlib
import re
import subprocess
import sys

import pytest

from rattr_jax.cli import build_parser

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title):
  body = README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
  return re.search(r"```[a-z]*\n(.*?)```", body, re.S).group(1)


def _subparsers():
  sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
  return sub.choices


def test_synopsis_flags_and_values_are_accepted():
  cmds = _subparsers()
  lines = [l for l in _section("Command line").splitlines() if l.startswith("rattr ")]
  assert {l.split()[1] for l in lines} <= set(cmds)
  for line in lines:
    parser = cmds[line.split()[1]]
    actions = {o: a for a in parser._actions for o in a.option_strings}
    for flag, value in re.findall(r"(--[a-z-]+)(?: ([^\]\s]+))?", line):
      assert flag in actions, (line, flag)
      conv = actions[flag].type
      if value and "|" in value and conv is not None:
        for v in value.split("|"):
          conv(v)  # every listed value is accepted
      elif value and value[0].isdigit() and conv is not None:
        conv(value)


def test_ten_line_example_is_ten_lines_of_public_api():
  code = _section("Ten-line example")
  lines = code.strip("\n").splitlines()
  assert len(lines) == 10, len(lines)
  assert not re.search(r"(^|[ .])_[a-z]", code.replace("__", "")), "uses a private name"


@pytest.mark.slow
def test_ten_line_example_runs():
  r = subprocess.run([sys.executable, "-c", _section("Ten-line example")], capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.count("[") == 2  # the two per-example metric arrays
