"""iegkit/functional/ is the pure layer (docs/architecture.md): tensors in, tensors out.

Read from the source with ``ast``, so a change that breaks it fails here, not in a review: no
module keeps module-level mutable state, registers hooks, or imports from ``iegkit._core`` (the
machinery that runs the model: the JVP passes, their caches and warnings, the mode context
managers); the one name ``iegkit.functional`` takes from there is the documented
``meta_gradients``, re-exported on access. And docs/architecture.md lists every module of the
directory, and no other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import iegkit.functional

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONAL = ROOT / "iegkit" / "functional"
MODULES = sorted(FUNCTIONAL.glob("*.py"))

#: module-level values that cannot be mutated: literals, tuples, names and attributes (aliases,
#: enum members), subscripts and unions (type aliases)
IMMUTABLE_VALUES = (ast.Constant, ast.Tuple, ast.Name, ast.Attribute, ast.Subscript, ast.BinOp)
#: the names functional/__init__.py re-exports from iegkit._core: public, documented API only
DOCUMENTED_CORE_REEXPORTS = ("meta_gradients",)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_level_assignments(tree: ast.Module):
    """(target names, value) of every assignment that runs at import time (if/try blocks too)."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.If, ast.Try)):
            pending.extend(ast.iter_child_nodes(node))
        elif isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            yield names, node, node.value


def _state_problems(path: Path) -> list[str]:
    problems = []
    for names, node, value in _module_level_assignments(_tree(path)):
        where = f"{path.name}:{node.lineno} {', '.join(names)}"
        if names == ["__all__"]:
            continue  # the export list, read by import machinery, never by the code
        if isinstance(node, ast.AugAssign):
            problems.append(f"{where}: rebinds a module-level name")
        elif value is None:
            continue  # a bare annotation binds nothing
        elif isinstance(value, ast.Tuple) or _is_frozenset(value):
            if not all(re.fullmatch(r"_?[A-Z][A-Z0-9_]*", n) for n in names):
                problems.append(f"{where}: a constant collection takes an UPPER_CASE name")
        elif not isinstance(value, IMMUTABLE_VALUES):
            problems.append(f"{where}: binds {type(value).__name__} at module level (mutable "
                            "state, or a value made at import time)")
    return problems


def _is_frozenset(value: ast.expr) -> bool:
    return (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            and value.func.id == "frozenset")


def _called_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against iegkit.functional
                base = ["iegkit", "functional"][: max(0, 3 - node.level)]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            else:
                found.add(node.module or "")
    return found


def _strings(path: Path) -> set[str]:
    return {node.value for node in ast.walk(_tree(path))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_the_functional_directory_is_read():
    assert len(MODULES) >= 10 and FUNCTIONAL / "meta.py" in MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_level_mutable_state(path):
    assert _state_problems(path) == []
    globals_used = [node.lineno for node in ast.walk(_tree(path))
                    if isinstance(node, (ast.Global, ast.Nonlocal))]
    assert globals_used == [], f"{path.name}: rebinds module state at lines {globals_used}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_hooks(path):
    hooks = sorted(n for n in _called_names(_tree(path)) if re.fullmatch(r"register_\w*hook", n))
    assert hooks == [], f"{path.name} registers hooks: {hooks}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_import_from_core(path):
    core = sorted(m for m in _imported_modules(path)
                  if m == "iegkit._core" or m.startswith("iegkit._core."))
    assert core == [], f"{path.name} imports {core}"
    mentions = sorted(s for s in _strings(path) if s.startswith("iegkit._core"))
    if path.name == "__init__.py":  # the lazy re-export names its module, and nothing else
        assert mentions == ["iegkit._core.meta_step"]
    else:
        assert mentions == [], f"{path.name} loads {mentions}"


def test_the_only_reexports_from_core_are_documented_api():
    from iegkit._core import meta_step

    assert iegkit.functional._CORE_REEXPORTS == DOCUMENTED_CORE_REEXPORTS
    assert set(DOCUMENTED_CORE_REEXPORTS) <= set(iegkit.functional.__all__)
    assert iegkit.functional.meta_gradients is meta_step.meta_gradients
    assert "meta_gradients" in dir(iegkit.functional)
    with pytest.raises(AttributeError, match="no_such_name"):
        iegkit.functional.no_such_name  # noqa: B018


def test_the_checks_see_what_they_refuse(tmp_path):
    """The checks are not vacuous: a module with each fault is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import weakref\n"
        "from iegkit._core.modes import train_mode\n"
        "from .._core import tangent\n"
        "_CACHE = {}\n"
        "seen = []\n"
        "failures = weakref.WeakKeyDictionary()\n"
        "tolerances = (1e-6, 1e-2)\n"
        "COUNT = 0\n"
        "COUNT += 1\n"
        "def f(model):\n"
        "    global COUNT\n"
        "    model.register_forward_pre_hook(print)\n"
    )
    assert len(_state_problems(bad)) == 5  # _CACHE, seen, failures, tolerances, COUNT +=
    assert {n for n in _called_names(_tree(bad)) if n.startswith("register_")} == {
        "register_forward_pre_hook"}
    assert {"iegkit._core.modes", "iegkit._core"} <= _imported_modules(bad)


def _documented_functional_modules() -> set[str]:
    """The .py names in the functional/ block of docs/architecture.md's tree (up to the next
    entry at its indentation); a path such as ``_core/meta_step.py`` is a reference, not an entry."""
    lines = (ROOT / "docs" / "architecture.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  functional/"))
    block = []
    for line in lines[start + 1:]:
        if re.match(r"  \S", line):
            break
        block.append(line)
    return set(re.findall(r"(?<![\w/.])([a-z_]+\.py)\b", "\n".join(block)))


def test_docs_list_every_functional_module():
    on_disk = {path.name for path in MODULES} - {"__init__.py"}
    documented = _documented_functional_modules()
    assert documented == on_disk, (f"undocumented: {sorted(on_disk - documented)}; "
                                   f"documented but absent: {sorted(documented - on_disk)}")
