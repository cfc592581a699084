"""Slow, obviously correct references: the meta step by double backward (create_graph=True)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call


def differentiable_update(optimizer, params, grads):
    """The optimizer's update rule written with plain differentiable ops (torch.optim's math)."""
    out = []
    for p, g in zip(params, grads):
        group = next(gr for gr in optimizer.param_groups if any(q is p for q in gr["params"]))
        state = optimizer.state.get(p, {})
        lr = float(group["lr"])
        sign = -1.0 if group.get("maximize", False) else 1.0
        if isinstance(optimizer, torch.optim.SGD):
            d = sign * g + group["weight_decay"] * p
            mu = group["momentum"]
            if mu != 0:
                if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                    buf = mu * state["momentum_buffer"] + (1 - group["dampening"]) * d
                else:
                    buf = d
                d = d + mu * buf if group["nesterov"] else buf
            out.append(p - lr * d)
        else:
            b1, b2 = group["betas"]
            wd = group["weight_decay"]
            base = p
            grad = sign * g
            if isinstance(optimizer, torch.optim.AdamW):
                base = p * (1 - lr * wd)
            elif wd:
                grad = grad + wd * p
            step = float(state["step"]) + 1 if "step" in state else 1.0
            m = state.get("exp_avg", torch.zeros_like(p)) * b1 + (1 - b1) * grad
            v = state.get("exp_avg_sq", torch.zeros_like(p)) * b2 + (1 - b2) * grad * grad
            # sqrt has no derivative at 0 (a parameter whose gradient is always 0, e.g. a bias before BN);
            # there m' = 0 as well, so the exact derivative of the sqrt branch is 0: double-where.
            positive = v > 0
            root = torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), 0.0)
            denom = root / (1 - b2**step) ** 0.5 + group["eps"]
            out.append(base - lr / (1 - b1**step) * m / denom)
    return out


def reference_meta_gradients(model, optimizer, inputs, targets, probe_inputs, probe_targets, *,
                             weight_init=0.0, label_init=None, pseudo_targets=None,
                             pseudo_fn=None, strong_inputs=None, inner_loss=None):
    """With ``pseudo_fn`` the pseudo labels are pseudo_fn(weak logits, strong logits) WITH graph
    (the official look-ahead), else the constant ``pseudo_targets``."""
    names = [n for n, p in model.named_parameters()
             if p.requires_grad and any(p is q for g in optimizer.param_groups for q in g["params"])]
    params = dict(model.named_parameters())
    trainable = [params[n] for n in names]
    batch = inputs.shape[0]
    omega = torch.as_tensor(weight_init, dtype=inputs.dtype).expand(batch).clone().requires_grad_()
    lam = None
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    logits = functional_call(model, buffers, (inputs,))
    onehot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    if label_init is not None:
        lam = torch.as_tensor(label_init, dtype=inputs.dtype).expand(batch).clone().requires_grad_()
        if pseudo_fn is not None:
            strong = functional_call(model, {n: b.clone() for n, b in model.named_buffers()},
                                     (strong_inputs,))
            pseudo_targets = pseudo_fn(logits, strong)
        t = lam[:, None] * onehot + (1 - lam[:, None]) * pseudo_targets
    else:
        t = onehot
    losses = -(t * F.log_softmax(logits, -1)).sum(-1)
    if inner_loss is not None:  # a robust loss (GCE, ...) reweighted instead of cross-entropy
        losses = inner_loss(logits, targets)
    grads = torch.autograd.grad((omega * losses).sum(), trainable, create_graph=True)
    new = differentiable_update(optimizer, trainable, grads)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    probe_logits = functional_call(model, {**buffers, **dict(zip(names, new))}, (probe_inputs,))
    probe_loss = F.cross_entropy(probe_logits, probe_targets)
    wrt = [omega] if lam is None else [omega, lam]
    out = torch.autograd.grad(probe_loss, wrt, allow_unused=True)
    weight = out[0] if out[0] is not None else torch.zeros_like(omega)
    label = None
    if lam is not None:
        label = out[1] if out[1] is not None else torch.zeros_like(lam)
    return weight.detach(), None if label is None else label.detach()
