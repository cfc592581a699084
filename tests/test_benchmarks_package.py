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


def _git(root: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def test_each_stored_run_names_the_commit_it_ran_and_whether_the_code_differed(tmp_path):
    from benchmarks.results_io import code_commit, run_provenance

    assert code_commit(tmp_path) is None  # not a checkout: nothing to name
    (tmp_path / "iegkit").mkdir()
    (tmp_path / "iegkit" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("a\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "one")
    head = code_commit(tmp_path)
    assert head is not None and len(head) == 40
    (tmp_path / "notes.md").write_text("b\n")  # outside the code: the run is still that commit's
    (tmp_path / "iegkit" / "new.py").write_text("")  # untracked files are not counted
    assert code_commit(tmp_path) == head
    (tmp_path / "iegkit" / "a.py").write_text("x = 2\n")
    assert code_commit(tmp_path) == head + "+dirty"
    assert set(run_provenance(["--seeds", "3"])) == {"command", "machine", "load_average", "date",
                                                     "commit", "cpu"}


def test_the_data_fingerprint_changes_with_any_pixel_or_label_and_with_nothing_else():
    import dataclasses

    import torch

    from benchmarks.results_io import data_fingerprint, run_provenance

    @dataclasses.dataclass
    class Split:
        images: torch.Tensor
        labels: torch.Tensor
        note: str = "not data"

    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    split = Split(images, torch.tensor([0, 1]))
    same = Split(images.clone(), torch.tensor([0, 1]), note="other")
    assert data_fingerprint(split) == data_fingerprint(same)
    assert len(data_fingerprint(split)) == 16
    pixel = images.clone()
    pixel[1, 2, 3, 3] += 1
    assert data_fingerprint(Split(pixel, split.labels)) != data_fingerprint(split)
    assert data_fingerprint(Split(images, torch.tensor([1, 1]))) != data_fingerprint(split)
    # a non-contiguous view of the same values is the same data
    assert data_fingerprint(Split(images.transpose(2, 3).contiguous().transpose(2, 3),
                                  split.labels)) == data_fingerprint(split)
    assert run_provenance(None, split)["data"] == data_fingerprint(split)


def test_paired_interval():
    from benchmarks.results_io import t_interval

    assert t_interval([0.01]) == "+1.0 (1 seed)"
    # mean 2, sd 1, n 3: half-width 4.30 / sqrt(3)
    assert t_interval([0.01, 0.02, 0.03]) == "+2.0 [-0.5, +4.5]"
    # n 2: the t quantile of one degree of freedom, 12.71
    assert t_interval([0.01, 0.03]) == "+2.0 [-10.7, +14.7]"
