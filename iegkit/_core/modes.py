"""The modes the meta passes run in: train-mode BatchNorm, optional dropout, math attention, and
a buffer snapshot that keeps their statistics updates out of the model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["buffers_snapshot", "math_attention", "train_mode"]


@contextlib.contextmanager
def train_mode(model: torch.nn.Module, *, dropout: bool = True) -> Iterator[None]:
    """Run the meta passes with BatchNorm on batch statistics, restoring each module's mode after.
    ``dropout=False`` keeps dropout layers and nn.MultiheadAttention's attention dropout off
    (deterministic meta passes)."""
    modes = [(m, m.training) for m in model.modules()]
    # nn.MultiheadAttention's attention dropout is a float, not a dropout module: it is zeroed
    # rather than put in eval mode (which would enable its fast path, which has no JVP formula).
    attention = [] if dropout else [(m, m.dropout) for m in model.modules()
                                    if isinstance(m, torch.nn.MultiheadAttention)]
    # A dropout module's rate is zeroed too, not only put in eval mode: timm's fused attention
    # reads ``self.attn_drop.p if self.training`` (its own mode, which stays train) and passes it
    # to scaled_dot_product_attention without calling the module.
    rates = [] if dropout else [(m, m.p) for m in model.modules()
                                if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    model.train()
    for m, _ in rates:
        m.eval()
        m.p = 0.0
    for m, _ in attention:
        m.dropout = 0.0
    try:
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training
        for m, rate in attention:
            m.dropout = rate
        for m, rate in rates:
            m.p = rate


def _math_attention_factory() -> Callable[[], contextlib.AbstractContextManager]:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch 2.1-2.2: the same process-wide flags, set by the older context
        legacy = getattr(torch.backends.cuda, "sdp_kernel", None)
        if legacy is None:
            return contextlib.nullcontext
        return lambda: legacy(enable_flash=False, enable_mem_efficient=False, enable_math=True)
    return lambda: sdpa_kernel(SDPBackend.MATH)


#: ``with math_attention():`` runs F.scaled_dot_product_attention on its math backend. The passes
#: that are forward-differentiated (the JVP) or differentiated twice (its double-backward fallback)
#: need it: the fused kernels (flash on CUDA and CPU, memory-efficient, cuDNN) have no
#: forward-mode formula and a backward that cannot be differentiated. Every other pass, the
#: real forward included, keeps the user's backend. The flags are process-wide while it is held.
math_attention = _math_attention_factory()


def buffers_snapshot(model: torch.nn.Module) -> dict[str, Tensor]:
    """Fresh copies of every buffer, so that a pass's BatchNorm statistics updates land nowhere."""
    return {name: b.clone() for name, b in model.named_buffers()}
