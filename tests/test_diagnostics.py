"""Diagnostics: detection metrics, the per-example recorder, the report and the plots."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iegkit.diagnostics import (
    StepRecorder,
    detection_metrics,
    lambda_by_cleanliness,
    noisy_label_report,
    plot_curves,
    plot_lambda_curves,
    plot_weight_histogram,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def fake_out(weights=None, relabel=None, pseudo=None, logits=None, losses=None):
    values = {} if pseudo is None else {"targets:pseudo": torch.as_tensor(pseudo,
                                                                          dtype=torch.float32)}
    losses = losses or {}
    return SimpleNamespace(
        weights=None if weights is None else torch.as_tensor(weights, dtype=torch.float32),
        relabel=None if relabel is None else torch.as_tensor(relabel, dtype=torch.float32),
        values=values,
        logits=None if logits is None else torch.as_tensor(logits, dtype=torch.float32),
        loss=torch.tensor(sum(losses.values())) if losses else None,
        losses={k: torch.tensor(v) for k, v in losses.items()},
    )


# ---------------------------------------------------------------------- detection metrics
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4) | st.floats(-3, 3, allow_nan=False), st.booleans()),
                min_size=2, max_size=30).filter(
                    lambda rows: 0 < sum(y for _, y in rows) < len(rows)))
def test_auc_matches_the_pairwise_definition_with_ties(rows):
    scores = [float(s) for s, _ in rows]
    labels = [y for _, y in rows]
    got = detection_metrics(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels))["auc"]
    assert got == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_auc_perfect_constant_and_degenerate():
    y = torch.tensor([True, False, True, False, False])
    assert detection_metrics(y.double() * 2 + 1, y)["auc"] == 1.0
    assert detection_metrics(-(y.double()), y)["auc"] == 0.0
    assert detection_metrics(torch.full((5,), 0.3), y)["auc"] == 0.5
    assert math.isnan(detection_metrics(torch.rand(4), torch.zeros(4, dtype=torch.bool))["auc"])


def test_precision_recall_against_hand_counts():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
    noisy = torch.tensor([True, False, True, True, False, False])
    m = detection_metrics(scores, noisy, threshold=0.5)  # flags 0, 1, 2: tp 2, fp 1, fn 1
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    decision = torch.tensor([True, False, False, False, False, False])
    m = detection_metrics(scores, noisy, decision=decision)  # tp 1, fp 0, fn 2
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(0.5)
    nothing = detection_metrics(scores, noisy, threshold=2.0)
    assert nothing["precision"] == 0.0 and nothing["recall"] == 0.0 and nothing["f1"] == 0.0
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics(torch.tensor([0.1, math.nan]), torch.tensor([True, False]))


def test_lambda_by_cleanliness_ignores_unseen():
    lam = torch.tensor([1.0, 0.5, math.nan, 0.0, 0.25])
    noisy = torch.tensor([False, False, False, True, True])
    assert lambda_by_cleanliness(lam, noisy) == (0.75, 0.125)
    clean_mean, noisy_mean = lambda_by_cleanliness(lam, torch.zeros(5, dtype=torch.bool))
    assert clean_mean == pytest.approx(1.75 / 4) and math.isnan(noisy_mean)


# ---------------------------------------------------------------------- recorder
def two_class_pseudo(p_first):
    return [[p, 1 - p] for p in p_first]


def filled_recorder(is_noisy=None):
    rec = StepRecorder(6, is_noisy=is_noisy, steps_per_epoch=2)
    rec.record(0, torch.tensor([0, 1, 2]),
               fake_out([0.5, 0.25, 0.25], [1, 0, 1], two_class_pseudo([0.9, 0.2, 0.6]),
                        losses={"a/loss": 1.0, "b/loss": 0.5}))
    rec.record(1, torch.tensor([2, 3, 0]),
               fake_out([0.0, 0.5, 0.5], [0, 0, 1], two_class_pseudo([0.3, 0.1, 0.8]),
                        logits=[[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]], losses={"a/loss": 0.8}))
    rec.record(2, torch.tensor([4, 2]), fake_out(losses={"a/loss": 0.4}))  # plain step
    return rec


def nan_equal(a, b):
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(
        torch.nan_to_num(a), torch.nan_to_num(b))


def test_recorder_accumulates_latest_and_average_per_index():
    rec = filled_recorder()
    assert rec.seen_count.tolist() == [2, 1, 3, 1, 1, 0]
    assert rec.weight_count.tolist() == [2, 1, 2, 1, 0, 0]
    assert rec.relabel_count.tolist() == [2, 1, 2, 1, 0, 0]
    nan = math.nan
    # relative weights B * omega: step 0 (B=3) 1.5, .75, .75; step 1: 0, 1.5, 1.5
    assert nan_equal(rec.weight_rel_avg, torch.tensor([1.5, 0.75, 0.375, 1.5, nan, nan],
                                                      dtype=torch.float64))
    assert nan_equal(rec.weight_avg, torch.tensor([0.5, 0.25, 0.125, 0.5, nan, nan],
                                                  dtype=torch.float64))
    assert nan_equal(rec.weight_last, torch.tensor([0.5, 0.25, 0.0, 0.5, nan, nan],
                                                   dtype=torch.float64))
    assert nan_equal(rec.relabel_avg, torch.tensor([1.0, 0.0, 0.5, 0.0, nan, nan],
                                                   dtype=torch.float64))
    assert nan_equal(rec.relabel_last, torch.tensor([1.0, 0.0, 0.0, 0.0, nan, nan],
                                                    dtype=torch.float64))
    assert rec.pseudo_label.tolist() == [0, 1, 1, 1, -1, -1]
    assert rec.pseudo_confidence[:4].tolist() == pytest.approx([0.8, 0.8, 0.7, 0.9])
    assert rec.predicted_label.tolist() == [1, -1, 0, 0, -1, -1]
    assert rec.last_step.tolist() == [1, 0, 2, 1, 2, -1]
    assert rec.has_weights and rec.has_relabel and rec.has_pseudo


def test_recorder_windows_and_step_scalars():
    noisy = torch.tensor([False, True, True, False, False, False])
    rec = filled_recorder(noisy)
    curves = rec.window_curves()
    assert [c["epoch"] for c in curves] == [1, 2] and [c["steps"] for c in curves] == [2, 1]
    first = curves[0]
    assert first["lambda_mean"] == pytest.approx(3 / 6)
    assert first["lambda_mean_clean"] == pytest.approx(2 / 3)  # indices 0, 3, 0: 1, 0, 1
    assert first["lambda_mean_noisy"] == pytest.approx(1 / 3)  # indices 1, 2, 2: 0, 1, 0
    assert first["weight_mean"] == pytest.approx(1.0)
    assert first["a/loss"] == pytest.approx(0.9) and first["b/loss"] == pytest.approx(0.5)
    assert first["loss"] == pytest.approx((1.5 + 0.8) / 2)
    assert math.isnan(curves[1]["lambda_mean_clean"]) and curves[1]["a/loss"] == pytest.approx(0.4)
    assert [r["step"] for r in rec.step_scalars()] == [0, 1, 2]
    # without an explicit window the epoch length is inferred as N // B from the first batch
    rec = StepRecorder(6)
    for step in range(4):
        rec.record(step, torch.tensor([step, step + 1, step + 2]), fake_out(relabel=[1, 1, 0]))
    assert rec.steps_per_epoch == 2 and [c["steps"] for c in rec.window_curves()] == [2, 2]
    rec.record(9, torch.tensor([0]), fake_out(relabel=[1]), epoch=7)
    assert rec.window_curves()[-1]["epoch"] == 8


def test_recorder_with_only_none_and_bad_inputs():
    rec = StepRecorder(3)
    rec(0, torch.tensor([0, 2]), fake_out())
    assert not rec.has_weights and not rec.has_relabel and not rec.has_pseudo
    assert torch.isnan(rec.relabel_avg).all() and rec.seen_count.tolist() == [1, 0, 1]
    with pytest.raises(IndexError):
        rec.record(1, torch.tensor([3]), fake_out())
    with pytest.raises(ValueError, match="weights"):
        rec.record(1, torch.tensor([0, 1]), fake_out(weights=[1.0]))


def test_state_dict_round_trip_through_torch_save():
    noisy = torch.tensor([False, True, True, False, False, False])
    rec = filled_recorder(noisy)
    buffer = io.BytesIO()
    torch.save(rec.state_dict(), buffer)
    buffer.seek(0)
    other = StepRecorder(6)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("weight_rel_avg", "weight_last", "relabel_avg", "pseudo_confidence",
                 "predicted_confidence"):
        assert nan_equal(getattr(rec, name), getattr(other, name)), name
    for name in ("seen_count", "pseudo_label", "predicted_label", "last_step"):
        assert torch.equal(getattr(rec, name), getattr(other, name)), name
    assert json.dumps(rec.window_curves(), sort_keys=True) == json.dumps(other.window_curves(),
                                                                         sort_keys=True)
    assert rec.step_scalars() == other.step_scalars()
    assert torch.equal(other.is_noisy, noisy) and other.steps_per_epoch == 2
    # recording continues from the restored state
    other.record(3, torch.tensor([5]), fake_out(relabel=[0.0]))
    assert other.relabel_count.tolist() == [2, 1, 2, 1, 0, 1]
    with pytest.raises(ValueError, match="examples"):
        StepRecorder(5).load_state_dict(rec.state_dict())


# ---------------------------------------------------------------------- report
def report_recorder():
    """8 examples, 3 classes; lambda* 0 on 1, 2, 4, 6, 7; confidences set the issue order."""
    rec = StepRecorder(8)
    pseudo = torch.tensor([
        [0.9, 0.05, 0.05],   # 0: kept, agrees
        [0.1, 0.6, 0.3],     # 1: relabeled to 1, conf .6
        [0.05, 0.05, 0.9],   # 2: relabeled to 2, conf .9
        [0.2, 0.7, 0.1],     # 3: kept
        [0.8, 0.1, 0.1],     # 4: relabeled but pseudo == given 0 -> not an issue
        [0.1, 0.1, 0.8],     # 5: kept
        [0.7, 0.2, 0.1],     # 6: relabeled to 0, conf .7
        [0.1, 0.9, 0.0],     # 7: relabeled to 1, conf .9, lambda avg lower than 2's
    ])
    relabel = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0.0])
    weights = torch.tensor([0.25, 0.0, 0.0, 0.25, 0.0, 0.25, 0.0, 0.25])
    rec.record(0, torch.arange(8), fake_out(weights, relabel, pseudo))
    # a second visit of 2 keeps the label once: its average lambda is 0.5 -> no longer relabeled
    # (strictly < 0.5); a second visit of 7 relabels again
    rec.record(1, torch.tensor([2, 7]), fake_out([0.5, 0.5], [1.0, 0.0],
                                                 pseudo[[2, 7]]))
    return rec


GIVEN = torch.tensor([0, 0, 1, 1, 0, 2, 1, 2])
CLEAN = torch.tensor([0, 1, 2, 1, 0, 2, 0, 0])   # mislabeled: 1, 2, 6, 7


def test_report_detection_lambda_means_and_issue_order():
    rec = report_recorder()
    report = noisy_label_report(rec, GIVEN, CLEAN, top_k=2)
    assert report.noise_rate == 0.5 and report.num_seen == 8
    assert report.issue_source == "relabeled"
    # relabeled (avg lambda < .5): 1, 4, 6, 7; suggestion != given: 1, 6, 7
    assert report.num_issues == 3
    assert [i.index for i in report.label_issues] == [7, 6]           # conf .9, .7 (top 2)
    assert [i.suggested_label for i in report.label_issues] == [1, 0]
    assert report.label_issues[0].is_noisy and report.label_issues[0].clean_label == 0
    assert report.issues_precision == 1.0 and report.suggestion_accuracy == pytest.approx(2 / 3)
    full = noisy_label_report(rec, GIVEN, CLEAN, top_k=100)
    assert [i.index for i in full.label_issues] == [7, 6, 1]
    lam = rec.relabel_avg
    is_noisy = GIVEN != CLEAN
    expected = detection_metrics(1 - lam, is_noisy, decision=lam < 0.5)
    assert report.detection["relabeled"] == expected
    assert expected["tp"] == 3 and expected["fp"] == 1  # 4 relabeled but clean
    assert (report.lambda_clean_mean, report.lambda_noisy_mean) == lambda_by_cleanliness(
        lam, is_noisy)
    assert report.detection["down-weighted"]["auc"] == pytest.approx(
        detection_metrics(-rec.weight_rel_avg, is_noisy)["auc"])
    assert report.relabeled_fraction == 0.5


def test_report_ties_broken_by_lambda_then_index_and_without_clean_labels():
    rec = StepRecorder(4)
    pseudo = torch.tensor([[0.2, 0.8]] * 4)
    rec.record(0, torch.arange(4), fake_out(relabel=[0, 0, 0, 0], pseudo=pseudo))
    rec.record(1, torch.tensor([0, 1]), fake_out(relabel=[0, 1], pseudo=pseudo[:2]))
    report = noisy_label_report(rec, torch.zeros(4, dtype=torch.long))
    # all conf .8; lambda avg: 0, .5 (not relabeled), 0, 0 -> by index
    assert [i.index for i in report.label_issues] == [0, 2, 3]
    assert report.detection == {} and report.noise_rate is None
    assert report.label_issues[0].clean_label is None and report.label_issues[0].is_noisy is None
    assert "clean |" not in report.to_markdown()


def test_report_without_relabeler_falls_back():
    rec = StepRecorder(3)
    rec.record(0, torch.arange(3), fake_out(weights=[0.0, 0.5, 0.5],
                                            logits=[[0.0, 3.0], [3.0, 0.0], [0.0, 3.0]]))
    report = noisy_label_report(rec, torch.tensor([0, 0, 0]), torch.tensor([1, 0, 0]))
    assert report.issue_source == "down-weighted" and [i.index for i in report.label_issues] == [0]
    assert report.label_issues[0].suggested_label == 1 and "relabeled" not in report.detection
    assert report.detection["down-weighted"]["auc"] == 1.0
    plain = StepRecorder(3)
    plain.record(0, torch.arange(3), fake_out(logits=[[0.0, 3.0], [3.0, 0.0], [0.0, 3.0]]))
    report = noisy_label_report(plain, torch.tensor([0, 0, 0]))
    assert report.issue_source == "prediction disagrees"
    assert [i.index for i in report.label_issues] == [0, 2]
    assert "no omega* or lambda* recorded" in report.to_markdown()


def test_report_markdown_and_json():
    report = noisy_label_report(report_recorder(), GIVEN, CLEAN, top_k=5)
    md = report.to_markdown()
    assert md.startswith("# Noisy-label report")
    assert "| relabeled |" in md and "| down-weighted |" in md and "| 7 | 2 | 1 | 0.900 |" in md
    data = json.loads(report.to_json())  # strict JSON: NaN would raise in to_json
    assert data["num_issues"] == 3 and [i["index"] for i in data["label_issues"]] == [7, 6, 1]
    assert data["label_issues"][0]["is_noisy"] is True
    auc = report.detection["relabeled"]["auc"]
    assert data["detection"]["relabeled"]["auc"] == pytest.approx(auc)
    # NaN (here: weight average of an example never weighted) becomes null
    rec = StepRecorder(2)
    rec.record(0, torch.arange(2), fake_out(relabel=[0, 1], pseudo=[[0.1, 0.9], [0.9, 0.1]]))
    data = json.loads(noisy_label_report(rec, torch.tensor([0, 0])).to_json())
    assert data["label_issues"][0]["weight_rel_avg"] is None


# ---------------------------------------------------------------------- plots
def assert_png(path):
    assert path.exists() and path.stat().st_size > 100
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plots_write_png_files(tmp_path):
    history = [{"epoch": e, "loss": 2.0 / e, "test_accuracy": 0.5 + 0.1 * e,
                "probe_accuracy": 0.6 + 0.05 * e} for e in (1, 2, 3)]
    assert_png(plot_curves(history, tmp_path / "curves.png"))
    noisy = torch.tensor([False, True, True, False, False, False])
    rec = filled_recorder(noisy)
    assert_png(plot_curves(rec.window_curves(), tmp_path / "sub" / "recorder_curves.png"))
    assert_png(plot_lambda_curves(rec, noisy, tmp_path / "lambda.png"))
    assert_png(plot_weight_histogram(rec, None, tmp_path / "weights.png"))
    assert_png(plot_weight_histogram(filled_recorder(), None, tmp_path / "weights_all.png"))
    with pytest.raises(ValueError, match="accuracy"):
        plot_curves([{"epoch": 1, "lr": 0.1}], tmp_path / "z.png")
    with pytest.raises(ValueError, match="is_noisy"):
        plot_lambda_curves(filled_recorder(), noisy, tmp_path / "x.png")
    with pytest.raises(ValueError, match="omega"):
        plot_weight_histogram(StepRecorder(2), None, tmp_path / "y.png")


# ---------------------------------------------------------------------- with the real loop
def test_recorder_on_the_demo_loop():
    from iegkit.data import NoisyDataset, make_noisy_digits
    from iegkit.demo import train

    full = make_noisy_digits(0.8, 5, seed=0)
    n = 40
    data = NoisyDataset(full.train_inputs[:n], full.train_labels[:n],
                        full.train_clean_labels[:n], full.trusted_inputs, full.trusted_labels,
                        full.test_inputs[:50], full.test_labels[:50], full.num_classes)
    is_noisy = data.train_labels != data.train_clean_labels
    rec = StepRecorder(n, is_noisy=is_noisy)
    def flip(images, generator=None):  # a cheap strong view: kornia's chain is slow on CPU
        return images.flip(-1)

    train("ieg", data, epochs=2, batch_size=20, width=4, progress=False, on_step=rec.record,
          recipe_kwargs={"strong_augment": flip, "plain_strong_augment": flip})
    assert rec.steps_per_epoch == 2 and len(rec.window_curves()) == 2
    assert rec.has_weights and rec.has_relabel and rec.has_pseudo
    assert (rec.seen_count == 2).all()
    report = noisy_label_report(rec, data.train_labels, data.train_clean_labels)
    assert set(report.detection) == {"down-weighted", "relabeled"}
    assert 0.0 <= report.detection["relabeled"]["auc"] <= 1.0
    json.loads(report.to_json())


def test_epoch_axes_take_whole_numbers_and_legends_sit_beside_the_axes(monkeypatch, tmp_path):
    from matplotlib.ticker import MaxNLocator

    from iegkit.diagnostics import plots

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), save(fig, path))[1])
    history = [{"epoch": e, "loss": 1.0 / e, "test_accuracy": 0.2 * e} for e in (1, 2, 3)]
    plots.plot_curves(history, tmp_path / "curves.png")
    for ax in figures[0].axes:
        locator = ax.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer
        assert all(float(t).is_integer() for t in ax.get_xticks())
        anchor = ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted())
        assert anchor.x0 > 1.0  # right of the axes, never over a curve
