"""The examples in rattr_jax's docstrings run and print what they show.

Every module of the package whose source contains ``>>>`` is imported and its
docstrings are run with `doctest` (``# doctest: +SKIP`` marks the few
fragments that need data not defined in the example). Examples stay tiny.
"""

from __future__ import annotations

import doctest
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rattr_jax"


def _modules_with_examples() -> list[str]:
  out = []
  for path in sorted(ROOT.rglob("*.py")):
    if path.name == "__main__.py" or ">>>" not in path.read_text():
      continue
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out.append(".".join(parts))
  return out


MODULES = _modules_with_examples()


def test_the_package_has_examples():
  assert len(MODULES) >= 5, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  tests = [t for t in finder.find(module, name) if t.examples]
  assert tests, f"{name} has '>>>' but no example was collected"
  for t in tests:
    runner.run(t)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see output)"


def test_the_librarys_own_deprecation_warnings_are_errors():
  """pyproject's ``filterwarnings`` turns `rattr_jax.RattrDeprecationWarning` into an error."""
  import warnings

  import rattr_jax
  with pytest.raises(rattr_jax.RattrDeprecationWarning):
    warnings.warn("old name", rattr_jax.RattrDeprecationWarning, stacklevel=1)
  warnings.warn("a third-party deprecation", DeprecationWarning, stacklevel=1)  # ignored
