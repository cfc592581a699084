"""benchmarks/ is a package run as ``python -m benchmarks.<name>``: no script edits ``sys.path``,
each imports the others as ``benchmarks.<module>``, and the command a report records is the one
that reruns it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def _edits_sys_path(path: Path) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "path"
               and isinstance(node.value, ast.Name) and node.value.id == "sys"
               for node in ast.walk(ast.parse(path.read_text())))


def _bare_sibling_imports(path: Path) -> list[str]:
    siblings = {p.stem for p in SCRIPTS}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in siblings]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module in siblings:
            found.append(node.module)
    return found


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_no_script_edits_sys_path_or_imports_a_sibling_bare(path):
    assert not _edits_sys_path(path)
    assert _bare_sibling_imports(path) == []


def test_the_rules_see_what_they_refuse(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nsys.path.insert(0, 'x')\nimport results_io\nfrom wrn import wrn28_2\n")
    assert _edits_sys_path(bad)
    assert _bare_sibling_imports(bad) == ["results_io", "wrn"]


def test_the_recorded_command_reruns_the_module(monkeypatch):
    from benchmarks.results_io import command

    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "baselines.py"), "--report-only"])
    assert command() == ".venv/bin/python -m benchmarks.baselines --report-only"
    assert command(["--seeds", "3"]) == ".venv/bin/python -m benchmarks.baselines --seeds 3"


def test_a_command_recorded_before_the_package_reruns_as_a_module():
    from benchmarks.results_io import rerunnable

    old = ".venv/bin/python benchmarks/noisy_cifar10.py --config cpu10k --shard 0/2"
    assert rerunnable(old) == ".venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --shard 0/2"
    assert rerunnable(rerunnable(old)) == rerunnable(old)
    assert rerunnable("bash benchmarks/gpu.sh --dry-run") == "bash benchmarks/gpu.sh --dry-run"
