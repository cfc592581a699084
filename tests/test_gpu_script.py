"""benchmarks/gpu.sh --dry-run: every stage of the GPU script at tiny sizes on the CPU."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="coreutils' timeout is not installed")
def test_gpu_script_dry_run_writes_every_table(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--pack", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, log
    results = (tmp_path / "results.md").read_text()
    status = (tmp_path / "status.txt").read_text()
    assert "## meta_step.py on cpu: small_cnn" in results, log
    for variant in ("plain", "iegkit_l2r", "double_backward", "plain_bf16", "iegkit_l2r_bf16"):
        assert f"| cpu | small_cnn | 8 | {variant} |" in results
    assert "iegkit_l2r vs double_backward" in results  # the same-weights check ran
    assert "## Step cost per recipe, small_cnn (benchmarks/recipe_steps.py) on cpu" in results
    assert "| ieg |" in results
    assert "meta_step: ok" in status and "recipe_steps: ok" in status
    assert "torch" in (tmp_path / "env.txt").read_text()
    # --pack: few files at the top (the device tool brings back 8), the rest in one archive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["details.tar.gz", "env.txt", "results.md",
                                                          "status.txt"]
    with tarfile.open(tmp_path / "details.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"logs/meta_step.log", "logs/recipe_steps.log"} <= names
    # the CIFAR stage runs where the archives and kornia are here, and is skipped (said so) if not
    assert "cifar10: ok" in status or "cifar10: skipped" in status, status
    if "cifar10: ok" in status:
        assert "cifar10_report: ok" in status and "cifar/cifar10.jsonl" in names
        assert "## Noisy CIFAR-10" in results


def test_gpu_script_refuses_unknown_arguments():
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    done = subprocess.run(["bash", str(SCRIPT), "--no-such-flag"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "unknown argument" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="coreutils' timeout is not installed")
def test_gpu_script_full_cifar_configuration_times_then_trains(tmp_path):
    """--only-cifar --cifar-full: stages 1-2 skipped, a timing stage sets the epochs that fit
    --cifar-seconds, and WRN-28-2 trains (at dry-run sizes here)."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only-cifar", "--cifar-full",
                           "--cifar-seconds", "90", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, log
    status = (tmp_path / "status.txt").read_text()
    assert "meta_step, recipe_steps: skipped (--only-cifar)" in status
    if "cifar10: skipped" in status:
        pytest.skip("no CIFAR-10 archives or kornia here")
    assert "cifar10_timing: ok" in status and "cifar10: ok" in status, status
    timing = (tmp_path / "logs" / "cifar10_timing.log").read_text()
    per_epoch = float(timing.split("seconds per epoch of every run: ")[1].split()[0])
    epochs = max(1, math.floor(90 / per_epoch))
    assert f"cifar10: {epochs} epochs fit in 90s" in done.stdout
    assert f"--epochs {epochs}" in done.stdout  # passed on to the training stage
    assert "WRN-28-2" in (tmp_path / "results.md").read_text()
