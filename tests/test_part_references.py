"""Each part's loss against a reference written out here from the paper and the official code, with
torch primitives only (no iegkit helper), on one IEG step in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_problem

import iegkit
from iegkit import recipes


def flip_view(images, generator=None):  # a deterministic strong view: no draws
    return images.flip(-1) * 0.9


def onehot(labels, classes):
    return torch.eye(classes, dtype=torch.float64)[labels]


def ce(logits, target):
    return -(target * torch.log_softmax(logits, -1)).sum(-1)


def rms_normalised(z):  # the official logit_norm: one RMS over the whole chunk
    return z / torch.sqrt(z.square().mean() + 1e-8)


def sharpen_half(p):
    return p.square() / p.square().sum(-1, keepdim=True)


def forward_train(model, inputs):
    clone = copy.deepcopy(model)
    clone.train()
    return clone(inputs)


@pytest.fixture
def ieg_step():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=10, probe=6)
    start = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pipeline = recipes.ieg(model, opt, strong_augment=flip_view, plain_strong_augment=flip_view)
    mix_state = pipeline.generators["probe_mixup"].get_state()
    out = pipeline(x, y, xp, yp, step=0)
    return start, model, (x, y, xp, yp), out, mix_state


def test_pseudo_labels_are_the_sharpened_mean_of_normalised_views(ieg_step):
    start, _, (x, y, xp, yp), out, _ = ieg_step
    weak, strong = forward_train(start, x), forward_train(start, flip_view(x))
    mean = (torch.softmax(rms_normalised(weak), -1) + torch.softmax(rms_normalised(strong), -1)) / 2
    torch.testing.assert_close(out.values[iegkit.keys.PSEUDO_TARGETS], sharpen_half(mean))


def test_supervised_terms_follow_the_official_targets(ieg_step):
    start, _, (x, y, xp, yp), out, _ = ieg_step
    weak = forward_train(start, x)
    g = out.values[iegkit.keys.PSEUDO_TARGETS]
    omega, lam = out.weights, out.relabel
    y1 = onehot(y, 3)
    # L_omega* = sum_i omega*_i CE(0.9 y_i + 0.1 g_i, z_i), times the official 1/2
    expected_w = 0.5 * (omega * ce(weak, 0.9 * y1 + 0.1 * g)).sum()
    # L_lambda* = (1/B) sum_i CE(lambda*_i y_i + (1 - lambda*_i) g_i, z_i), times 1/2
    expected_l = 0.5 * ce(weak, lam[:, None] * y1 + (1 - lam[:, None]) * g).mean()
    torch.testing.assert_close(out.losses["meta_reweighter/loss"], expected_w)
    torch.testing.assert_close(out.losses["meta_relabeler/loss"], expected_l)
    assert set(lam.tolist()) <= {0.0, 1.0}
    assert float(omega.min()) >= 0 and float(omega.sum()) <= 1


def test_probe_mixup_chunks_and_normalisation(ieg_step):
    start, _, (x, y, xp, yp), out, mix_state = ieg_step
    g = out.values[iegkit.keys.PSEUDO_TARGETS]
    b = x.shape[0]
    gen = torch.Generator()
    gen.set_state(mix_state)
    idx = torch.randint(0, xp.shape[0], (b,), generator=gen)  # probe resampled to B
    m = 1 - torch.rand(3 * b, generator=gen, dtype=torch.float64).square() / 2
    perm = torch.randperm(3 * b, generator=gen)
    pool_x = torch.cat([xp[idx], x, flip_view(x)])
    pool_t = torch.cat([onehot(yp[idx], 3), g, g])
    mixed_x = m[:, None, None, None] * pool_x + (1 - m[:, None, None, None]) * pool_x[perm]
    mixed_t = m[:, None] * pool_t + (1 - m[:, None]) * pool_t[perm]
    logits = forward_train(start, mixed_x)
    chunks = [rms_normalised(c) for c in logits.split(b)]
    probe = ce(chunks[0], mixed_t[:b]).mean()
    unlabeled = ce(torch.cat(chunks[1:]), mixed_t[b:]).mean()
    torch.testing.assert_close(out.losses["probe_mixup/probe"], probe)
    torch.testing.assert_close(out.losses["probe_mixup/unlabeled"], 5.0 * unlabeled)


def test_kl_is_weak_to_strong_with_gradient_through_strong_only(ieg_step):
    start, model, (x, y, xp, yp), out, _ = ieg_step
    weak, strong = forward_train(start, x), forward_train(start, flip_view(x))
    p = torch.softmax(weak, -1)
    expected = 20.0 * (p * (torch.log(p) - torch.log_softmax(strong, -1))).sum(-1).mean()
    torch.testing.assert_close(out.losses["kl_consistency/loss"], expected)
    # KL(p || q) is not symmetric: the reversed direction gives another value here
    reverse = 20.0 * (torch.softmax(strong, -1) * (torch.log_softmax(strong, -1)
                                                   - torch.log(p))).sum(-1).mean()
    assert not torch.isclose(reverse, expected)


def test_only_the_training_batch_moves_the_batchnorm_statistics(ieg_step):
    start, model, (x, y, xp, yp), out, _ = ieg_step
    reference = copy.deepcopy(start)
    reference.train()
    reference(x)  # one train-mode forward of the weak batch, nothing else
    for (name, got), (_, expected) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(got, expected, msg=name)


def test_total_is_the_sum_of_the_terms(ieg_step):
    *_, out = ieg_step[:4]
    torch.testing.assert_close(out.loss, sum(out.losses.values()))
