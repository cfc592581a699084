"""The virtual ("look-ahead") step: one update of the user's own optimizer, computed functionally.

The look-ahead parameters are theta' = U(theta, g; optimizer state), where U is the update rule of the
user's optimizer read from its live ``param_groups`` and ``state`` (learning rate, momentum buffer,
dampening, Nesterov, weight decay, Adam moments and step count). The optimizer itself is never stepped.

For every element-wise optimizer the Jacobian of U with respect to the gradient is diagonal,
D = d theta' / d g, so the meta-gradient along any direction v is <D * v, d g / d omega>
(``docs/method.md``, "Exact meta-gradient"). ``virtual_step`` returns theta' and D together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from iegkit.errors import UnsupportedOptimizerError

__all__ = ["VirtualStep", "check_lookahead_optimizer", "trainable_parameters", "virtual_step"]


@dataclass(frozen=True)
class VirtualStep:
    """theta' and the diagonal Jacobian D = d theta'/d g for each trainable parameter.

    ``scale[k]`` broadcasts against ``params[k]`` (a 0-d tensor for SGD, a full tensor for Adam).
    """

    params: list[Tensor]
    scale: list[Tensor]


def trainable_parameters(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> list[tuple[str, Tensor, dict]]:
    """(name, parameter, param_group) for every parameter the optimizer would update.

    A parameter the optimizer does not hold, or one with ``requires_grad=False``, is frozen: it keeps
    its value in the look-ahead.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    found = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not p.requires_grad:
                continue
            if id(p) not in names:
                raise ValueError(
                    "optimizer: holds a parameter that is not a parameter of model; pass the "
                    "model whose parameters the optimizer updates"
                )
            found.append((names[id(p)], p, group))
    if not found:
        raise ValueError("optimizer: holds no trainable parameter of model")
    return found


def _check_supported(optimizer: torch.optim.Optimizer) -> str:
    if type(optimizer) is torch.optim.SGD:
        return "sgd"
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        for group in optimizer.param_groups:
            if group.get("amsgrad", False):
                raise UnsupportedOptimizerError(
                    "optimizer: Adam/AdamW with amsgrad=True is not supported by the exact "
                    "look-ahead (its max() has no derivative at ties); use amsgrad=False"
                )
        return "adam"
    raise UnsupportedOptimizerError(
        f"optimizer: {type(optimizer).__name__} is not supported by the exact look-ahead; "
        "supported: torch.optim.SGD (any momentum, dampening, nesterov, weight_decay), "
        "torch.optim.Adam and torch.optim.AdamW (amsgrad=False)"
    )


def check_lookahead_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Raise ``UnsupportedOptimizerError`` now (at bind time) for an optimizer the look-ahead cannot
    model, instead of after the first step's forwards."""
    _check_supported(optimizer)


def _as_float(x) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def virtual_step(
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    grads: list[Tensor],
    groups: list[dict],
    *,
    lr: float | None = None,
) -> VirtualStep:
    """One update of ``optimizer``'s rule applied to ``grads``, without touching the optimizer.

    Args:
      optimizer: the user's optimizer; its state is read, never written.
      params: the trainable parameters (as held by ``optimizer``), each detached on return.
      grads: the gradient for each parameter (zeros where it has none).
      groups: the param_group of each parameter.
      lr: overrides each group's learning rate (the official IEG code uses a fixed 0.1).

    Returns:
      theta' and D = d theta'/d g, equal to what ``optimizer.step()`` would compute.
    """
    kind = _check_supported(optimizer)
    new_params: list[Tensor] = []
    scales: list[Tensor] = []
    with torch.no_grad():
        for p, g, group in zip(params, grads, groups):
            state = optimizer.state.get(p, {})
            step_lr = _as_float(group["lr"]) if lr is None else float(lr)
            if kind == "sgd":
                new_p, scale = _sgd(p, g, group, state, step_lr)
            else:
                decoupled = group.get(
                    "decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)
                )
                new_p, scale = _adam(p, g, group, state, step_lr, decoupled)
            new_params.append(new_p)
            scales.append(scale)
    return VirtualStep(new_params, scales)


def _sgd(p: Tensor, g: Tensor, group: dict, state: dict, lr: float) -> tuple[Tensor, Tensor]:
    # Mirrors torch.optim.SGD (single-tensor path): d_p = +-g + wd p; buf = mu buf + (1 - damp) d_p,
    # or buf = d_p on the first step; step direction buf, or d_p + mu buf with Nesterov.
    sign = -1.0 if group.get("maximize", False) else 1.0
    wd = group["weight_decay"]
    momentum = group["momentum"]
    d_p = sign * g
    if wd != 0:
        d_p = d_p + wd * p
    coeff = 1.0
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = d_p
            buf_coeff = 1.0
        else:
            buf = momentum * buf + (1.0 - group["dampening"]) * d_p
            buf_coeff = 1.0 - group["dampening"]
        if group["nesterov"]:
            d_p = d_p + momentum * buf
            coeff = 1.0 + momentum * buf_coeff
        else:
            d_p = buf
            coeff = buf_coeff
    new_p = p.detach() - lr * d_p
    return new_p, torch.tensor(-lr * coeff * sign, dtype=p.dtype, device=p.device)


def _adam(
    p: Tensor, g: Tensor, group: dict, state: dict, lr: float, decoupled: bool
) -> tuple[Tensor, Tensor]:
    # Mirrors torch.optim.Adam/AdamW (amsgrad=False). m and v depend on g, so D is the element-wise
    # derivative of -lr/bc1 * m'/(sqrt(v')/sqrt(bc2) + eps) with respect to g.
    sign = -1.0 if group.get("maximize", False) else 1.0
    beta1, beta2 = (_as_float(b) for b in group["betas"])
    eps = group["eps"]
    wd = group["weight_decay"]
    p0 = p.detach()
    grad = sign * g
    if wd != 0:
        if decoupled:
            p0 = p0 * (1.0 - lr * wd)
        else:
            grad = grad + wd * p.detach()
    step = _as_float(state["step"]) + 1.0 if "step" in state else 1.0
    exp_avg = state.get("exp_avg", torch.zeros_like(p0))
    exp_avg_sq = state.get("exp_avg_sq", torch.zeros_like(p0))
    m = exp_avg + (grad - exp_avg) * (1.0 - beta1)
    v = exp_avg_sq * beta2 + (1.0 - beta2) * grad * grad
    bc1 = 1.0 - beta1**step
    sqrt_bc2 = (1.0 - beta2**step) ** 0.5
    step_size = lr / bc1
    sqrt_v = v.sqrt()
    denom = sqrt_v / sqrt_bc2 + eps
    new_p = p0 - step_size * m / denom
    # d denom / d grad = (1 - beta2) grad / (sqrt(bc2) sqrt(v)); where v = 0, grad = m = 0 and the
    # product m * d denom vanishes, so that term is defined as 0 there.
    safe_sqrt_v = torch.where(sqrt_v > 0, sqrt_v, torch.ones_like(sqrt_v))
    ddenom = torch.where(
        sqrt_v > 0, (1.0 - beta2) * grad / (sqrt_bc2 * safe_sqrt_v), torch.zeros_like(sqrt_v)
    )
    scale = -step_size * ((1.0 - beta1) / denom - m * ddenom / (denom * denom)) * sign
    return new_p, scale
