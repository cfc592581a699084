"""The math of the exact meta step without second-order backward (L2R / IEG meta-gradients).

Definitions (B training examples, C classes; IEG eq. 2-4, L2R eq. 6-10):

    t_i(lambda)   = lambda_i onehot(y_i) + (1 - lambda_i) q_i          (onehot(y_i) without relabeling)
    l_i(theta)    = CE(t_i, f(x_i; theta))                             (BatchNorm on batch statistics)
    theta'        = U(theta, sum_i omega_i grad l_i)                   (one step of the user's optimizer)
    L_p(theta')   = mean_j CE(onehot(y^p_j), f(x^p_j; theta'))

Because U is element-wise, d theta'/d g = D (diagonal), and the gradient of the weighted loss is
J^T (omega * r) with J the Jacobian of the batch logits and r_i = softmax(z_i) - t_i. Hence, with
tau = D * grad L_p(theta') and u = J tau (one forward-mode JVP of the batch logits):

    dL_p/d omega_i  = <u_i, softmax(z_i) - t_i>
    dL_p/d lambda_i = omega_i <u_i, q_i - onehot(y_i)>

This is exact, including train-mode BatchNorm (J is the Jacobian of the whole batch function).

This module holds that math on tensors: the initial point (``MetaInit``), the contractions of u
(``contract_meta_gradients``) and their result (``MetaGradients``). The passes that run the model
for tau and u (the JVP, its double-backward fallback where a layer has no forward-mode formula,
the compiled variant) and the look-ahead that chains them are ``iegkit.functional.meta_gradients``
and the modules behind it in ``iegkit._core``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from iegkit.functional.losses import mix_targets

__all__ = [
    "ONE_OVER_B",
    "BatchUniform",
    "InnerLoss",
    "MetaGradients",
    "MetaInit",
    "contract_meta_gradients",
    "logit_gradient",
]

#: A per-example training loss ``(logits (B, C), targets (B,)) -> (B,)`` whose weights are learned.
InnerLoss = Callable[[Tensor, Tensor], Tensor]


class BatchUniform(enum.Enum):
    """omega0 = 1/B with B the size of each step's training batch (IEG's uniform start, paper
    footnote 1): a value of its own because B is known only per step."""

    ONE_OVER_B = "1/B"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)


ONE_OVER_B = BatchUniform.ONE_OVER_B


@dataclass(frozen=True)
class MetaInit:
    """The point the meta-gradients are taken at: omega0 and lambda0 (None: no relabeling).

    omega0: a number, a (B,) tensor, or ``ONE_OVER_B``; lambda0: a number or a (B,) tensor. A
    pipeline resolves its parts' settings into one of these once, at compose time
    (``Plan.request_meta``); the look-ahead turns it into (B,) tensors each step.
    """

    omega0: float | Tensor | BatchUniform = 0.0
    lambda0: float | Tensor | None = None

    @property
    def relabeling(self) -> bool:
        return self.lambda0 is not None

    @property
    def starts_at_zero(self) -> bool:
        """omega0 = 0 as a number (L2R): the look-ahead's virtual gradient is 0, so it is skipped."""
        return isinstance(self.omega0, (int, float)) and float(self.omega0) == 0.0

    def weight_init(self, batch_size: int, like: Tensor) -> Tensor:
        """omega0 as a (B,) tensor of ``like``'s dtype and device."""
        value = 1.0 / batch_size if self.omega0 is ONE_OVER_B else self.omega0
        return _per_example("weight_init", value, batch_size, like)

    def label_init(self, batch_size: int, like: Tensor) -> Tensor | None:
        """lambda0 as a (B,) tensor of ``like``'s dtype and device, or None without relabeling."""
        if self.lambda0 is None:
            return None
        return _per_example("label_init", self.lambda0, batch_size, like)

    def __str__(self) -> str:
        return f"omega0={_short(self.omega0)}, lambda0={_short(self.lambda0)}"


def _short(value: object) -> str:
    if isinstance(value, Tensor):
        return f"per-example {tuple(value.shape)}" if value.dim() else f"{float(value):g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _per_example(name: str, value: float | Tensor, batch_size: int, like: Tensor) -> Tensor:
    """A scalar or (B,) initial value as a (B,) tensor, with a clear error otherwise."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.dim() == 0:
        return tensor.expand(batch_size).clone()
    if tensor.shape != (batch_size,):
        raise ValueError(
            f"{name}: expected a scalar or shape ({batch_size},), got {tuple(tensor.shape)}"
        )
    return tensor.clone()


@dataclass(frozen=True)
class MetaGradients:
    """dL_p/d omega (``weight``, shape (B,)) and dL_p/d lambda (``label``, (B,) or None).

    ``probe_loss`` is L_p(theta'), detached; ``used_fallback`` tells whether double backward was used.
    ``finite`` is False when the meta-gradients overflowed (float16 forwards): ``weight`` and
    ``label`` are then -1 everywhere, so the step falls back to uniform weights and kept labels.
    """

    weight: Tensor
    label: Tensor | None
    probe_loss: Tensor
    used_fallback: bool = False
    finite: bool = True


def contract_meta_gradients(
    logits: Tensor,
    logit_tangents: Tensor,
    targets: Tensor,
    *,
    weight_init: Tensor,
    label_init: Tensor | None = None,
    pseudo_targets: Tensor | None = None,
    pseudo_tangents: Tensor | None = None,
    inner_loss: InnerLoss | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Closed-form contractions of u = J tau (module docstring): (dL_p/d omega, dL_p/d lambda).

    ``inner_loss``: a per-example loss l_i(z_i, y_i) other than cross-entropy (GCE, SCE, ...):
    dL_p/d omega_i = <u_i, d l_i / d z_i>, the residual softmax(z_i) - t_i of cross-entropy replaced
    by the loss's own gradient in the logits (one autograd call on B x C values; no relabeling).

    ``pseudo_tangents`` = (J_q tau), the directional derivative of the pseudo labels q(theta) along
    tau, for the official variant whose look-ahead differentiates through q: it adds
    <J_q tau, -(1 - lambda_i) log p_i> to dL_p/d omega_i and omega_i <J_q tau, log p_i> to
    dL_p/d lambda_i (the q-path of d l_i / d theta along tau).
    """
    # Under autocast (bf16/fp16 forwards) the contraction still runs in float32: it is B x C, so
    # free, and it keeps the rounding to that of the logits and tangents themselves.
    compute = torch.promote_types(logits.dtype, torch.float32)
    logits, logit_tangents = logits.detach().to(compute), logit_tangents.to(compute)
    if pseudo_tangents is not None:
        pseudo_tangents = pseudo_tangents.to(compute)
    num_classes = logits.shape[-1]
    if inner_loss is not None:
        if label_init is not None:
            raise ValueError("inner_loss: a loss other than cross-entropy has no relabeling "
                             "meta-gradient; use it without label_init")
        return (logit_tangents * logit_gradient(inner_loss, logits, targets)).sum(dim=-1), None
    onehot = F.one_hot(targets, num_classes).to(logits.dtype)
    mixed = mix_targets(targets, num_classes, label_init,
                        None if pseudo_targets is None else pseudo_targets.detach().to(logits.dtype))
    residual = torch.softmax(logits, dim=-1) - mixed.to(logits.dtype)
    weight_grad = (logit_tangents * residual).sum(dim=-1)
    if label_init is None:
        return weight_grad, None
    label_grad = weight_init * (logit_tangents * (pseudo_targets.detach() - onehot)).sum(dim=-1)
    if pseudo_tangents is not None:
        log_p = torch.log_softmax(logits, dim=-1)
        along_q = (pseudo_tangents * log_p).sum(dim=-1)
        weight_grad = weight_grad - (1.0 - label_init) * along_q
        label_grad = label_grad + weight_init * along_q
    return weight_grad, label_grad


def logit_gradient(inner_loss: InnerLoss, logits: Tensor, targets: Tensor) -> Tensor:
    """d l_i / d z_i for every example (B, C): each loss depends on its own row of logits only, so
    the gradient of their sum is the per-example gradient."""
    with torch.enable_grad():
        z = logits.detach().requires_grad_(True)
        losses = inner_loss(z, targets)
        if losses.shape != targets.shape:
            raise ValueError(f"inner_loss: expected per-example losses of shape "
                             f"{tuple(targets.shape)}, got {tuple(losses.shape)}")
        return torch.autograd.grad(losses.sum(), z)[0]
