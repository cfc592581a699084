"""The loss stage: a part provides its decisions (weights, lambda) and the loss that spends them is
assembled after every refiner of them has run, so refining them changes the loss; a key its
provider already used within its own step cannot be refined, and compose says so at build time."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_problem

import iegkit
from iegkit import keys
from iegkit.errors import CompositionError, MissingProviderError


class DropHighestLoss(iegkit.PartBase):
    """Written outside iegkit: zero the weights of the k examples with the highest loss."""

    refines = ("weights",)
    requires = ("losses:reweighted",)

    def __init__(self, k: int) -> None:
        self.name, self.k = "drop_highest_loss", k

    def contribute(self, ctx):
        highest = ctx.get("losses:reweighted").detach().topk(self.k).indices
        weights = ctx.get("weights").clone()
        weights[highest] = 0.0
        return iegkit.Contribution(values={"weights": weights})


def _problem(seed: int = 0):
    model, x, y, xp, yp, _ = make_problem("mlp", batch=12, seed=seed)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), (x, y, xp, yp)


def _step(*parts, seed: int = 0):
    """One step on a fresh copy of the same problem: the output, the model (with its gradients)
    and the batch."""
    model, opt, batch = _problem(seed)
    out = iegkit.compose(*parts, model=model, optimizer=opt)(*batch, step=0)
    out.loss.backward()
    return out, model, batch


def test_a_weights_refiner_changes_the_loss_as_computed_by_hand():
    k, loss_weight = 3, 0.5  # seed 1: the three highest-loss examples have weight (7 non-zero)
    plain, _, _ = _step(iegkit.MetaReweighter("1/B", loss_weight=loss_weight), seed=1)
    out, model, (x, y, _, _) = _step(iegkit.MetaReweighter("1/B", loss_weight=loss_weight),
                                     DropHighestLoss(k), seed=1)
    losses = plain.values[keys.REWEIGHTED_LOSSES]
    highest = losses.topk(k).indices
    assert bool((plain.weights[highest] > 0).all()), "the dropped examples must have had weight"
    weights = plain.weights.clone()
    weights[highest] = 0.0
    assert torch.equal(out.weights, weights)
    assert int((out.weights > 0).sum()) == int((plain.weights > 0).sum()) - k
    expected = loss_weight * (weights * losses).sum()
    assert torch.equal(out.loss, expected)
    assert not torch.equal(out.loss, plain.loss)
    # ... and the gradient is that of the refined loss (a fresh forward of the same model)
    twin = copy.deepcopy(model)
    twin.zero_grad()
    (loss_weight * (weights * F.cross_entropy(twin(x), y, reduction="none")).sum()).backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15)


class KeepGivenLabels(iegkit.PartBase):
    """Written outside iegkit: keep every given label (lambda = 1)."""

    refines = ("relabel",)

    def __init__(self) -> None:
        self.name = "keep_given_labels"

    def contribute(self, ctx):
        return iegkit.Contribution(values={"relabel": torch.ones_like(ctx.get("relabel"))})


def test_a_relabel_refiner_changes_the_targets_the_loss_uses():
    def labeler():
        return iegkit.ConsistencyPseudoLabeler(lambda images, generator=None: images.flip(-1),
                                               probe_diagnostics_every=None)

    plain, _, _ = _step(labeler(), iegkit.MetaRelabeler())
    out, _, (_, y, _, _) = _step(labeler(), iegkit.MetaRelabeler(), KeepGivenLabels())
    assert bool((plain.relabel < 1).any()), "some label must have been replaced to test anything"
    onehot = F.one_hot(y, out.logits.shape[-1]).to(out.logits.dtype)
    expected = -(onehot * out.logits.log_softmax(-1)).sum(-1).mean()
    assert torch.equal(out.losses["meta_relabeler/loss"], expected)
    assert not torch.equal(out.losses["meta_relabeler/loss"], plain.losses["meta_relabeler/loss"])


class Refines(iegkit.PartBase):
    def __init__(self, key: str) -> None:
        self.name, self.refines = f"refines_{key}", (key,)

    def contribute(self, ctx):
        return iegkit.Contribution(values={self.refines[0]: ctx.get(self.refines[0])})


def _opt():
    model, *_ = make_problem("mlp")
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("provider, key", [
    (lambda: iegkit.SGDRSchedule(_opt(), 10), keys.LR),
    (lambda: iegkit.LRWarmup(5), keys.LR_SCALE),
    (lambda: iegkit.StrongView(lambda images, generator=None: images), keys.STRONG_VIEW),
    (lambda: iegkit.ConsistencyPseudoLabeler(lambda images, generator=None: images),
     keys.STRONG_VIEW),
])
def test_compose_refuses_a_refiner_of_a_key_its_provider_already_used(provider, key):
    with pytest.raises(CompositionError, match=f"refines '{key}'.*already uses"):
        iegkit.compose(provider(), Refines(key), iegkit.CrossEntropy())


def test_an_out_of_tree_provider_declares_what_cannot_be_refined():
    class SetsTemperature(iegkit.PartBase):
        name, provides, not_refinable = "sets_temperature", ("temperature",), ("temperature",)

        def contribute(self, ctx):
            return iegkit.Contribution(values={"temperature": torch.tensor(1.0)})

    with pytest.raises(CompositionError, match="'sets_temperature' already uses 'temperature'"):
        iegkit.compose(SetsTemperature(), Refines("temperature"), iegkit.CrossEntropy())


def test_staged_loss_declarations_are_checked():
    class Stages(iegkit.PartBase):
        name, loss_reads = "stages", ("nowhere",)

        def contribute(self, ctx):
            return iegkit.Contribution()

    with pytest.raises(MissingProviderError, match="'stages' has a loss that reads"):
        iegkit.compose(Stages())

    class ReadsUndeclared(iegkit.PartBase):
        name, provides = "reads_undeclared", ("k",)

        def contribute(self, ctx):
            logits = ctx.logits("input")
            return iegkit.Contribution(values={"k": logits.detach()}, staged_losses={
                "loss": iegkit.StagedLoss(("k",), lambda k: logits.mean())})

    model, opt, batch = _problem()
    pipeline = iegkit.compose(ReadsUndeclared(), model=model, optimizer=opt)
    with pytest.raises(ValueError, match="loss_reads"):
        pipeline(*batch[:2], step=0)


def test_describe_shows_the_loss_stage():
    model, opt, _ = _problem()
    text = iegkit.recipes.l2r(model, opt).describe()
    assert ("loss stage (after every part, so refiners of these keys change the loss): "
            "meta_reweighter reads ['weights', 'losses:reweighted']") in text
    assert text.index("loss stage") < text.index("backward of the total loss")
