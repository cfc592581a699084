"""compose(): ordering by declared data, build errors, one look-ahead and one forward per view."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import make_problem, take_real_step

import iegkit
from iegkit import Contribution, compose
from iegkit.errors import CycleError, DuplicateProviderError, MissingProviderError
from iegkit.functional import meta_gradients, normalize_meta_weights, soft_cross_entropy


class Toy(iegkit.PartBase):
    """A minimal part: provides/requires/refines keys, contributes a loss from the 'input' logits."""

    def __init__(self, name, requires=(), provides=(), scale=1.0, refines=()):
        self.name, self.requires, self.provides, self.scale = name, tuple(requires), tuple(provides), scale
        self.refines = tuple(refines)
        self.calls = 0

    def contribute(self, ctx):
        self.calls += 1
        for key in self.requires:
            ctx.get(key)
        values = {k: torch.zeros(ctx.batch_size) for k in self.provides}
        values.update({k: ctx.get(k) + 1 for k in self.refines})
        return Contribution(values=values, losses={"loss": self.scale * ctx.logits("input").square().mean()})

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_orders_parts_by_declared_data():
    a = Toy("a", requires=["k2"], provides=["k3"])
    b = Toy("b", requires=["k1"], provides=["k2"])
    c = Toy("c", provides=["k1"])
    d = Toy("d")
    assert [p.name for p in compose(a, d, b, c).parts] == ["d", "c", "b", "a"]


def test_build_errors_are_clear():
    with pytest.raises(DuplicateProviderError, match="'k' is provided by both 'a' and 'b'"):
        compose(Toy("a", provides=["k"]), Toy("b", provides=["k"]))
    with pytest.raises(DuplicateProviderError, match="named 'a'"):
        compose(Toy("a"), Toy("a"))
    with pytest.raises(MissingProviderError, match="'a' requires \\['k'\\]"):
        compose(Toy("a", requires=["k"]))
    with pytest.raises(CycleError, match="cycle"):
        compose(Toy("a", requires=["y"], provides=["x"]), Toy("b", requires=["x"], provides=["y"]))
    with pytest.raises(TypeError, match="not a part"):
        compose(object())
    with pytest.raises(ValueError, match="both model and optimizer"):
        compose(Toy("a"), model=torch.nn.Linear(2, 2))


def test_order_of_independent_parts_does_not_change_the_loss():
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = compose(iegkit.MetaReweighter(), Toy("toy", scale=0.3), iegkit.CrossEntropy())
    second = compose(iegkit.CrossEntropy(), Toy("toy", scale=0.3), iegkit.MetaReweighter())
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    out1 = first.bind(m1, torch.optim.SGD(m1.parameters(), lr=0.1, momentum=0.9))(x, y, xp, yp, step=0)
    out2 = second.bind(m2, torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9))(x, y, xp, yp, step=0)
    assert torch.equal(out1.loss, out2.loss)
    assert sorted(out1.losses) == ["cross_entropy/loss", "meta_reweighter/loss", "toy/loss"]
    del opt


@pytest.mark.parametrize("weight_init", [0.0, "1/B"])
def test_l2r_pipeline_matches_functional_meta_step(weight_init):
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    take_real_step(model, opt, x, y)
    shadow = copy.deepcopy(model)
    shadow_opt = torch.optim.SGD(shadow.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    shadow_opt.load_state_dict(opt.state_dict())
    w0 = 1.0 / x.shape[0] if weight_init == "1/B" else 0.0
    expected = normalize_meta_weights(meta_gradients(shadow, shadow_opt, x, y, xp, yp, weight_init=w0).weight)

    pipeline = iegkit.recipes.l2r(model, opt, weight_init=weight_init)
    out = pipeline(x, y, xp, yp, step=1)
    torch.testing.assert_close(out.weights, expected, rtol=1e-10, atol=1e-14)
    assert out.forward_counts == {"input": 1}
    assert out.lookahead_count == 1
    # the gradient the user backpropagates is that of sum_i omega*_i CE(y_i), from the real forward
    opt.zero_grad()
    out.loss.backward()
    shadow_opt.zero_grad()
    (expected * soft_cross_entropy(shadow(x), torch.nn.functional.one_hot(y, 3).double())).sum().backward()
    for p, q in zip(model.parameters(), shadow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14)
    # ... and BatchNorm statistics moved exactly once, as in a plain forward
    for (name, b), q in zip(model.named_buffers(), shadow.buffers()):
        torch.testing.assert_close(b, q, rtol=0, atol=1e-15, msg=name)


def test_pipeline_state_dict_round_trip():
    pipeline = compose(Toy("a"), iegkit.MetaReweighter())
    pipeline.parts[0].calls = 5
    torch.rand(3, generator=pipeline.generators["a"])
    state = pipeline.state_dict()
    other = compose(Toy("a"), iegkit.MetaReweighter(), seed=1)
    other.load_state_dict(state)
    assert other.parts[0].calls == 5
    assert torch.equal(torch.rand(3, generator=other.generators["a"]),
                       torch.rand(3, generator=pipeline.generators["a"]))
    with pytest.raises(ValueError, match="parts differ"):
        compose(Toy("b")).load_state_dict(state)
    with pytest.raises(ValueError, match="format_version"):
        other.load_state_dict({**state, "format_version": 99})


def test_describe_lists_parts_and_passes():
    text = iegkit.recipes.l2r(*_model_and_opt()).describe()
    assert "meta_reweighter (MetaReweighter)" in text and "look-ahead" in text


def _model_and_opt():
    model, *_ = make_problem("mlp")
    return model, torch.optim.SGD(model.parameters(), lr=0.1)
