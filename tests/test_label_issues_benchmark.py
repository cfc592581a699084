"""benchmarks/label_issues.py: a dry run on real images trains plain (C_hat) and robust_ieg_glc with a
recorder, stores the per-example arrays, and reprints the table from them (skipped without the
CIFAR-10 archives or cleanlab, an optional extra)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


@pytest.mark.skipif(not (DATA / "train.tar.gz").is_file(), reason="CIFAR-10 archives absent")
def test_dry_run_stores_arrays_and_reprints(tmp_path):
    pytest.importorskip("cleanlab")
    bench = importlib.import_module("benchmarks.label_issues")
    store, base = tmp_path / "li.jsonl", tmp_path / "base.jsonl"
    argv = ["--dry-run", "--no-progress", "--settings", "uniform:0.4", "--store", str(store),
            "--baselines-store", str(base)]
    assert bench.main(argv) == 0
    arrays_dir = tmp_path / "li"
    (arrays,) = arrays_dir.iterdir()
    stored = torch.load(arrays, weights_only=True)
    assert stored["probs"].shape == (200, 10) and stored["cleanlab_mask"].dtype == torch.bool
    assert 0.25 < float((stored["given"] != stored["clean"]).float().mean()) < 0.55  # uniform 0.4
    torch.testing.assert_close(stored["probs"].sum(-1), torch.ones(200), atol=1e-5, rtol=0)
    body = tmp_path / "results.md"
    assert bench.main(["--dry-run", "--report-only", "--store", str(store), "--write",
                       str(body)]) == 0
    text = body.read_text()
    assert "| iegkit: label posterior, C_hat from the trusted set | yes |" in text
    assert "| cleanlab find_label_issues (defaults) | no |" in text
    assert "asymmetric:0.4\n\nnot run yet" in text.replace("### ", "")
