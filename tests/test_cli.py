"""The iegkit CLI end to end on a tiny image folder written by the test; resume; exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from iegkit.cli import main


def write_folder(root, classes=3, per_class=14, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = torch.zeros(size, size, 3)
            base[..., c] = 0.8  # a class-coloured image with noise, learnable
            pixels = (base + 0.2 * torch.rand(size, size, 3, generator=gen)).clamp(0, 1)
            Image.fromarray((pixels * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return root


ARGS = ["--trusted-per-class", "2", "--batch-size", "8", "--width", "8", "--no-progress",
        "--noise", "uniform:0.5"]


def test_train_on_an_image_folder_writes_report_and_plots(tmp_path):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--recipe", "ieg", "--epochs", "1", "--out",
                 str(out), *ARGS]) == 0
    for name in ("config.json", "checkpoint.pt", "report.md", "report.json", "summary.json",
                 "curves.png", "weights.png", "lambda.png", "collapse.png"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,loss") and len(rows) == 1 + 1  # header + one epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1
    assert "Mislabeled-example detection" in (out / "report.md").read_text()


def test_resume_equals_an_uninterrupted_run(tmp_path):
    data = write_folder(tmp_path / "data")
    common = ["train", "--data", str(data), "--recipe", "l2r", "--epochs", "3", *ARGS]
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    assert main([*common, "--out", str(tmp_path / "split"), "--stop-after", "1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    split = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    assert full["extra"]["history"] == split["extra"]["history"]


def test_exit_codes_and_messages(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", "--data", str(tmp_path / "missing"), *out, *ARGS]) == 3
    assert "no folder" in capsys.readouterr().err
    data = write_folder(tmp_path / "data", per_class=3)
    assert main(["train", "--data", str(data), *out, "--trusted-per-class", "5", "--no-progress"]) == 3
    assert "trusted" in capsys.readouterr().err
    assert main(["train", "--data", str(data), *out, "--noise", "bogus:0.3", "--no-progress"]) == 2
    assert "noise" in capsys.readouterr().err
    (data / "class_0" / "broken.png").write_bytes(b"not an image")
    assert main(["train", "--data", str(data), *out, "--no-progress"]) == 3
    assert "broken.png" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert main(["train", "--no-progress"]) == 2  # --out missing
    with pytest.raises(SystemExit):
        main(["train", "--recipe", "nope"])


def test_the_cli_warns_when_pseudo_labels_stay_concentrated(tmp_path, capsys, monkeypatch):
    """The warning needs the epoch's mean top share above 2/C (capped for small C) for
    ``patience`` epochs in a row; a pipeline whose pseudo labels keep to one class gets it."""
    from iegkit.diagnostics import CollapseMonitor

    def epoch(monitor, targets, metrics=None):
        class Out:
            values = {"targets:pseudo": targets}

        Out.metrics = metrics or {}
        monitor.record(Out())
        return monitor.epoch_summary()

    def share(top, classes=10, batch=20):
        """A batch whose most frequent pseudo label holds ``top`` of it, the rest spread out."""
        n_top = round(top * batch)
        labels = torch.cat([torch.zeros(n_top, dtype=torch.long),
                            1 + torch.arange(batch - n_top) % (classes - 1)])
        return torch.eye(classes)[labels]

    monitor = CollapseMonitor()  # C = 10: threshold 0.2, patience 2
    assert not monitor.above_threshold(epoch(monitor, share(0.2)))  # at the threshold: not above
    assert monitor.above_threshold(epoch(monitor, share(0.25))) and not monitor.should_warn()
    assert monitor.above_threshold(epoch(monitor, share(0.25))) and monitor.should_warn()
    assert not monitor.above_threshold(epoch(monitor, share(0.1))) and not monitor.should_warn()
    assert monitor.above_threshold(epoch(monitor, share(1.0))) and not monitor.should_warn()  # a new streak
    binary = CollapseMonitor(patience=1)
    summary = epoch(binary, share(1.0, classes=2))
    assert summary["pseudo_top_share"] == 1.0 and binary.should_warn()  # 2/C = 1 is capped at 0.75
    assert not binary.above_threshold(epoch(binary, share(0.7, classes=2))) and not binary.should_warn()
    balanced = CollapseMonitor()
    summary = epoch(balanced, torch.eye(3)[torch.arange(9) % 3],
                    {"pseudo_labeler/probe_accuracy": torch.tensor(0.5)})
    assert not balanced.above_threshold(summary) and summary["pseudo_probe_accuracy"] == 0.5
    for patience in (0, 1.5, True):
        with pytest.raises(ValueError, match="patience"):
            CollapseMonitor(patience=patience)
    monkeypatch.setattr(CollapseMonitor, "should_warn", lambda self: True)
    data = write_folder(tmp_path / "data")
    assert main(["train", "--data", str(data), "--recipe", "robust_ieg", "--epochs", "1", "--out",
                 str(tmp_path / "run"), *ARGS]) == 0
    captured = capsys.readouterr()
    assert "the pseudo labels are concentrating; check their probe accuracy" in captured.err
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    assert 0.0 <= final["average_test_accuracy"] <= 1.0  # robust_ieg's teacher, evaluated too
    assert f"weight average, to evaluate and deploy: {100 * final['average_test_accuracy']:.1f}%" \
        in captured.out


def test_out_refuses_an_existing_run_and_overwrite_replaces_it_whole(tmp_path, capsys):
    data = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    first = ["train", "--data", str(data), "--recipe", "robust_ieg", "--epochs", "1", "--out",
             str(out), *ARGS]
    assert main(first) == 0
    before = {name: (out / name).read_bytes() for name in ("config.json", "checkpoint.pt")}
    assert (out / "collapse.png").exists()  # robust IEG makes pseudo labels
    capsys.readouterr()
    plain = ["train", "--data", str(data), "--recipe", "plain", "--epochs", "1", "--out", str(out),
             *ARGS]
    assert main(plain) == 2
    assert f"--out: {out} already holds a run" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    assert main([*plain, "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["recipe"] == "plain"
    assert not (out / "collapse.png").exists()  # the old run's plots do not stay behind


def test_model_pt_holds_the_weights_to_deploy(tmp_path):
    """robust IEG's teacher (its evaluation_weights), as a plain state dict that loads with
    weights_only=True into the user's model."""
    from iegkit.models import SmallCNN

    data = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--recipe", "robust_ieg", "--epochs", "1", "--out",
                 str(out), *ARGS]) == 0
    deployed = torch.load(out / "model.pt", weights_only=True)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    teacher = checkpoint["pipeline"]["parts"]["pseudo_labeler"]["teacher"]["shadow"]
    model = SmallCNN(in_channels=3, num_classes=3, width=8)
    model.load_state_dict(deployed)
    for name, value in teacher.items():
        assert torch.equal(deployed[name], value), name
    trained = checkpoint["model"]
    assert any(not torch.equal(deployed[name], trained[name]) for name in teacher)


def test_version_and_the_missing_extra_message(monkeypatch, capsys, tmp_path):
    import iegkit
    import iegkit.cli as cli

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"iegkit {iegkit.__version__}"

    def no_sklearn():
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")

    monkeypatch.setattr(cli, "load_digits", no_sklearn)
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("iegkit: error: the default data (scikit-learn's digits) needs sklearn: pip "
                   "install 'iegkit[demo]', or pass --data DIR")
    assert not (tmp_path / "run").exists()  # refused before the folder is made


def test_model_takes_your_network_or_a_timm_name(tmp_path, monkeypatch, capsys):
    """MODULE:FACTORY is called as FACTORY(in_channels=C, num_classes=K); timm:NAME goes to
    timm.create_model without pretrained weights (a stand-in timm here: timm is an extra)."""
    import sys
    import types

    from iegkit.models import SmallCNN

    data = write_folder(tmp_path / "data")
    common = ["train", "--data", str(data), "--recipe", "plain", "--epochs", "1", *ARGS]
    assert main([*common, "--out", str(tmp_path / "own"), "--model", "iegkit.models:SmallCNN"]) == 0
    state = torch.load(tmp_path / "own" / "model.pt", weights_only=True)
    SmallCNN(in_channels=3, num_classes=3).load_state_dict(state)  # width 32: the factory's default
    assert json.loads((tmp_path / "own" / "config.json").read_text())["model"] == "iegkit.models:SmallCNN"

    calls = []
    fake = types.ModuleType("timm")
    fake.list_models = lambda: ["tiny"]

    def create_model(name, pretrained, num_classes, in_chans):
        calls.append((name, pretrained, num_classes, in_chans))
        return SmallCNN(in_channels=in_chans, num_classes=num_classes, width=4)

    fake.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert main([*common, "--out", str(tmp_path / "timm"), "--model", "timm:tiny"]) == 0
    assert calls == [("tiny", False, 3, 3)]
    capsys.readouterr()
    for spec, message in (("timm:nope", "timm has no model 'nope'"),
                          ("no_such_module:f", "No module named 'no_such_module'"),
                          ("iegkit.models:nope", "nope"), ("resnet", "expected small_cnn")):
        assert main([*common, "--out", str(tmp_path / "bad"), "--model", spec]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    assert main([*common, "--out", str(tmp_path / "bad"), "--model", "timm:tiny"]) == 2
    assert "pip install 'iegkit[timm]'" in capsys.readouterr().err


def test_device_and_amp(tmp_path, capsys):
    """--amp bf16 trains under autocast on the CPU; a device or precision we cannot honour is a
    usage error before any folder is made; the report's label issues come from the posterior."""
    data = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--recipe", "robust_ieg", "--epochs", "1", "--out",
                 str(out), "--device", "cpu", "--amp", "bf16", *ARGS]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["issue_source"] == "label posterior, P(label wrong) > 1/2, symmetric channel"
    assert "label posterior" in report["detection"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "fp16"), "--amp", "fp16",
                 *ARGS]) == 2
    assert "--amp fp16: not supported" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "gpu"), "--device",
                     "cuda", *ARGS]) == 2
        assert "--device cuda: no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "fp16").exists() and not (tmp_path / "gpu").exists()


def test_tensorboard_logs_every_epoch_where_installed(tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    class FakeWriter:
        def __init__(self, folder):
            calls.append(("init", folder))

        def add_scalar(self, name, value, epoch):
            calls.append((name, value, epoch))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    data = write_folder(tmp_path / "data")
    common = ["train", "--data", str(data), "--recipe", "plain", "--epochs", "2", *ARGS]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=FakeWriter))
    assert main([*common, "--out", str(tmp_path / "run")]) == 0
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    header, last = history[0].split(","), history[-1].split(",")
    logged = {(name, epoch): value for name, value, epoch in
              (c for c in calls if len(c) == 3)}
    accuracy = float(last[header.index("test_accuracy")])
    assert logged[("test_accuracy", 2)] == pytest.approx(accuracy)
    assert ("loss", 1) in logged and calls[0] == ("init", str(tmp_path / "run" / "tensorboard"))
    assert calls[-1] == ("close",)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert (tmp_path / "plain" / "history.csv").is_file()


def test_stream_reads_from_disk_and_trains_as_the_folder_in_memory(tmp_path):
    """--stream (ImageFiles + DataLoader workers) sees the same images in the same order as the
    folder loaded into memory: the run is identical."""
    data = write_folder(tmp_path / "data")
    common = ["train", "--data", str(data), "--recipe", "l2r", "--epochs", "2", *ARGS]
    assert main([*common, "--out", str(tmp_path / "memory")]) == 0
    assert main([*common, "--out", str(tmp_path / "stream"), "--stream", "--workers", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "inline"), "--stream", "--workers", "0"]) == 0
    memory = (tmp_path / "memory" / "history.csv").read_text()
    assert (tmp_path / "stream" / "history.csv").read_text() == memory
    assert (tmp_path / "inline" / "history.csv").read_text() == memory
    assert json.loads((tmp_path / "stream" / "config.json").read_text())["stream"] is True
    assert main([*common, "--out", str(tmp_path / "bad"), "--stream", "--workers", "-1"]) == 2


def test_a_plain_run_writes_c_hat_for_robust_ieg_and_its_report(tmp_path, capsys):
    """Two stages, as the recommended recipe: plain writes GLC's C_hat; robust_ieg
    --label-transition trains its posterior with it and the report's label issues use it."""
    data = write_folder(tmp_path / "data")
    common = ["train", "--data", str(data), "--epochs", "1", *ARGS]
    assert main([*common, "--recipe", "plain", "--out", str(tmp_path / "plain")]) == 0
    c_hat = tmp_path / "plain" / "transition.json"
    matrix = torch.tensor(json.loads(c_hat.read_text()))
    assert matrix.shape == (3, 3)
    torch.testing.assert_close(matrix.sum(-1), torch.ones(3, dtype=matrix.dtype))
    assert main([*common, "--recipe", "robust_ieg", "--label-transition", str(c_hat), "--out",
                 str(tmp_path / "robust")]) == 0
    report = json.loads((tmp_path / "robust" / "report.json").read_text())
    assert report["issue_source"].endswith("transition channel")
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 0], [0, 1]]")
    for recipe, path, message in (("robust_ieg", bad, "must hold a 3x3 matrix"),
                                  ("ieg", c_hat, "only --recipe robust_ieg")):
        assert main([*common, "--recipe", recipe, "--label-transition", str(path), "--out",
                     str(tmp_path / "no")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
