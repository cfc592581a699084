"""Robust IEG inside a Lightning module (manual optimisation), with the paper's SGDR schedule.

    python examples/lightning_ieg.py          # noisy digits, 80% noise, 10 trusted per class

Lightning keeps the loop; the module keeps iegkit's rule that the user calls backward and step:
``manual_backward(out.loss)`` and ``optimizer.step()``. The pipeline's optimizer hook (EMA teacher,
running class marginal) fires on the wrapped optimizer's step.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import iegkit
from iegkit.data import make_noisy_digits
from iegkit.models import SmallCNN
from iegkit.training import accuracy, default_augmentations


class IEGModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, trusted_inputs: torch.Tensor,
                 trusted_labels: torch.Tensor, *, steps_per_epoch: int, epochs: int,
                 lr: float = 0.1) -> None:
        super().__init__()
        self.automatic_optimization = False  # iegkit returns the loss; the step stays ours
        self.model = model
        self.probe = iegkit.ProbeSampler(trusted_inputs, trusted_labels, 100)
        self.weak, self.strong = default_augmentations(channels=trusted_inputs.shape[1],
                                                       size=trusted_inputs.shape[-1])
        self.steps_per_epoch, self.epochs, self.lr = steps_per_epoch, epochs, lr
        self.pipeline: iegkit.Pipeline | None = None

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9,
                               weight_decay=5e-4)

    def on_fit_start(self) -> None:
        optimizer = self.optimizers().optimizer  # the torch optimizer inside Lightning's wrapper
        self.pipeline = iegkit.recipes.robust_ieg(
            self.model, optimizer, total_steps=self.steps_per_epoch * self.epochs,
            strong_augment=self.strong, first_cycle_steps=self.steps_per_epoch)  # + SGDRSchedule

    def on_fit_end(self) -> None:
        self.pipeline.close()

    def training_step(self, batch, batch_idx):
        x, y = batch
        xp, yp = next(self.probe)
        out = self.pipeline(self.weak(x), y, self.weak(xp), yp, step=self.global_step)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(out.loss)
        optimizer.step()
        self.log_dict({"loss": out.loss.detach(),
                       "top_share": out.metrics["pseudo_labeler/top_share"]}, prog_bar=True)
        return out.loss.detach()


def main(epochs: int = 30, batch_size: int = 100) -> float:
    torch.manual_seed(0)
    data = make_noisy_digits(0.8, 10, seed=0)
    loader = DataLoader(TensorDataset(data.train_inputs, data.train_labels),
                        batch_size=batch_size, shuffle=True, drop_last=True)
    module = IEGModule(SmallCNN(1, 10), data.trusted_inputs, data.trusted_labels,
                       steps_per_epoch=len(loader), epochs=epochs)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, loader)
    # the weights to deploy: robust IEG's EMA teacher (evaluation_weights swaps them in and back)
    with iegkit.evaluation_weights(module.pipeline):
        test_accuracy = accuracy(module.model, data.test_inputs, data.test_labels)
    print(f"test accuracy {100 * test_accuracy:.1f}% (evaluation_weights: the EMA teacher, to "
          "deploy)")
    return test_accuracy


if __name__ == "__main__":
    main()
