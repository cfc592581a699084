"""benchmarks/baselines.py (--config cpumem): the split, selection on the noisy validation labels,
the run list and shards, the paired interval, and a dry run on real images (skipped when the
CIFAR-10 archives are absent)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("benchmarks.baselines")


def fake_cifar(n_per_class=60):
    labels = torch.arange(10 * n_per_class) % 10
    images = torch.arange(labels.numel())[:, None, None, None].expand(-1, 3, 2, 2).to(torch.int64)
    return images, labels


def test_split_trusted_first_then_a_noisy_validation_split_from_the_pool(bench):
    images, labels = fake_cifar()
    cfg = bench.dataclasses.replace(bench.CONFIG, pool=300, val_size=100, resolution=2)
    split = bench.prepare_split((images, labels), (images[:20], labels[:20]), cfg, seed=0)
    ids = [set(x[:, 0, 0, 0].tolist()) for x in (split.trusted_images, split.val_images,
                                                split.train_images)]
    assert [len(s) for s in ids] == [100, 100, 200]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert torch.bincount(split.trusted_labels).tolist() == [10] * 10
    assert torch.bincount(torch.cat([split.train_clean, split.val_clean])).tolist() == [30] * 10
    # the noise does not depend on anything but the setting and the seed; both splits get it
    train_a, val_a = bench.noisy_pool_labels(split, "uniform:0.8", 0)
    train_b, val_b = bench.noisy_pool_labels(split, "uniform:0.8", 0)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert float((train_a != split.train_clean).float().mean()) > 0.5
    assert float((val_a != split.val_clean).float().mean()) > 0.5


def test_downsample_averages_squares():
    from benchmarks.baselines import downsample

    images = torch.tensor([[[[0, 2, 10, 10], [4, 6, 10, 10], [0, 0, 1, 1], [0, 0, 1, 2]]]],
                          dtype=torch.uint8)
    assert downsample(images, 2).tolist() == [[[[3, 10], [0, 1]]]]


def test_selection_reads_only_the_noisy_validation_accuracy(bench, tmp_path):
    store = bench.cifar.Store(tmp_path / "s.jsonl")
    label = "cpumem"
    for name, val_noisy, test in (("gce", 0.30, 0.90), ("gce/q=0.4", 0.35, 0.10),
                                  ("gce/q=0.9", 0.20, 0.95)):
        store.add(bench.Run("uniform:0.4", name, 0).key(label),
                  {"final": {"val_noisy": val_noisy, "test": test, "val_clean": test}})
    assert bench.selected_variant(store, "gce", "uniform:0.4", label) == "gce/q=0.4"
    assert bench.selected_variant(store, "sce", "uniform:0.4", label) is None  # not all in yet
    runs = bench.run_list(store, ["uniform:0.4"], ["gce"], 3, label, candidates=False)
    assert [r.variant for r in runs] == ["gce", "gce/q=0.4", "gce/q=0.4"]
    assert [r.seed for r in runs] == [0, 1, 2]


def test_shards_keep_plain_with_glc_and_balance(bench, tmp_path):
    store = bench.cifar.Store(tmp_path / "s.jsonl")
    runs = bench.run_list(store, list(bench.SETTINGS), list(bench.METHODS), 2, "cpumem", False)
    owner = bench.shard_of(runs, 2)
    for run in runs:
        if run.method in bench.NEEDS_PLAIN:
            assert owner[run] == owner[bench.Run(run.setting, "plain", run.seed)]
            assert runs.index(bench.Run(run.setting, "plain", run.seed)) < runs.index(run)
    assert set(owner.values()) == {0, 1}


def test_every_candidate_builds_with_its_recipe(bench):
    assert set(bench.STEP_MS) == set(bench.METHODS)
    for name, (method, _) in bench.VARIANTS.items():
        assert name == method or name.startswith(method + "/")
        assert len(bench.CANDIDATES[method]) <= 3


@pytest.mark.skipif(not (DATA / "train.tar.gz").is_file(), reason="CIFAR-10 archives absent")
def test_dry_run_stores_every_method_and_reports(bench, tmp_path):
    store = tmp_path / "dry.jsonl"
    assert bench.main(["--dry-run", "--no-progress", "--settings", "uniform:0.4", "--store",
                       str(store)]) == 0
    records = [json.loads(line) for line in store.read_text().splitlines()]
    assert {r["method"] for r in records} == set(bench.METHODS)
    assert len({r["data"] for r in records}) == 1 and all(r["cpu"] for r in records)
    plain = next(r for r in records if r["method"] == "plain")
    assert plain["transition"] == plain["history"][plain["transition_epoch"] - 1]["transition"]
    transition = torch.tensor(plain["transition"])
    torch.testing.assert_close(transition.sum(-1), torch.ones(10, dtype=transition.dtype))
    robust = next(r for r in records if r["method"] == "robust_ieg")
    assert "average_test" in robust["final"]  # its teacher is evaluated too
    body = tmp_path / "results.md"
    body.write_text("# Results\n")
    assert bench.main(["--dry-run", "--report-only", "--settings", "uniform:0.4", "--store",
                       str(store), "--write", str(body), "--figures-dir", str(tmp_path)]) == 0
    text = body.read_text()
    assert "| robust_ieg |" in text and "| glc |" in text
    assert (tmp_path / "baselines_cpumem_plain.png").is_file()


def test_cost_benchmark_times_every_method_side_by_side(bench):
    cost = importlib.import_module("benchmarks.baselines_cost")
    cfg = bench.dataclasses.replace(bench.CONFIG, width=4, blocks=3, resolution=8)
    times = cost.measure(cfg, steps=1, rounds=2, methods=("plain", "gce", "small_loss", "glc"))
    assert set(times) == {"plain", "gce", "small_loss", "glc"}
    assert all(len(v) == 2 and min(v) > 0 for v in times.values())
    text = cost.table(times)
    assert "| plain |" in text and "| 1.00 |" in text
