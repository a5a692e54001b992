"""The import graph of rattr_jax: no private cross-package imports, no cycles between packages.

Every module of the library is parsed (`ast`), including imports inside
functions (a lazy import does not hide a dependency). Two rules:

* a module outside package ``rattr_jax.<pkg>`` never imports one of its private
  modules ``rattr_jax.<pkg>._<mod>`` (shared code lives in `rattr_jax.core`
  and is imported through public names);
* the graph of imports between subpackages (``rattr_jax.<pkg>``; top-level
  modules such as ``rattr_jax.explainers`` count as their own node) has no
  cycle.

`ALLOWED_PRIVATE` and `ALLOWED_EDGES` list what is still left, each with the
reason; the test fails when an entry is no longer needed, so the lists only
shrink.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rattr_jax"

#: (importing module, imported private module): not fixed yet, with the reason.
ALLOWED_PRIVATE: dict[tuple[str, str], str] = {
}

#: Package edges allowed although they close a cycle (with the reason).
ALLOWED_EDGES: dict[tuple[str, str], str] = {
}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(ROOT.rglob("*.py")):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _is_package(name: str) -> bool:
  return (ROOT.parent / pathlib.Path(*name.split(".")) / "__init__.py").exists()


def _imports(name: str, path: pathlib.Path) -> set[str]:
  """Absolute names of the rattr_jax modules ``name`` imports (anywhere in the file)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  pkg = name if _is_package(name) else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("rattr_jax"))
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
          and node.args and isinstance(node.args[0], ast.Constant)
          and str(node.args[0].value).startswith("rattr_jax")):
      out.add(node.args[0].value)  # importlib.import_module("rattr_jax....") is an import too
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = pkg.split(".")
        base = base[: len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
      else:
        mod = node.module or ""
      if not mod.startswith("rattr_jax"):
        continue
      for a in node.names:  # `from pkg import _mod` imports the submodule pkg._mod
        sub = f"{mod}.{a.name}"
        out.add(sub if sub in MODULES else mod)
  return out


#: Nested subpackages that are nodes of their own in the package graph.
NESTED: tuple[str, ...] = ()


def _package(name: str) -> str:
  """``rattr_jax.<pkg>`` of a module (a top-level module is its own node)."""
  for n in NESTED:
    if name == n or name.startswith(n + "."):
      return n
  parts = name.split(".")
  return ".".join(parts[:2]) if len(parts) > 1 else name


def _private_violations() -> set[tuple[str, str]]:
  bad = set()
  for name, path in MODULES.items():
    for imp in _imports(name, path):
      parts = imp.split(".")
      # rattr_jax.<pkg>._<mod>... imported from outside rattr_jax.<pkg>
      for i in range(2, len(parts)):
        if parts[i].startswith("_") and not parts[i].startswith("__"):
          owner = ".".join(parts[:i])
          if owner != "rattr_jax" and not (name == owner or name.startswith(owner + ".")):
            bad.add((name, ".".join(parts[: i + 1])))
          break
  return bad


def _package_graph() -> dict[str, set[str]]:
  graph: dict[str, set[str]] = {}
  for name, path in MODULES.items():
    src = _package(name)
    for imp in _imports(name, path):
      dst = _package(imp)
      if dst != src and dst != "rattr_jax" and src != "rattr_jax":
        graph.setdefault(src, set()).add(dst)
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_parser_sees_lazy_and_relative_imports():
  name = "rattr_jax.metrics._attack_similarity"
  assert "rattr_jax.attacks" in _imports(name, MODULES[name])
  assert "rattr_jax.core" in _package_graph()["rattr_jax.attacks"]


def test_no_private_cross_package_imports():
  bad = _private_violations()
  new = sorted(bad - set(ALLOWED_PRIVATE))
  assert not new, "private modules imported across packages (use rattr_jax.core / public names):\n" + \
      "\n".join(f"  {a} imports {b}" for a, b in new)
  stale = sorted(set(ALLOWED_PRIVATE) - bad)
  assert not stale, f"fixed, remove from ALLOWED_PRIVATE: {stale}"


def test_no_cycles_between_packages():
  graph = _package_graph()
  for a, b in ALLOWED_EDGES:
    assert b in graph.get(a, set()), f"edge {a} -> {b} is gone; remove it from ALLOWED_EDGES"
    graph[a].discard(b)
  cycles = _cycles(graph)
  assert not cycles, "import cycles between packages: " + "; ".join(
      " <-> ".join(c) for c in cycles)


def test_core_depends_on_no_capability_package():
  graph = _package_graph()
  assert graph.get("rattr_jax.core", set()) <= {"rattr_jax._jit", "rattr_jax._validation",
                                                "rattr_jax._typing", "rattr_jax._random"}, \
      graph["rattr_jax.core"]


def test_models_sit_below_metrics_attacks_and_training():
  """``rattr_jax.models`` reaches none of the capability packages (SENN lives in rattr_jax.senn)."""
  graph = _package_graph()
  seen, todo = set(), ["rattr_jax.models"]
  while todo:
    for dst in graph.get(todo.pop(), ()):
      if dst not in seen:
        seen.add(dst)
        todo.append(dst)
  above = {"rattr_jax.metrics", "rattr_jax.attacks", "rattr_jax.regularizers",
           "rattr_jax.training", "rattr_jax.senn", "rattr_jax.study"}
  assert not (seen & above), sorted(seen & above)
