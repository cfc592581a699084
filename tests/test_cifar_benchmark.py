"""benchmarks/noisy_cifar10.py --config cpu10k: the split, the run list and shards, the store, and
a dry run on real images (skipped when the CIFAR-10 archives are absent)."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch

from iegkit import recipes, training
from iegkit.data import NoisyDataset
from iegkit.models import SmallCNN

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class _Benchmark:
    """The CIFAR-10 benchmark's modules (the CLI, each protocol, the report, the shared runner) as
    one namespace to read names from (patch a module itself, not through this)."""

    MODULES = ("noisy_cifar10", "cifar_cpu10k", "cifar_report", "cifar_paper", "cifar_runs")

    def __init__(self):
        modules = [importlib.import_module(f"benchmarks.{name}") for name in self.MODULES]
        self._modules = modules

    def _owner(self, name):
        owner = next((m for m in self._modules if hasattr(m, name)), None)
        if owner is None:
            raise AttributeError(f"no CIFAR-10 benchmark module defines {name!r}")
        return owner

    def __getattr__(self, name):
        return getattr(self._owner(name), name)


@pytest.fixture(scope="module")
def bench():
    return _Benchmark()


def test_the_model_is_a_small_bn_cnn_with_its_parameters_at_low_resolution(bench):
    model = bench.build_model(bench.CONFIGS["cpu10k"])
    assert 250_000 <= sum(p.numel() for p in model.parameters()) <= 1_000_000
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    cfg = bench.CONFIGS["cpu10k"]
    assert (cfg.batch_size, cfg.epochs >= 15, cfg.threads, cfg.schedule) == (128, True, 1, "cosine")


def test_split_trusted_then_validation_then_training_subset(bench):
    n = 3000  # 300 per class
    labels = torch.arange(n) % 10
    ids = torch.arange(n)[:, None]  # "images" that name their index
    cfg = dataclasses.replace(bench.CONFIGS["cpu10k"], val_size=500, train_subset=1000)
    test = (torch.zeros(20, 1), torch.arange(20) % 10)
    split = bench.prepare_cpu10k_split((ids, labels), test, cfg, seed=0)
    trusted, val, train = (set(x.flatten().tolist()) for x in
                           (split.trusted_images, split.val_images, split.train_images))
    assert (len(trusted), len(val), len(train)) == (100, 500, 1000)
    assert not (trusted & val or trusted & train or val & train)
    for images, got, per_class in ((split.trusted_images, split.trusted_labels, 10),
                                   (split.val_images, split.val_labels, 50),
                                   (split.train_images, split.train_clean, 100)):
        assert torch.equal(got, labels[images.flatten()])  # clean labels kept
        assert torch.bincount(got, minlength=10).tolist() == [per_class] * 10
    again = bench.prepare_cpu10k_split((ids, labels), test, cfg, seed=0)
    assert torch.equal(again.val_images, split.val_images)
    other = bench.prepare_cpu10k_split((ids, labels), test, cfg, seed=1)
    assert not torch.equal(other.val_images, split.val_images)


def test_run_list_priority_label_free_methods_and_shards(bench):
    settings = list(bench.SETTINGS)
    runs = bench.cpu10k_runs(settings, list(bench.METHODS), seeds=2)
    label = "cpu10k"
    keys = [r.key(label) for r in runs]
    assert keys[:6] == [f"{s}|{m}|0|cpu10k" for s in ("uniform:0.8", "uniform:0.4", "asymmetric:0.4")
                        for m in ("plain", "robust_ieg")]
    assert keys[6] == "uniform:0.8|ieg|0|cpu10k" and "any|robust_eg|0|cpu10k" in keys[6:12]
    assert len(keys) == len(set(keys))
    assert [k for k in keys if "|eg|" in k or "robust_eg" in k] == ["any|robust_eg|0|cpu10k",
                                                                    "any|eg|0|cpu10k"]
    assert all(r.seed == 0 or r.method in ("plain", "robust_ieg") for r in runs)
    assert keys[-1] == "asymmetric:0.4|robust_ieg|1|cpu10k"
    cfg = bench.CONFIGS["cpu10k"]
    owners = bench.assign_shards(runs, 2, cfg)
    assert owners == bench.assign_shards(runs, 2, cfg) and set(owners) == {0, 1}
    loads = [sum(bench.run_cost(r, cfg) for r, o in zip(runs, owners) if o == s) for s in (0, 1)]
    assert max(loads) < 1.3 * min(loads)
    extra = bench.cpu10k_runs(settings, ["plain"], seeds=1, ablations="all")
    assert [r.method for r in extra] == ["plain"] * 3 + [*bench.SAFEGUARD_ABLATIONS,
                                                         *bench.TABLE7_VARIANTS]
    assert {r.setting for r in extra[3:]} == {"uniform:0.8"}
    assert bench.config_label(dataclasses.replace(cfg, epochs=30)) == "cpu10k,epochs=30"


def test_baselines_run_after_the_rest_at_cpumems_selection_seed_by_seed(bench, monkeypatch):
    chosen = {("glc", "uniform:0.4"): "glc/trusted_weight=0.1",
              ("plain_plus", "uniform:0.4"): "plain_plus/mixup_weight=5"}
    monkeypatch.setattr(bench._owner("cpu10k_runs"), "cpumem_selection",
                        lambda method, setting: chosen.get((method, setting), method))
    settings = [("uniform", 0.8), ("uniform", 0.4)]
    runs = bench.cpu10k_runs(settings, [], seeds=1, baselines=True)
    assert [r.key("c") for r in runs] == [
        "uniform:0.8|plain|0|c", "uniform:0.8|plain/c_hat|0|c",
        "uniform:0.4|plain|0|c", "uniform:0.4|plain/c_hat|0|c",
        "uniform:0.8|glc|0|c", "uniform:0.4|glc/trusted_weight=0.1|0|c",
        "uniform:0.8|small_loss|0|c", "uniform:0.4|small_loss|0|c",
        "uniform:0.8|plain_plus|0|c", "uniform:0.4|plain_plus/mixup_weight=5|0|c",
        *(f"{st}|{m}|0|c" for m in ("gce", "sce", "forward_online", "l2r_gce")
          for st in ("uniform:0.8", "uniform:0.4")), "any|trusted_only|0|c",
        "uniform:0.8|robust_ieg_glc|0|c", "uniform:0.4|robust_ieg_glc|0|c"]
    assert all(r.method in bench.VARIANTS for r in runs)
    later = bench.cpu10k_runs(settings, [], seeds=2, baselines=True)[len(runs):]
    assert [r.key("c") for r in later] == [  # plain+ first; GLC's first stage before its readers
        "uniform:0.8|plain_plus|1|c", "uniform:0.4|plain_plus/mixup_weight=5|1|c",
        "uniform:0.8|plain|1|c", "uniform:0.8|plain/c_hat|1|c", "uniform:0.8|glc|1|c",
        "uniform:0.4|plain|1|c", "uniform:0.4|plain/c_hat|1|c",
        "uniform:0.4|glc/trusted_weight=0.1|1|c",
        "uniform:0.8|robust_ieg_glc|1|c", "uniform:0.4|robust_ieg_glc|1|c",
        "uniform:0.8|small_loss|1|c", "uniform:0.4|small_loss|1|c",
        *(f"{st}|{m}|1|c" for m in ("gce", "sce", "forward_online", "l2r_gce")
          for st in ("uniform:0.8", "uniform:0.4")), "any|trusted_only|1|c"]
    assert set(bench.LATER_SEED_ORDER) == {*bench.BASELINES, bench.RECOMMENDED}
    owner = bench.assign_shards(runs + later, 2, bench.CONFIGS["cpu10k"])
    where = {r: s for r, s in zip(runs + later, owner)}
    for run in runs + later:  # a reader of GLC's first stage shares its shard, and so does
        if bench.needs_first_stage(run.method):  # the plain/c_hat run with its plain run
            assert where[run] == where[bench.Cpu10kRun(run.setting, "plain/c_hat", run.seed)]
        if run.method == "plain/c_hat":
            assert where[run] == where[bench.Cpu10kRun(run.setting, "plain", run.seed)]
    assert len(set(owner)) == 2


def test_every_cpumem_candidate_of_the_baselines_is_a_cpu10k_variant(bench):
    from benchmarks import baselines

    for method in (*bench.BASELINES, bench.RECOMMENDED):
        for variant in baselines.CANDIDATES[method]:
            assert variant in bench.VARIANTS, variant
            recipe, options = bench.VARIANTS[variant]
            # the cpumem names of two compositions, the recipes they build
            cpumem_recipe = {"robust_ieg_glc": "robust_ieg", "trusted_only": "plain"}.get(
                baselines.VARIANTS[variant][0], baselines.VARIANTS[variant][0])
            assert recipe == cpumem_recipe, variant
            assert options.items() >= baselines.VARIANTS[variant][1].items()
        assert bench.cpumem_selection(method, "uniform:0.4") in baselines.CANDIDATES[method]


def test_plain_is_repeated_for_its_c_hat_only_where_its_record_lacks_it(bench, tmp_path):
    import argparse

    cfg = bench.CONFIGS["cpu10k"]
    store = bench.Store(tmp_path / "runs.jsonl")
    base = {"cfg": dataclasses.asdict(cfg), "seed": 0, "history": [{"ema_val_accuracy": 0}]}
    store.add("u|plain|0|c", {**base, "method": "plain"})  # stored before C_hat was recorded
    store.add("a|plain|0|c", {**base, "method": "plain", "transition": [[1.0]]})
    finished = bench._owner("_finished")._finished(
        store, argparse.Namespace(rerun_without_ema=False), cfg)
    assert finished("u|plain|0|c") and finished("a|plain|0|c") and finished("a|plain/c_hat|0|c")
    assert not finished("u|plain/c_hat|0|c")
    transition = bench._owner("plain_transition").plain_transition
    assert transition(store, bench.Cpu10kRun("u", "glc", 0), "c") is None
    store.add("u|plain/c_hat|0|c", {**base, "method": "plain/c_hat", "transition": [[0.5]]})
    assert finished("u|plain/c_hat|0|c") and store.runs["u|plain|0|c"]["method"] == "plain"
    assert transition(store, bench.Cpu10kRun("u", "glc", 0), "c") == [[0.5]]
    assert transition(store, bench.Cpu10kRun("a", "glc", 0), "c") == [[1.0]]


def test_baseline_table_takes_the_selected_variant_and_pairs_with_the_best_mean(bench, monkeypatch):
    report = bench._owner("_baseline_table")
    monkeypatch.setattr(report, "cpumem_selection",
                        lambda method, setting: ("glc/trusted_weight=0.1"
                                                 if (method, setting) == ("glc", "uniform:0.4")
                                                 else method))

    def record(method, acc, seed=0):
        return {"method": method, "seed": seed, "test_accuracy": acc, "val_accuracy": acc + 0.01,
                "ms_per_step": 100.0}

    runs = {"plain": [record("plain", 0.50), record("plain", 0.90, seed=1)],
            "glc": [record("glc", 0.99)],  # the default, not cpumem's selection: not shown
            "glc/trusted_weight=0.1": [record("glc/trusted_weight=0.1", 0.55)],
            "robust_ieg": [record("robust_ieg", 0.60)]}

    def group(setting, method):
        return runs.get(method, [])

    assert report._baseline_table(lambda s, m: runs.get(m, []) if m == "plain" else [],
                                  ["uniform:0.4"]) == []
    lines = report._baseline_table(group, ["uniform:0.4"])
    assert "| plain | 70.0 [2] · 71.0 · 100 |" in lines  # the mean over its seeds
    assert "| glc | 55.0 · 56.0 · 100 (trusted_weight=0.1) |" in lines  # the setting's candidate
    assert "| small_loss | - |" in lines
    two = report._baseline_table(group, ["uniform:0.4", "uniform:0.8"])
    assert "| glc | 55.0 · 56.0 · 100 (trusted_weight=0.1) | 99.0 · 100.0 · 100 |" in two
    # paired over the seeds both have: seed 0 only, where glc (55) is above plain (50) though
    # plain's mean over its seeds (70) is higher
    assert lines[-2].endswith("uniform 0.4: robust_ieg − glc +5.0 (1 seed).")
    runs["robust_ieg"].append(record("robust_ieg", 0.94, seed=1))
    runs["glc/trusted_weight=0.1"].append(record("glc/trusted_weight=0.1", 0.93, seed=1))
    runs["trusted_only"] = [record("trusted_only", 0.99)]  # the floor: never "the best"
    # against plain +10 and +4 (mean +7), against glc +5 and +1 (mean +3): glc is the least
    # favourable comparison
    assert report._baseline_table(group, ["uniform:0.4"])[-2].endswith(
        "uniform 0.4: robust_ieg − glc +3.0 [-22.4, +28.4] (seeds 0, 1).")


def test_store_skips_cut_lines_and_sees_the_other_process(bench, tmp_path):
    path = tmp_path / "runs.jsonl"
    a, b = bench.Store(path), bench.Store(path)
    a.add("x", {"v": 1})
    with path.open("a") as handle:
        handle.write('{"key": "cut", "v"')  # a line cut by a kill
    b.add("y", {"v": 2})
    b.reload()
    assert set(b.runs) == {"x", "y"} and set(bench.Store(path).runs) == {"x", "y"}
    cfg = bench.CONFIGS["cpu10k"]
    a.add("z", {"cfg": dataclasses.asdict(dataclasses.replace(cfg, epochs=cfg.epochs + 1))})
    assert not a.done("z", cfg) and not a.done("missing", cfg)  # another configuration's run
    a.add("z", {"cfg": dataclasses.asdict(cfg)})
    assert bench.Store(path).done("z", cfg)


def test_a_shortened_run_needs_its_own_store(bench):
    """--max-steps would store a partial run under the full run's key in the tracked store."""
    with pytest.raises(SystemExit, match="--store"):
        bench.main(["--config", "cpu10k", "--max-steps", "78", "--list-runs"])
    # the label-free runs: every EG and robust EG variant, and the trusted-only floor
    assert all(bench.VARIANTS[m][0] in ("eg", "robust_eg") or m == "trusted_only"
               for m in bench.LABEL_FREE) and "trusted_only" in bench.LABEL_FREE


def test_report_of_the_full_training_set_configuration(bench, tmp_path, capsys):
    """--train-subset 0 (every remaining training image, gpu.sh --cifar-full) has no subset size
    to print: the report says so instead of failing."""
    results = tmp_path / "results.md"
    assert bench.main(["--config", "cpu10k", "--model", "wrn28_2", "--train-subset", "0",
                       "--report-only", "--store", str(tmp_path / "none.jsonl"), "--write",
                       str(results), "--figures-dir", str(tmp_path)]) == 0
    text = results.read_text()
    assert "WRN-28-2 (benchmarks/wrn.py)" in text and "all remaining training images" in text


def test_ablation_tables_mark_the_components_and_the_runs_not_made(bench):
    def record(method, acc, teacher=None):
        return {"method": method, "seed": 0, "test_accuracy": acc, "val_accuracy": acc - 0.01,
                "max_test_top_share": 0.3, "max_ema_test_top_share": teacher}

    runs = {"robust_ieg": [record("robust_ieg", 0.47, 0.2)],
            "robust_ieg/no_posterior": [record("robust_ieg/no_posterior", 0.427)],
            "robust_ieg-2": [record("robust_ieg-2", 0.41, 0.22)]}

    def group(setting, method):
        return runs.get(method, []) if setting == "uniform:0.8" else []

    lines = bench.ablation_tables(group)
    text = "\n".join(lines)
    assert "| robust_ieg/no_posterior (label_posterior=False) | 42.7 | 41.7 | 0.30 / - |" in lines
    assert "| robust_ieg (defaults) | 47.0 | 46.0 | 0.30 / 0.20 |" in lines
    assert "| 2 |  |  |  | ✓ | 41.0 | 40.0 | 0.30 / 0.22 | 36.04 |" in lines
    assert "| 5 | ✓ | ✓ | ✓ | ✓ | 47.0 | 46.0 | 0.30 / 0.20 | 75.42 |" in lines
    assert "| 1 |  |  |  |  | not run | - | - | 33.52 |" in lines
    assert "robust_ieg/no_teacher" not in text
    runs.pop("robust_ieg-2")
    assert not any("Table 7" in line for line in bench.ablation_tables(group))


@pytest.mark.parametrize("method", ["eg", "robust_eg"])
def test_label_free_methods_do_not_read_the_noisy_labels(method):
    """Why EG and robust EG run once per seed and appear in every row of the table."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(40, 3, 8, 8, generator=generator) * 2 - 1
    clean = torch.arange(40) % 10

    def run(labels):
        torch.manual_seed(0)
        model = SmallCNN(3, 10, width=4, blocks=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        pipeline = recipes.build(method, model, optimizer, total_steps=4,
                                 strong_augment=lambda x, generator=None: x.flip(-1))
        data = NoisyDataset(images, labels, clean, images[:20], clean[:20], images[:10], clean[:10],
                            10)
        result = training.fit(pipeline, model, optimizer, data, epochs=2, batch_size=20,
                              weak_augment=lambda x, generator=None: x, progress=False)
        return [h["loss"] for h in result.history], list(model.parameters())

    losses, params = run(clean)
    other_losses, other_params = run((clean + 3) % 10)
    assert losses == other_losses
    assert all(torch.equal(p, q) for p, q in zip(params, other_params))


def test_dry_run_stores_each_run_skips_it_on_restart_and_reports(bench, tmp_path, capsys):
    data = Path(bench.DEFAULT_DATA)
    if not ((data / "train.tar.gz").is_file() and (data / "test.tar.gz").is_file()):
        pytest.skip(f"CIFAR-10 JPEG archives not found in {data} (train.tar.gz, test.tar.gz)")
    store = tmp_path / "runs.jsonl"
    argv = ["--config", "cpu10k", "--dry-run", "--store", str(store), "--settings", "uniform:0.8",
            "--methods", "plain,robust_ieg", "--seeds", "1", "--no-progress"]
    assert bench.main(argv) == 0
    records = [json.loads(line) for line in store.read_text().splitlines()]
    assert [r["key"] for r in records] == [
        f"uniform:0.8|{m}|0|cpu10k,width=8,train_subset=100,epochs=1,batch_size=32,val_size=100,"
        "dry_run" for m in ("plain", "robust_ieg")]
    for r in records:
        assert (r["n_train"], r["n_val"], r["n_test"], r["n_trusted"], r["steps"]) == (
            100, 100, 200, 100, 3)
        entry = r["history"][-1]
        assert {"val_accuracy", "val_top_share", "test_top_share", "loss", "metrics"} <= set(entry)
        assert "test_accuracy" not in entry  # the test split only in the final result
        assert 0 <= r["test_accuracy"] <= 1 and r["ms_per_step"] > 0
        # the evaluation EMA beside the trained weights, over the whole run
        assert {"ema_val_accuracy", "ema_val_top_share", "ema_test_top_share"} <= set(entry)
        assert 0 <= r["ema_test_accuracy"] <= 1 and r["ema_since_epoch"] == 0
        assert r["ema_decay"] == bench.EVAL_EMA_DECAY
        assert r["max_ema_test_top_share"] == max(h["ema_test_top_share"] for h in r["history"])
    # what a bit-exact rerun needs the same: code, CPU kernels, data (one split for both runs)
    assert {"commit", "cpu", "data", "command", "machine", "date"} <= set(records[0])
    assert records[0]["data"] == records[1]["data"] and len(records[0]["data"]) == 16
    ieg = records[1]
    assert {"pseudo_labeler/top_share", "pseudo_labeler/marginal_entropy",
            "pseudo_labeler/probe_accuracy", "distribution_alignment/top_share"} <= set(
        ieg["history"][-1]["metrics"])
    assert ieg["precompute_seconds"] > 0 and records[0]["precompute_seconds"] == 0
    assert "epoch 1/1" in capsys.readouterr().out

    assert bench.main(argv) == 0  # restart: both runs skipped
    assert len(store.read_text().splitlines()) == 2

    # a record made before the evaluation EMA is re-run only on request, and only once
    lines = store.read_text().splitlines()
    old = json.loads(lines[0])
    for name in ("ema_test_accuracy", "ema_val_accuracy", "max_ema_test_top_share"):
        del old[name]
    store.write_text("\n".join([json.dumps(old), lines[1]]) + "\n")
    assert bench.main(argv) == 0
    assert len(store.read_text().splitlines()) == 2
    capsys.readouterr()
    assert bench.main([*argv, "--list-runs", "--rerun-without-ema"]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()] == ["todo", "done"]
    assert bench.main([*argv, "--rerun-without-ema"]) == 0
    rerun = [json.loads(line) for line in store.read_text().splitlines()]
    assert [r["key"] for r in rerun] == [records[0]["key"], records[1]["key"], records[0]["key"]]
    assert "ema_test_accuracy" in rerun[-1]
    assert bench.main([*argv, "--rerun-without-ema"]) == 0
    assert len(store.read_text().splitlines()) == 3

    results, figures = tmp_path / "results.md", tmp_path / "figures"
    assert bench.main([*argv, "--report-only", "--write", str(results),
                       "--figures-dir", str(figures)]) == 0
    text = results.read_text()
    assert f"## {bench.CPU10K_HEADING}" in text and "| robust_ieg |" in text
    assert "Command: `" in text and "figures/noisy_cifar10_cpu10k_val.png" in text
    assert "Evaluated as the official code evaluates, with an EMA (0.99)" in text
    assert "robust_ieg evaluated with its EMA, in the 1 of 1 runs recorded with it" in text
    assert (figures / "noisy_cifar10_cpu10k_val.png").stat().st_size > 0
    assert (figures / "noisy_cifar10_cpu10k_collapse.png").stat().st_size > 0


@pytest.mark.parametrize("drop_ema", [False, True])
def test_a_run_killed_after_its_last_checkpoint_is_stored_on_restart(bench, tmp_path, monkeypatch,
                                                                     drop_ema):
    data = Path(bench.DEFAULT_DATA)
    if not ((data / "train.tar.gz").is_file() and (data / "test.tar.gz").is_file()):
        pytest.skip(f"CIFAR-10 JPEG archives not found in {data} (train.tar.gz, test.tar.gz)")
    store = tmp_path / "runs.jsonl"
    argv = ["--config", "cpu10k", "--dry-run", "--store", str(store), "--settings", "uniform:0.8",
            "--methods", "plain", "--seeds", "1", "--no-progress"]

    def killed(self, key, record):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(bench.Store, "add", killed)
        with pytest.raises(KeyboardInterrupt):
            bench.main(argv)
    checkpoints = list((tmp_path / "runs" / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 1 and not store.exists()
    saved = torch.load(checkpoints[0], weights_only=True)
    assert "eval_ema" in saved["extra"]  # the evaluation EMA resumes with the run
    if drop_ema:  # a checkpoint written before the evaluation EMA existed
        del saved["extra"]["eval_ema"]
        for entry in saved["extra"]["history"]:
            for name in [n for n in entry if n.startswith("ema_")]:
                del entry[name]
        torch.save(saved, checkpoints[0])
    averages = []

    class Spy(bench.WeightEMA):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            averages.append(self)

    monkeypatch.setattr(importlib.import_module("benchmarks.cifar_cpu10k"), "WeightEMA", Spy)
    assert bench.main(argv) == 0  # resumes from the checkpoint: no epoch left, evaluates, stores
    (record,) = [json.loads(line) for line in store.read_text().splitlines()]
    assert len(record["history"]) == 1 and record["steps_this_session"] == 0
    assert 0 <= record["test_accuracy"] <= 1 and not checkpoints[0].exists()
    # the average resumes with the run, or, without a saved one, starts at the resumed weights
    (average,) = averages
    source = saved["extra"]["eval_ema"]["shadow"] if not drop_ema else saved["model"]
    for name, value in average.shadow.items():
        assert torch.equal(value, source[name]), name
    assert record["ema_since_epoch"] == (1 if drop_ema else 0)
    assert bench.has_ema(record) is not drop_ema  # from epoch 1 on only: not in the EMA table
    results = tmp_path / "results.md"
    assert bench.main([*argv, "--report-only", "--write", str(results),
                       "--figures-dir", str(tmp_path / "figures")]) == 0
    assert ("Evaluated as the official code evaluates" in results.read_text()) is not drop_ema


def test_the_benchmarks_trusted_only_tiling_is_the_librarys(bench):
    import iegkit

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (7, 3, 2, 2), dtype=torch.uint8, generator=g)
    split = bench.Split(images, torch.arange(7) % 3, images[:3] + 1, torch.tensor([2, 0, 1]),
                        images[:2], torch.tensor([0, 1]))
    tiled, labels = bench.tiled_trusted(split, 7)
    data = iegkit.data.NoisyDataset(split.train_images, split.train_clean, split.train_clean,
                                    split.trusted_images, split.trusted_labels, split.test_images,
                                    split.test_labels, 3)
    floor = iegkit.data.trusted_only(data)
    assert torch.equal(tiled, floor.train_inputs) and torch.equal(labels, floor.train_labels)


def test_only_keeps_the_matching_runs_in_order_with_glcs_first_stage(bench, monkeypatch):
    monkeypatch.setattr(bench._owner("cpu10k_runs"), "cpumem_selection",
                        lambda method, setting: method)
    runs = bench.cpu10k_runs([("uniform", 0.8), ("uniform", 0.4)], [], seeds=2, baselines=True)
    assert bench.only_runs(runs, [], "c") == runs
    picked = bench.only_runs(runs, ["uniform:0.4|glc|1|*", "*|sce|0|*"], "c")
    assert [r.key("c") for r in picked] == [
        "uniform:0.8|sce|0|c", "uniform:0.4|sce|0|c",
        "uniform:0.4|plain|1|c", "uniform:0.4|plain/c_hat|1|c", "uniform:0.4|glc|1|c"]
    picked = bench.only_runs(runs, ["uniform:0.8|robust_ieg_glc|*"], "c")
    assert [r.key("c") for r in picked] == [
        "uniform:0.8|plain|0|c", "uniform:0.8|plain/c_hat|0|c", "uniform:0.8|robust_ieg_glc|0|c",
        "uniform:0.8|plain|1|c", "uniform:0.8|plain/c_hat|1|c", "uniform:0.8|robust_ieg_glc|1|c"]
    assert bench.only_runs(runs, ["nothing*"], "c") == []
