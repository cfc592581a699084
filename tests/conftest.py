from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import HealthCheck, settings
from torch import nn

# No test may depend on machine load: no hypothesis deadline anywhere (a test that sets its own
# settings inherits this), and no health check that times data generation.
settings.register_profile("iegkit", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("iegkit")

sys.path.insert(0, str(Path(__file__).parent))


class TinyMLP(nn.Module):
    """Linear-BN-ReLU-Linear: cross-example coupling through train-mode BatchNorm."""

    def __init__(self, features: int = 6, classes: int = 4, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Conv2d(4, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(4 * 2 * 2, classes))

    def forward(self, x):
        return self.net(x)


def make_problem(kind: str, *, batch: int = 8, probe: int = 5, seed: int = 0,
                 dtype=torch.float64):
    """A model and a random batch/probe batch, in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "mlp":
        model, shape, classes = TinyMLP(), (6,), 4
    else:
        model, shape, classes = TinyCNN(), (1, 8, 8), 3
    model = model.to(dtype)
    x = torch.randn(batch, *shape, generator=gen, dtype=dtype)
    y = torch.randint(0, classes, (batch,), generator=gen)
    xp = torch.randn(probe, *shape, generator=gen, dtype=dtype)
    yp = torch.randint(0, classes, (probe,), generator=gen)
    q = torch.softmax(torch.randn(batch, classes, generator=gen, dtype=dtype), -1)
    return model, x, y, xp, yp, q


def take_real_step(model, optimizer, x, y):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.fixture
def problem():
    return make_problem


def stepped_copy(model, optimizer, grads):
    """The parameters ``optimizer.step()`` would give ``model`` for ``grads``, on a deep copy (the
    reference the virtual step is checked against; the original is untouched)."""
    import copy

    shadow = copy.deepcopy(model)
    # load_state_dict restores every hyper-parameter of every group, so lr alone builds it
    shadow_opt = type(optimizer)(shadow.parameters(), lr=optimizer.defaults["lr"])
    shadow_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for p, g in zip(shadow.parameters(), grads):
        p.grad = g.clone()
    shadow_opt.step()
    return [p.detach() for p in shadow.parameters()]


class SquareNoJvp(torch.autograd.Function):
    """x**2 with a backward (itself differentiable) but no jvp(): forward-mode AD cannot pass it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class Square(nn.Module):
    def forward(self, x):
        return SquareNoJvp.apply(x)


def ieg_meta_reference(shadow, x, y, xp, yp, pseudo):
    """The functional meta step at IEG's initial point (omega0 = 1/B, lambda0 = 0.9), on ``shadow``
    (a copy of the model taken before the pipeline ran) with SGD lr 0.1, momentum 0.9."""
    from iegkit.functional import meta_gradients

    optimizer = torch.optim.SGD(shadow.parameters(), lr=0.1, momentum=0.9)
    return meta_gradients(shadow, optimizer, x, y, xp, yp, weight_init=1 / x.shape[0],
                          label_init=0.9, pseudo_targets=pseudo)


def flip(images, generator=None):
    """A cheap strong view for training tests: kornia's chain is slow on CPU."""
    return images.flip(-1)


def weak(images, generator=None):
    """A cheap weak view for training tests."""
    return images + 0.05 * torch.randn(images.shape, generator=generator)


def tiny_noisy_digits():
    """60 training images of digits at 80% noise, 5 trusted per class, 40 test images."""
    from iegkit.data import NoisyDataset, make_noisy_digits

    full = make_noisy_digits(0.8, 5, seed=0)
    n = 60
    return NoisyDataset(full.train_inputs[:n], full.train_labels[:n], full.train_clean_labels[:n],
                        full.trusted_inputs, full.trusted_labels, full.test_inputs[:40],
                        full.test_labels[:40], full.num_classes)


def assert_same(a, b):
    """Equal bit for bit, dtype included, through nested dicts, lists and tuples (what a failed
    call must leave unchanged)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


# A fake process group of two identical ranks (tests/test_distributed.py says how it works).
@pytest.fixture
def two_identical_ranks(monkeypatch):
    fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group of the caller")

    def all_reduce_sum_of_two(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        assert op == dist.ReduceOp.SUM
        assert group is dist.group.WORLD, "the collective runs over the pipeline's group"
        tensor.mul_(other_rank["factor"])

    other_rank = {"factor": 2}  # 2: the other rank holds the same tensor; 1: it holds zeros

    dist.init_process_group("fake", store=fake_pg.FakeStore(), rank=0, world_size=2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce_sum_of_two)
    try:
        yield dist.group.WORLD, other_rank
    finally:
        dist.destroy_process_group()


def lookahead_through_two_views(model, x, y, xp, yp, weight_init, options):
    """One look-ahead through pseudo labels averaged over the batch and its flipped view (the
    graph a look-ahead through the pseudo labels differentiates)."""
    from iegkit._core.meta_step import (
        MetaBatch,
        PseudoLabelGraph,
        lookahead_meta_gradients,
    )
    from iegkit.functional.meta import MetaInit

    view = x.flip(-1)
    logits, view_logits = model(x), model(view)
    graph = PseudoLabelGraph(lambda a, b: torch.softmax((a + b) / 2, -1),
                             [(None, lambda: logits), (view, lambda: view_logits)])
    q = graph.fn(logits, view_logits).detach()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp, q),
                                    MetaInit(weight_init, 0.9), training_logits=lambda: logits,
                                    pseudo_graph=graph, options=options)
