"""IEG across processes with DistributedDataParallel (CPU/gloo here; nccl on GPUs).

    torchrun --nproc_per_node 2 examples/ddp_l2r.py

Each process trains on its own shard of the noisy digits and its own share of the probe batch;
the pipeline's look-ahead all-reduces its virtual and probe gradients, so every process takes the
step of one process on the concatenated batch (docs/distributed.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import iegkit
from iegkit.data import make_noisy_digits
from iegkit.models import SmallCNN


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    data = make_noisy_digits(0.8, 10, seed=0)
    model = torch.nn.parallel.DistributedDataParallel(SmallCNN(1, 10, width=16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    shard = torch.arange(rank, data.train_inputs.shape[0], world)
    batch = 50
    steps = 20 * (shard.numel() // batch)
    pipeline = iegkit.recipes.l2r(model, optimizer)
    probe = iegkit.ProbeSampler(data.trusted_inputs, data.trusted_labels, 100, seed=0)
    order = torch.Generator().manual_seed(rank)
    for step in range(steps):
        idx = shard[torch.randint(shard.numel(), (batch,), generator=order)]
        xp, yp = next(probe)
        xp, yp = xp[rank::world], yp[rank::world]  # each process its share of the probe batch
        out = pipeline(data.train_inputs[idx], data.train_labels[idx], xp, yp, step=step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    if rank == 0:  # the wrapped module: DDP's forward would wait for the other processes
        net = model.module.eval()
        with torch.no_grad():
            accuracy = (net(data.test_inputs).argmax(-1) == data.test_labels).float().mean()
        print(f"{world} processes, {steps} steps: test accuracy {100 * float(accuracy):.1f}%")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
