"""The look-ahead's collectives without spawning processes (found by mutation testing,
docs/mutation.md; tests/test_distributed.py runs the real 2-process gloo check, which the mutation
run leaves out for time).

Two ranks with identical batches are simulated in one process: torch's "fake" process group gives
a world of 2, and all_reduce(SUM) doubles the local tensor, as a second identical rank would. Then
DDP's averaged gradients are the single-process ones, so the meta-gradients must equal those of one
process, and the globally normalised weights must sum to 1/2 on each rank (1 over both batches),
while per-rank weights are the single-process weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from conftest import make_problem

import iegkit
from iegkit.functional import distributed
from iegkit.functional import meta as meta_module


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


def test_collectives_average_and_sum_over_ranks(two_identical_ranks):
    group, _ = two_identical_ranks
    assert distributed.world_size(group) == 2 and distributed.world_size(None) == 1
    a = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    b = torch.tensor([5.0, -1.0], dtype=torch.float64)
    mean_a, mean_b = distributed.all_reduce_mean([a, b], group)
    assert mean_a.shape == a.shape and mean_b.shape == b.shape
    torch.testing.assert_close(mean_a, a, rtol=0, atol=0)
    torch.testing.assert_close(mean_b, b, rtol=0, atol=0)
    assert distributed.all_reduce_mean([], group) == []
    value = torch.tensor(1.5, dtype=torch.float64)
    torch.testing.assert_close(distributed.all_reduce_sum(value, group),
                               torch.tensor(3.0, dtype=torch.float64))
    assert float(value) == 1.5  # the caller's tensor is left alone
    torch.testing.assert_close(distributed.all_reduce_sum(value, None), value)


def _step(model_wrap, normalize, shrinkage=0.0):
    model, x, y, xp, yp, _ = make_problem("mlp")
    wrapped = model_wrap(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    parts = [iegkit.MetaReweighter(normalize=normalize, normalizer_eps=0.0, shrinkage=shrinkage)]
    pipeline = iegkit.compose(*parts, model=wrapped, optimizer=optimizer)
    out = pipeline(x, y, xp, yp, step=0)
    pipeline.close()
    return out


def test_ddp_look_ahead_and_weight_normalisation(two_identical_ranks):
    single = _step(lambda m: m, "global")
    ddp = torch.nn.parallel.DistributedDataParallel
    global_out, per_rank = _step(ddp, "global"), _step(ddp, "per_rank")
    torch.testing.assert_close(global_out.metrics["meta_reweighter/probe_loss"],
                               single.metrics["meta_reweighter/probe_loss"])
    torch.testing.assert_close(per_rank.weights, single.weights, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(global_out.weights, single.weights / 2, rtol=1e-12, atol=1e-15)
    assert float(global_out.weights.sum()) == pytest.approx(0.5)
    # the loss is scaled by the world size, so that DDP's gradient average is the gradient of
    # sum_i omega*_i l_i over both batches: here the single-process loss
    torch.testing.assert_close(global_out.losses["meta_reweighter/loss"],
                               single.losses["meta_reweighter/loss"], rtol=1e-12, atol=1e-15)


def test_shrinkage_pulls_toward_one_over_the_global_batch(two_identical_ranks):
    """Globally normalised weights sum to 1 over both ranks, so their uniform point is 1 / (2B):
    with identical ranks the shrunk weights are the single-process shrunk weights halved."""
    single = _step(lambda m: m, "global", shrinkage=0.5)
    ddp = _step(torch.nn.parallel.DistributedDataParallel, "global", shrinkage=0.5)
    torch.testing.assert_close(ddp.weights, single.weights / 2, rtol=1e-12, atol=1e-15)
    assert float(ddp.weights.sum()) == pytest.approx(0.5)


def test_the_look_ahead_averages_its_gradients_over_the_ranks(two_identical_ranks):
    """If the other rank contributes zero gradients, the averaged virtual gradient is that of
    omega0 / 2 and the averaged probe gradient is halved: dL_p/d omega is half the single-process
    one at omega0 / 2, and dL_p/d lambda (which carries omega0) equals it."""
    group, other_rank = two_identical_ranks
    other_rank["factor"] = 1
    model, x, y, xp, yp, q = make_problem("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def look_ahead(omega0, process_group):
        return meta_module.lookahead_meta_gradients(
            model, opt, x, y, xp, yp, weight_init=torch.full((8,), omega0, dtype=x.dtype),
            label_init=torch.full((8,), 0.9, dtype=x.dtype), pseudo_targets=q,
            process_group=process_group)

    ddp, single = look_ahead(0.25, group), look_ahead(0.125, None)
    torch.testing.assert_close(ddp.weight, single.weight / 2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ddp.label, single.label, rtol=1e-12, atol=1e-15)


def test_a_sub_group_counts_its_own_processes(two_identical_ranks):
    """A pipeline on a sub-group of one process (of a world of two) reduces over that group only:
    its size is 1, so nothing is averaged or summed."""
    sub = dist.new_group([0])
    assert distributed.world_size(sub) == 1
    a = torch.arange(4, dtype=torch.float64)
    (mean,) = distributed.all_reduce_mean([a], sub)
    torch.testing.assert_close(mean, a, rtol=0, atol=0)
    torch.testing.assert_close(distributed.all_reduce_sum(a.sum(), sub), a.sum(), rtol=0, atol=0)
