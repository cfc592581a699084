"""tests/reference.py's transcription of the optimizers is itself checked against optimizer.step()."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import differentiable_update


@st.composite
def sgd_configs(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(lr=draw(st.sampled_from([0.01, 0.1, 0.3])), momentum=momentum,
                dampening=0.0 if nesterov else draw(st.sampled_from([0.0, 0.3])),
                nesterov=nesterov, weight_decay=draw(st.sampled_from([0.0, 5e-4, 0.1])),
                maximize=draw(st.booleans()))


@st.composite
def adam_configs(draw):
    return dict(lr=draw(st.sampled_from([1e-3, 0.05])),
                betas=(draw(st.sampled_from([0.0, 0.9])), draw(st.sampled_from([0.99, 0.999]))),
                weight_decay=draw(st.sampled_from([0.0, 0.01])), maximize=draw(st.booleans()))


def check_against_step(make_optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True),
              torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)]
    optimizer = make_optimizer(params)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        expected = [q.detach() for q in differentiable_update(optimizer, params, grads)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-14)


@settings(max_examples=30, deadline=None)
@given(sgd_configs(), st.integers(1, 3), st.integers(0, 2**16))
def test_sgd_transcription_matches_optimizer_step(config, steps, seed):
    check_against_step(lambda ps: torch.optim.SGD(ps, **config), steps, seed)


@settings(max_examples=20, deadline=None)
@given(adam_configs(), st.integers(1, 3), st.integers(0, 2**16), st.booleans())
def test_adam_and_adamw_transcriptions_match_optimizer_step(config, steps, seed, decoupled):
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    check_against_step(lambda ps: kind(ps, **config), steps, seed)
