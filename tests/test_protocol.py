"""The part protocol: every part's contract, refining a key, build-time ordering, the step hook."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_problem

import iegkit
from iegkit import Contribution, PartBase, keys
from iegkit.errors import MissingProviderError, UnsupportedOptimizerError
from iegkit.functional.meta import ONE_OVER_B, MetaInit


def noise_augment(images, generator=None):
    return images + 0.1 * torch.randn(images.shape, generator=generator, dtype=images.dtype)


def labeler(**kwargs):
    return iegkit.ConsistencyPseudoLabeler(noise_augment, **kwargs)


#: each part of iegkit.parts (and WeightEMA), composed with what it needs (composer's
#: algorithm_settings pattern): name -> parts factory (given the optimizer)
SETTINGS = {
    "CrossEntropy": lambda opt: [iegkit.CrossEntropy()],
    "MetaReweighter": lambda opt: [iegkit.MetaReweighter()],
    "MetaRelabeler": lambda opt: [labeler(), iegkit.MetaRelabeler()],
    "ConsistencyPseudoLabeler": lambda opt: [labeler(), iegkit.KLConsistency()],
    "KLConsistency": lambda opt: [labeler(), iegkit.KLConsistency()],
    "ProbeMixUp": lambda opt: [labeler(), iegkit.ProbeMixUp()],
    "SGDRSchedule": lambda opt: [iegkit.SGDRSchedule(opt, 10), iegkit.MetaReweighter()],
    "LRWarmup": lambda opt: [iegkit.LRWarmup(3), iegkit.MetaReweighter()],
    "DistributionAlignment": lambda opt: [labeler(teacher_decay=0.9),
                                          iegkit.DistributionAlignment(), iegkit.ProbeMixUp()],
    "NoisyLabelPosterior": lambda opt: [labeler(teacher_decay=0.9), iegkit.DistributionAlignment(),
                                        iegkit.NoisyLabelPosterior(), iegkit.ProbeMixUp()],
    "ConfidenceMask": lambda opt: [labeler(), iegkit.ConfidenceMask(0.2), iegkit.KLConsistency()],
    "WeightEMA": lambda opt: [iegkit.CrossEntropy(), iegkit.WeightEMA(decay=0.9)],
    "TrustedGate": lambda opt: _gated(),
    "GeneralizedCrossEntropy": lambda opt: [iegkit.GeneralizedCrossEntropy()],
    "SymmetricCrossEntropy": lambda opt: [iegkit.SymmetricCrossEntropy()],
    "ForwardCorrection": lambda opt: [iegkit.ForwardCorrection("online", estimate_steps=1),
                                      iegkit.TrustedCrossEntropy()],
    "SmallLossSelection": lambda opt: [iegkit.SmallLossSelection(0.4, 1, rampup_epochs=1)],
    "TrustedCrossEntropy": lambda opt: [iegkit.CrossEntropy(), iegkit.TrustedCrossEntropy()],
    "StrongView": lambda opt: [iegkit.CrossEntropy(), iegkit.StrongView(lambda x, generator=None: x.flip(-1)),
                               iegkit.ProbeMixUp(1.0, targets="given")],
}


def _gated():
    _, _, _, holdout_x, holdout_y, _ = make_problem("cnn", batch=12)
    pseudo_labeler = labeler(teacher_decay=0.9)
    return [pseudo_labeler, iegkit.TrustedGate(holdout_x, holdout_y, every=1),
            iegkit.ProbeMixUp(), iegkit.KLConsistency()]


def test_every_part_has_a_contract_setting():
    assert set(iegkit.parts.__all__) | {"WeightEMA"} == set(SETTINGS)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_part_contract(name):
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    parts = SETTINGS[name](opt)
    pipeline = iegkit.compose(*parts, model=model, optimizer=opt)
    part = next(p for p in pipeline.parts if type(p).__name__ == name)
    assert isinstance(part, iegkit.Part)
    for _ in range(2):  # the second step sees the state the first step's hook left
        out = pipeline(x, y, xp, yp, step=0 if pipeline.last_step is None else 1)
        assert torch.isfinite(out.loss)
        assert all(count == 1 for count in out.forward_counts.values()), out.forward_counts
        assert out.lookahead_count <= 1
        for key in (*part.provides, *part.refines):
            assert key in out.values or key in (keys.PSEUDO_LABELER, keys.IMAGE_LABELER)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    state = copy.deepcopy(pipeline.state_dict())
    twin_model = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin_model.parameters(), lr=0.1, momentum=0.9)
    twin = iegkit.compose(*SETTINGS[name](twin_opt), model=twin_model, optimizer=twin_opt)
    twin.load_state_dict(state)
    assert _equal(twin.state_dict(), state)
    pipeline.close()


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


class Provider(PartBase):
    provides = ("k",)

    def __init__(self):
        self.name = "provider"

    def contribute(self, ctx):
        return Contribution(values={"k": torch.zeros(())},
                            losses={"loss": ctx.logits("input").square().mean()})


class Refiner(PartBase):
    refines = ("k",)

    def __init__(self, name, log):
        self.name, self.log = name, log

    def contribute(self, ctx):
        self.log.append((self.name, float(ctx.get("k"))))
        return Contribution(values={"k": ctx.get("k") * 10 + len(self.log)})


class Reader(PartBase):
    requires = ("k",)

    def __init__(self, log):
        self.name, self.log = "reader", log

    def contribute(self, ctx):
        self.log.append(("reader", float(ctx.get("k"))))
        return Contribution()


def test_refiners_run_after_the_provider_in_order_and_before_readers():
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    log: list = []
    pipeline = iegkit.compose(Reader(log), Refiner("second", log), Refiner("first", log),
                              Provider(), model=model, optimizer=opt)
    assert [p.name for p in pipeline.parts] == ["provider", "second", "first", "reader"]
    out = pipeline(x, y, step=0)
    # provider 0 -> second: 0*10+1 = 1 -> first: 1*10+2 = 12 -> reader sees 12
    assert log == [("second", 0.0), ("first", 1.0), ("reader", 12.0)]
    assert float(out.values["k"]) == 12.0
    assert "refines ['k']" in pipeline.describe()


def test_a_refiner_without_provider_fails_at_build_time():
    with pytest.raises(MissingProviderError, match="refines"):
        iegkit.compose(Refiner("r", []), iegkit.CrossEntropy())


def test_meta_parts_order_after_the_look_ahead_inputs():
    """The reweighter needs no pseudo labels itself, but it runs the look-ahead the relabeler
    shares, which reads them: compose orders it after the labeler (it used to fail at step 1)."""
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = iegkit.compose(iegkit.MetaReweighter(), labeler(), iegkit.MetaRelabeler(),
                              model=model, optimizer=opt)
    assert [p.name for p in pipeline.parts][0] == "pseudo_labeler"
    out = pipeline(x, y, xp, yp, step=0)
    assert out.weights is not None and out.relabel is not None
    with pytest.raises(MissingProviderError, match="targets:pseudo"):
        iegkit.compose(iegkit.MetaReweighter(), iegkit.MetaRelabeler())


def test_omega0_auto_and_refusals():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    alone = iegkit.compose(iegkit.MetaReweighter())
    assert alone.plan.meta.init == MetaInit(0.0, None)
    shared = iegkit.compose(labeler(), iegkit.MetaReweighter(label_mix=0.9), iegkit.MetaRelabeler())
    assert shared.plan.meta.init == MetaInit(ONE_OVER_B, 0.9)
    with pytest.raises(ValueError, match="weight_init: 0 with a relabeler"):
        iegkit.compose(labeler(), iegkit.MetaReweighter(0.0), iegkit.MetaRelabeler())
    with pytest.raises(ValueError, match="label_mix"):
        iegkit.compose(labeler(), iegkit.MetaReweighter(label_mix=0.5), iegkit.MetaRelabeler(0.9))


def test_unsupported_optimizer_is_refused_at_bind_time():
    model, *_ = make_problem("cnn")
    opt = torch.optim.RMSprop(model.parameters(), lr=0.1)
    with pytest.raises(UnsupportedOptimizerError, match="RMSprop"):
        iegkit.compose(iegkit.MetaReweighter(), model=model, optimizer=opt)
    iegkit.compose(iegkit.CrossEntropy(), model=model, optimizer=opt)  # no look-ahead: fine


def test_the_step_hook_updates_parts_close_removes_it_and_a_call_brings_it_back():
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = iegkit.WeightEMA(decay=0.5)
    reference = iegkit.WeightEMA(copy.deepcopy(model), decay=0.5)
    with iegkit.compose(iegkit.CrossEntropy(), ema, model=model, optimizer=opt) as pipeline:
        opt.step()  # before any pipeline step: the hook does nothing
        for step in range(3):
            out = pipeline(x, y, step=step)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            reference.model.load_state_dict(model.state_dict())
            reference.update(step)
            for name, value in reference.shadow.items():
                torch.testing.assert_close(ema.shadow[name], value)
    frozen = {n: v.clone() for n, v in ema.shadow.items()}
    opt.step()  # closed: a step without a pipeline call runs no after-step work
    assert all(torch.equal(ema.shadow[n], v) for n, v in frozen.items())
    out = pipeline(x, y, step=3)  # a call registers the hooks again (tests/test_hook_lifetime.py)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    assert any(not torch.equal(ema.shadow[n], v) for n, v in frozen.items())


def test_a_new_part_is_one_class_in_one_file():
    """Adding a part touches one file: this test defines one (a confidence-weighted CE) and composes it
    with the built-in parts, reading their keys; nothing else is registered anywhere."""

    class EntropyBonus(PartBase):
        requires = (keys.PSEUDO_TARGETS,)

        def __init__(self):
            self.name = "entropy_bonus"

        def contribute(self, ctx):
            target = ctx.get(keys.PSEUDO_TARGETS)
            loss = -(target * torch.log_softmax(ctx.logits("input"), -1)).sum(-1).mean()
            return Contribution(losses={"loss": 0.1 * loss})

    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.compose(EntropyBonus(), labeler(), iegkit.DistributionAlignment(),
                              iegkit.CrossEntropy(), model=model, optimizer=opt)
    assert [p.name for p in pipeline.parts][:3] == ["pseudo_labeler", "distribution_alignment",
                                                    "entropy_bonus"]
    out = pipeline(x, y, xp, yp, step=0)
    assert "entropy_bonus/loss" in out.losses


def test_objects_missing_protocol_members_are_named():
    class Half:
        name, requires, provides = "half", (), ()

        def contribute(self, ctx):
            return Contribution()

    with pytest.raises(TypeError, match="refines"):
        iegkit.compose(Half())


def test_precomputed_views_replace_the_part_view_function():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    calls = []

    def counting_augment(images, generator=None):
        calls.append(1)
        return noise_augment(images, generator)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.compose(iegkit.ConsistencyPseudoLabeler(counting_augment),
                              iegkit.KLConsistency(), model=model, optimizer=opt)
    strong = x.flip(-1)
    out = pipeline(x, y, xp, yp, step=0, views={"strong": strong})
    assert torch.equal(out.values[keys.STRONG_VIEW], strong)
    assert len(calls) == 1  # only the probe diagnostics augmented (with the part's own generator)
    with pytest.raises(ValueError, match="views: no part declares a view named 'weak'"):
        pipeline(x, y, xp, yp, step=0, views={"weak": x})
    with pytest.raises(ValueError, match=r"views\['strong'\]: expected a tensor of the inputs' shape"):
        pipeline(x, y, xp, yp, step=0, views={"strong": x[:3]})


def test_a_part_without_contribute_cannot_be_built():
    class Forgetful(PartBase):
        name = "forgetful"

    with pytest.raises(TypeError, match="contribute"):
        Forgetful()
