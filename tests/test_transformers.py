"""Transformers: the meta passes run attention on its math backend (the fused kernels have no JVP
and no differentiable backward); exact in float64, and the real forward keeps the user's backend."""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from conftest import Square, flip, make_problem, take_real_step
from reference import reference_meta_gradients
from torch import nn

from iegkit import recipes
from iegkit._core import modes
from iegkit._core.modes import math_attention
from iegkit._core.tangent import logit_tangent
from iegkit.functional import meta_gradients, normalize_meta_weights
from iegkit.functional.relabel import relabel_from_meta_gradient


class TinyViT(nn.Module):
    """Patch embedding, one pre-norm block (LayerNorm, multi-head attention through
    F.scaled_dot_product_attention, GELU MLP), a head on the mean-pooled tokens."""

    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 3, extra=None):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(1, dim, 2, stride=2)  # (1, 8, 8) -> 16 tokens
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.extra = nn.Identity() if extra is None else extra
        self.head = nn.Linear(dim, classes)
        self.calls: list[tuple[bool, bool, bool]] = []  # (JVP pass, flash enabled, math enabled)

    def forward(self, x):
        self.calls.append((fwAD.unpack_dual(self.head.weight).tangent is not None,
                           torch.backends.cuda.flash_sdp_enabled(),
                           torch.backends.cuda.math_sdp_enabled()))
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        b, t, d = tokens.shape
        q, k, v = self.qkv(self.norm1(tokens)).view(b, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        tokens = tokens + self.proj(attended)
        tokens = tokens + self.extra(self.mlp(self.norm2(tokens)))
        return self.head(tokens.mean(1))


def vit_problem(dtype=torch.float64, extra=None):
    _, x, y, xp, yp, q = make_problem("cnn", dtype=dtype)  # images (1, 8, 8), 3 classes
    torch.manual_seed(0)
    return TinyViT(extra=extra).to(dtype), x, y, xp, yp, q


def reference(model, optimizer, *args, **kwargs):
    # double backward through the fused kernels is impossible: the reference runs math attention
    with math_attention():
        return reference_meta_gradients(model, optimizer, *args, **kwargs)


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cls,tol", [(torch.optim.SGD, 1e-12), (torch.optim.Adam, 1e-10)],
                         ids=["sgd", "adam"])
def test_transformer_meta_gradients_match_double_backward(cls, tol):
    model, x, y, xp, yp, q = vit_problem()
    kwargs = dict(lr=0.1, momentum=0.9) if cls is torch.optim.SGD else dict(lr=1e-2)
    optimizer = cls(model.parameters(), weight_decay=1e-3, **kwargs)
    for _ in range(2):  # first step (no optimizer state yet), then a later one
        for weight_init, label_init in ((0.0, None), (1 / x.shape[0], 0.9)):  # L2R, IEG
            got = meta_gradients(model, optimizer, x, y, xp, yp, weight_init=weight_init,
                                 label_init=label_init, pseudo_targets=q)
            want_w, want_l = reference(model, optimizer, x, y, xp, yp, weight_init=weight_init,
                                       label_init=label_init, pseudo_targets=q)
            assert not got.used_fallback and want_w.norm() > 0
            assert relative_error(got.weight, want_w) < tol
            if label_init is not None:
                assert want_l.norm() > 0 and relative_error(got.label, want_l) < tol
        take_real_step(model, optimizer, x, y)


def test_l2r_and_ieg_pipelines_match_double_backward_on_a_transformer():
    model, x, y, xp, yp, _ = vit_problem()
    shadow = copy.deepcopy(model)
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)  # noqa: E731
    twin = copy.deepcopy(model)
    out = recipes.l2r(twin, sgd(twin))(x, y, xp, yp, step=0)
    want, _ = reference(shadow, sgd(shadow), x, y, xp, yp, weight_init=0.0)
    assert out.weights.sum() > 0
    torch.testing.assert_close(out.weights, normalize_meta_weights(want), rtol=1e-10, atol=1e-14)

    noise = lambda images, generator=None: images + 0.1 * torch.randn(  # noqa: E731
        images.shape, generator=generator, dtype=images.dtype)
    out = recipes.ieg(model, sgd(model), strong_augment=noise, plain_strong_augment=noise)(
        x, y, xp, yp, step=0)
    want_w, want_l = reference(shadow, sgd(shadow), x, y, xp, yp, weight_init=1 / x.shape[0],
                               label_init=0.9, pseudo_targets=out.values["targets:pseudo"])
    torch.testing.assert_close(out.weights, normalize_meta_weights(want_w), rtol=1e-10, atol=1e-14)
    assert torch.equal(out.relabel, relabel_from_meta_gradient(want_l))


def test_only_the_jvp_switches_attention_backend_and_the_real_forward_is_unchanged():
    model, x, y, xp, yp, _ = vit_problem(torch.float32)  # float32: the backends round differently
    plain = model(x)
    flags = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    model.calls.clear()
    out = recipes.l2r(model, torch.optim.SGD(model.parameters(), lr=0.1))(x, y, xp, yp, step=0)
    assert torch.equal(out.logits, plain)  # bit for bit: the training loss is the plain one's
    jvp = [call[1:] for call in model.calls if call[0]]
    others = [call[1:] for call in model.calls if not call[0]]
    assert jvp == [(False, True)]  # math only
    assert others and all(call == flags for call in others)  # real forward, probe pass
    assert flags == (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())


def test_double_backward_fallback_runs_attention_on_the_math_backend():
    model, x, y, xp, yp, q = vit_problem(extra=Square())  # Square has no jvp(): fallback
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.warns(RuntimeWarning, match=r"layer 'extra' \(Square\)"):
        got = meta_gradients(model, optimizer, x, y, xp, yp, weight_init=0.125, label_init=0.9,
                             pseudo_targets=q)
    want_w, want_l = reference(model, optimizer, x, y, xp, yp, weight_init=0.125, label_init=0.9,
                               pseudo_targets=q)
    assert got.used_fallback
    assert relative_error(got.weight, want_w) < 1e-12 and relative_error(got.label, want_l) < 1e-12


class TorchAttention(nn.Module):
    """nn.TransformerEncoderLayer (fast path in eval/no-grad) or nn.MultiheadAttention without
    weights (F.scaled_dot_product_attention inside)."""

    def __init__(self, kind: str, dropout: float = 0.0):
        super().__init__()
        self.kind = kind
        self.embed, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        if kind == "encoder_layer":
            self.body = nn.TransformerEncoderLayer(8, 2, 16, dropout=dropout, batch_first=True)
        else:
            self.body = nn.MultiheadAttention(8, 2, dropout=dropout, batch_first=True)

    def forward(self, x):
        tokens = self.embed(x)
        if self.kind == "encoder_layer":
            tokens = self.body(tokens)
        else:
            tokens = tokens + self.body(tokens, tokens, tokens, need_weights=False)[0]
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("kind", ["encoder_layer", "multihead_attention"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_attention_modules_match_double_backward(kind, mode):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = getattr(TorchAttention(kind).double(), mode)()
    x, xp = (torch.randn(n, 5, 4, generator=gen, dtype=torch.float64) for n in (6, 4))
    y, yp = torch.randint(0, 3, (6,), generator=gen), torch.randint(0, 3, (4,), generator=gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    got = meta_gradients(model, optimizer, x, y, xp, yp, weight_init=1 / 6)
    assert model.training == (mode == "train")  # the meta passes restore the user's mode
    model.train()  # the reference, like the meta passes, is the train-mode function
    want, _ = reference(model, optimizer, x, y, xp, yp, weight_init=1 / 6)
    assert not got.used_fallback and relative_error(got.weight, want) < 1e-12


def test_meta_dropout_off_also_switches_off_multihead_attention_dropout():
    model = TorchAttention("encoder_layer", dropout=0.3).double()
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    tangents = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    first, second = (logit_tangent(model, tangents, x, dropout=False)[1] for _ in range(2))
    without = copy.deepcopy(model)  # the same network with every dropout rate 0
    without.body.self_attn.dropout = 0.0
    for module in without.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    assert torch.equal(first, second)
    assert torch.equal(first, logit_tangent(without, tangents, x, dropout=True)[1])
    assert model.body.self_attn.dropout == 0.3 and model.training  # restored
    first, second = (logit_tangent(model, tangents, x, dropout=True)[1] for _ in range(2))
    assert not torch.equal(first, second)  # dropout=True keeps it (the check is not vacuous)


class TimmStyleAttention(nn.Module):
    """timm's ``Attention`` with ``fused_attn``: the attention dropout's rate is read from its
    module (``self.attn_drop.p if self.training``) and passed to scaled_dot_product_attention,
    so putting the dropout module in eval mode alone does not switch it off."""

    def __init__(self, dim=4, attn_drop=0.5):
        super().__init__()
        self.qkv, self.attn_drop, self.head = nn.Linear(dim, 3 * dim), nn.Dropout(attn_drop), \
            nn.Linear(dim, 3)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        drop = self.attn_drop.p if self.training else 0.0
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.head(out.mean(1))


def test_meta_dropout_off_also_switches_off_timm_style_fused_attention_dropout():
    model = TimmStyleAttention().double()
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    tangents = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    first, second = (logit_tangent(model, tangents, x, dropout=False)[1] for _ in range(2))
    without = copy.deepcopy(model)
    without.attn_drop.p = 0.0
    assert torch.equal(first, second)
    assert torch.equal(first, logit_tangent(without, tangents, x, dropout=True)[1])
    assert model.attn_drop.p == 0.5 and model.attn_drop.training and model.training  # restored
    first, second = (logit_tangent(model, tangents, x, dropout=True)[1] for _ in range(2))
    assert not torch.equal(first, second)  # dropout=True keeps it (the check is not vacuous)


def test_math_attention_without_torch_nn_attention_uses_the_cuda_flags(monkeypatch):
    # torch 2.1-2.2 have no torch.nn.attention: the legacy flags' context manager is used instead
    with monkeypatch.context() as patch:  # only while resolving: the legacy one imports it itself
        patch.setitem(sys.modules, "torch.nn.attention", None)  # the import raises ImportError
        legacy = modes._math_attention_factory()
    before = torch.backends.cuda.flash_sdp_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated on torch >= 2.3
        with legacy():
            assert not torch.backends.cuda.flash_sdp_enabled()
            assert not torch.backends.cuda.mem_efficient_sdp_enabled()
            assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled() == before
    monkeypatch.setitem(sys.modules, "torch.nn.attention", None)
    monkeypatch.delattr(torch.backends.cuda, "sdp_kernel")
    assert modes._math_attention_factory() is contextlib.nullcontext  # neither: a no-op


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18"])
@pytest.mark.parametrize("recipe", ["l2r", "robust_ieg"])
def test_timm_models_run_one_step(name, recipe):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x, xp = torch.rand(4, 3, 32, 32, generator=gen), torch.rand(4, 3, 32, 32, generator=gen)
    y, yp = torch.randint(0, 10, (4,), generator=gen), torch.randint(0, 10, (4,), generator=gen)
    if recipe == "l2r":
        pipeline = recipes.l2r(model, optimizer)
    else:
        pipeline = recipes.robust_ieg(model, optimizer, total_steps=10, strong_augment=flip,
                                      plain_strong_augment=flip)
    with pipeline, warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*falls back to double backward")
        out = pipeline(x, y, xp, yp, step=0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert torch.isfinite(out.loss) and torch.isfinite(out.weights).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())
