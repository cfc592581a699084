"""The Lightning example (manual optimisation, robust IEG, SGDR) fits when lightning is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="lightning is not installed (optional: pip install lightning)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def test_one_short_fit():
    import lightning as L
    from lightning_ieg import IEGModule
    from torch.utils.data import DataLoader, TensorDataset

    from iegkit.data import make_noisy_digits
    from iegkit.models import SmallCNN

    torch.manual_seed(0)
    data = make_noisy_digits(0.8, 10, seed=0)
    loader = DataLoader(TensorDataset(data.train_inputs[:400], data.train_labels[:400]),
                        batch_size=50, shuffle=True, drop_last=True)
    module = IEGModule(SmallCNN(1, 10, width=8), data.trusted_inputs, data.trusted_labels,
                       steps_per_epoch=len(loader), epochs=2)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    initial = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer.fit(module, loader)
    assert trainer.global_step == 2 * len(loader)
    assert module.pipeline.last_step == 2 * len(loader) - 1
    # the EMA teacher moved away from the initial weights: the optimizer hook fired under Lightning
    teacher = module.pipeline.parts[0].teacher
    assert teacher is not None
    assert all(not torch.equal(teacher.shadow[n], initial[n]) for n in teacher.shadow)
    assert "sgdr_schedule" in [p.name for p in module.pipeline.parts]
    assert module.pipeline._hook is None  # closed at the end of fit
