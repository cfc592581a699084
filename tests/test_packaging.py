"""What a user installs: metadata, and documentation that points only at files they have."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what ships or is read by users: the package and the user documentation (docs/results.md records
#: where our benchmark data lived on our machines, and is not a guide to follow)
USER_FILES = [*sorted((ROOT / "iegkit").rglob("*.py")), ROOT / "README.md",
              *(ROOT / "docs" / name for name in ("architecture.md", "method.md", "reliability.md",
                                                   "distributed.md", "lightning.md"))]
OUTSIDE = re.compile(r"\.\./shared|ieg-official-code\.md|shared/(data|docs|paper)")


def test_no_user_file_points_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{number}" for path in USER_FILES
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if OUTSIDE.search(line)]
    assert found == []


def test_the_metadata_names_the_license_and_the_optional_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"} and (ROOT / "LICENSE").is_file()
    assert "License :: OSI Approved :: Apache Software License" in project["classifiers"]
    assert {"demo", "dev", "lightning", "timm", "cleanlab"} <= set(project["optional-dependencies"])
    assert any(d.startswith("torch>=") for d in project["dependencies"])
