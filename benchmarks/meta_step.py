"""Cost of one training step: plain SGD vs. the L2R meta step (iegkit, double backward, higher, torchopt).

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.meta_step                       # CPU (+ CUDA when available)
    .venv/bin/python -m benchmarks.meta_step --write docs/results.md
    .venv/bin/python -m benchmarks.meta_step --models small_cnn --batch-sizes 256 --repeats 11
    .venv/bin/python -m benchmarks.meta_step --models small_cnn --profile iegkit_l2r
    .venv/bin/python -m benchmarks.meta_step --variants plain,iegkit_l2r,iegkit_l2r_compiled,double_backward
    .venv/bin/python -m benchmarks.meta_step --devices cuda --models small_cnn,resnet29,wrn28_10 \
        --variants plain,iegkit_l2r,iegkit_l2r_compiled,double_backward,plain_bf16,iegkit_l2r_bf16

Defaults: SmallCNN(in_channels=3, num_classes=10, width=32) at B=128 and ResNet29(num_classes=10) at
B=64 on 32x32 inputs (``--models wrn28_10``: benchmarks/wrn.py's WRN-28-10, for a GPU), probe batch
100, 7 repeats (3 for ResNet29 on CPU, ``--cpu-repeats``), torch.set_num_threads(2). Inputs are fixed random tensors (the cost does not depend on the values).

What one "step" is, per variant (every variant owns an identical copy of the model and an SGD optimizer
with lr 0.1, momentum 0.9, weight decay 5e-4; one untimed warm-up step of each variant runs first so
that the momentum buffers exist and the look-ahead uses them):

  plain            forward, mean cross-entropy, zero_grad, backward, optimizer.step()
  iegkit_l2r       pipe = iegkit.recipes.l2r(model, opt); out = pipe(x, y, xp, yp, step=i);
                   opt.zero_grad(); out.loss.backward(); opt.step()
  double_backward  the classic L2R step, written inline here (not tests/reference.py, which runs an
                   extra training forward): one real forward (BatchNorm statistics updated once),
                   per-example losses l_i, g = grad(sum_i eps_i l_i, theta, create_graph=True) at
                   eps = 0, the differentiable SGD-momentum look-ahead
                   theta' = theta - lr (mu buf + g + wd theta), the probe loss through
                   torch.func.functional_call at theta' with cloned buffers, grad(probe loss, eps),
                   weights relu(-grad) / (sum + 1e-5), then (w * l).sum() backward (on the same
                   forward's graph) and optimizer.step().
  iegkit_l2r_compiled  iegkit_l2r with the look-ahead's forward-mode pass compiled
                   (``pipe.compile_tangent = True``: torch.compile of u = J tau; the warm-up step
                   compiles and checks it against the eager pass, untimed). Opt-in (``--variants``).
  plain_bf16, iegkit_l2r_bf16  plain and iegkit_l2r with the pipeline/forward under
                   ``torch.autocast(device, torch.bfloat16)`` (backward and optimizer.step() outside
                   it, as autocast is meant to be used); their "ratio to plain" is to plain_bf16 when
                   it ran. Opt-in (``--variants``); iegkit_l2r_bf16's tangent pass is eager (forward-
                   mode AD does not compile under autocast).
  higher_l2r       the same step with higher.innerloop_ctx (the optimizer's momentum state is copied
                   by higher), only when ``higher`` is importable.
  torchopt_l2r     the same step with torchopt.MetaSGD (momentum and weight decay, but a fresh
                   momentum buffer: torchopt does not read torch.optim's state; same cost, not the
                   same value), only when ``torchopt`` is importable.

Timing: all variants run in one process, interleaved round-robin within each repeat (the starting
variant rotates from repeat to repeat, so no variant always runs first); each sample is one step, the
table shows the median over ``--repeats`` samples. ``opt.zero_grad(set_to_none=True)`` runs untimed
before every sample so that each step starts without gradients. CUDA timings are bracketed by
torch.cuda.synchronize(). On CPU the process CPU time of each step is recorded as well and its ratios
are printed below the table: on a machine shared with other jobs, two intra-op threads that wait for
each other can lose whole scheduler time slices, which inflates wall time far more than CPU time.

Peak memory ("peak MiB"): the highest amount of tensor memory live during one step *above* what was
live when the step began (parameters, BatchNorm buffers, momentum buffers, the batch); it includes the
gradients, activations, the look-ahead copies and every temporary. It is measured in a separate,
untimed step per variant:

  * CUDA: torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated() at the start, after
    torch.cuda.reset_peak_memory_stats().
  * CPU: torch.profiler.profile(profile_memory=True) records every allocation and free made through
    PyTorch's CPU allocator as a "[memory]" event (size, +/- bytes, timestamp); the peak is the maximum
    of the cumulative sum of those events in time order. This is exact for tensors; memory that a
    library allocates on its own (oneDNN/MKL scratch space, Python objects) is not counted, and the
    profiler does not see the free of a block allocated before it started (only torchopt's state
    restore frees such a block, about a kilobyte), which could only raise the figure. Process RSS is
    not used (it is noisy and glibc rarely returns memory).

The memory the step starts with (parameters + BatchNorm buffers + momentum buffers) is printed below the
table as "resident"; add it to a peak for the absolute footprint.

Before timing, a check (skip it with ``--no-check``) computes the example weights of every meta
variant, and of tests/reference.py's reference_meta_gradients, from one identical model/optimizer state
and prints the largest difference to the double-backward weights, so the timings compare equal
computations (torchopt's differ by design, see above).

Nothing here is tuned to a target: the script measures and prints.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import copy
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import iegkit
import iegkit.models
from benchmarks import wrn
from benchmarks.results_io import command, machine, now, write_section

SECTION = "Meta-step overhead (benchmarks/meta_step.py)"
TANGENT_SECTION = "Compiled tangent pass vs float64 (benchmarks/meta_step.py --compare-tangents)"

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
NORMALIZER_EPS = 1e-5

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "small_cnn": lambda: iegkit.models.SmallCNN(in_channels=3, num_classes=10, width=32),
    "resnet29": lambda: iegkit.models.ResNet29(num_classes=10),
    "wrn28_10": lambda: wrn.wrn28_10(num_classes=10),  # benchmarks/wrn.py; GPU-sized
}
NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------------
# Optional third-party variants
# --------------------------------------------------------------------------------------------------

try:
    import higher  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    higher = None

try:
    import torchopt  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    torchopt = None


# --------------------------------------------------------------------------------------------------
# Variants: each owns a model copy and an optimizer and runs one full training step per call
# --------------------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    xp: torch.Tensor
    yp: torch.Tensor


class Variant(abc.ABC):
    name = "variant"

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.opt = make_optimizer(model) if opt is None else opt

    @abc.abstractmethod
    def loss(self, b: Batch, i: int) -> torch.Tensor:
        """The loss of one training step: its forward passes, and the meta step if any."""

    def step(self, b: Batch, i: int) -> None:
        """One full training step of this variant: loss, zero_grad, backward, optimizer.step()."""
        loss = self.loss(b, i)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def weights(self, b: Batch, i: int) -> torch.Tensor | None:
        """The example weights of one step, without stepping (for --check); None if not applicable."""
        return None


class Plain(Variant):
    name = "plain"

    def loss(self, b: Batch, i: int) -> torch.Tensor:
        return F.cross_entropy(self.model(b.x), b.y)


class IegkitL2R(Variant):
    name = "iegkit_l2r"

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, opt)
        self.pipe = iegkit.recipes.l2r(model, self.opt)

    def loss(self, b: Batch, i: int) -> torch.Tensor:
        return self.pipe(b.x, b.y, b.xp, b.yp, step=i).loss

    def weights(self, b: Batch, i: int) -> torch.Tensor:
        return self.pipe(b.x, b.y, b.xp, b.yp, step=i).weights


class IegkitL2RCompiled(IegkitL2R):
    """iegkit_l2r with the look-ahead's tangent pass compiled (torch.compile; opt-in)."""

    name = "iegkit_l2r_compiled"

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, opt)
        self.pipe.compile_tangent = True


def _bf16(device_type: str):
    return torch.autocast(device_type, dtype=torch.bfloat16)


class PlainBf16(Plain):
    name = "plain_bf16"

    def loss(self, b: Batch, i: int) -> torch.Tensor:
        with _bf16(b.x.device.type):
            return super().loss(b, i)


class IegkitL2RBf16(IegkitL2R):
    name = "iegkit_l2r_bf16"

    def loss(self, b: Batch, i: int) -> torch.Tensor:
        with _bf16(b.x.device.type):
            return super().loss(b, i)

    def weights(self, b: Batch, i: int) -> torch.Tensor:
        with _bf16(b.x.device.type):
            return super().weights(b, i)


def _trainable(model: torch.nn.Module, opt: torch.optim.Optimizer):
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    names, params = [], []
    for n, p in model.named_parameters():
        if p.requires_grad and id(p) in ids:
            names.append(n)
            params.append(p)
    return names, params


def normalize(grad: torch.Tensor) -> torch.Tensor:
    w = torch.relu(-grad.detach())
    return w / (w.sum() + NORMALIZER_EPS)


def weighted_losses(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy l_i and the example weights eps = 0 (requiring grad) of the
    look-ahead loss sum_i eps_i l_i."""
    losses = F.cross_entropy(logits, y, reduction="none")
    eps = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device, requires_grad=True)
    return losses, eps


def probe_weights(probe_logits: torch.Tensor, yp: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """relu(-d probe loss / d eps) / (sum + 1e-5): the L2R example weights."""
    (eps_grad,) = torch.autograd.grad(F.cross_entropy(probe_logits, yp), eps)
    return normalize(eps_grad)


class HandWrittenL2R(Variant):
    """An L2R step written here: the example weights of a look-ahead, then the weighted loss."""

    @abc.abstractmethod
    def meta(self, b: Batch) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(per-example training losses of the real forward, or None when the look-ahead did not
        run one; the example weights)."""

    def loss(self, b: Batch, i: int) -> torch.Tensor:
        losses, w = self.meta(b)
        if losses is None:
            losses = F.cross_entropy(self.model(b.x), b.y, reduction="none")
        return (w * losses).sum()

    def weights(self, b: Batch, i: int) -> torch.Tensor:
        return self.meta(b)[1]


class DoubleBackwardL2R(HandWrittenL2R):
    """The classic L2R step by second-order backward (see the module docstring)."""

    name = "double_backward"

    def meta(self, b: Batch):
        model, opt = self.model, self.opt
        names, params = _trainable(model, opt)
        # the real forward: BatchNorm statistics updated once, graph kept for the weighted loss
        losses, eps = weighted_losses(model(b.x), b.y)
        grads = torch.autograd.grad((eps * losses).sum(), params, create_graph=True)
        new = []
        for p, g in zip(params, grads):
            group = opt.param_groups[0]
            buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
            d = g + group["weight_decay"] * p
            if buf is not None:
                d = group["momentum"] * buf + d  # dampening 0, no Nesterov
            new.append(p - group["lr"] * d)
        buffers = {n: t.clone() for n, t in model.named_buffers()}
        probe_logits = functional_call(model, {**buffers, **dict(zip(names, new))}, (b.xp,))
        return losses, probe_weights(probe_logits, b.yp, eps)


class HigherL2R(HandWrittenL2R):
    """L2R with higher.innerloop_ctx (differentiable copy of the optimizer, its state included)."""

    name = "higher_l2r"

    def meta(self, b: Batch):
        inner = higher.innerloop_ctx(self.model, self.opt, copy_initial_weights=False)
        with inner as (fmodel, diffopt):
            losses, eps = weighted_losses(fmodel(b.x), b.y)
            diffopt.step((eps * losses).sum())
            w = probe_weights(fmodel(b.xp), b.yp, eps)
        return None, w


class TorchoptL2R(HandWrittenL2R):
    """L2R with torchopt.MetaSGD (fresh momentum buffer each step: same cost, not the same value)."""

    name = "torchopt_l2r"

    def meta(self, b: Batch):
        model = self.model
        net_state = torchopt.extract_state_dict(model, by="reference", detach_buffers=True)
        meta_opt = torchopt.MetaSGD(model, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        losses, eps = weighted_losses(model(b.x), b.y)
        meta_opt.step((eps * losses).sum())
        w = probe_weights(model(b.xp), b.yp, eps)
        torchopt.recover_state_dict(model, net_state)
        return None, w


VARIANTS: list[type[Variant]] = [Plain, IegkitL2R, DoubleBackwardL2R]
OPTIONAL = {"higher_l2r": (higher, HigherL2R), "torchopt_l2r": (torchopt, TorchoptL2R)}
#: opt-in with --variants (compiling costs minutes on a CPU; bf16 autocast is slow on most CPUs)
EXTRA: list[type[Variant]] = [IegkitL2RCompiled, PlainBf16, IegkitL2RBf16]


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(v: Variant, b: Batch, i: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    v.opt.zero_grad(set_to_none=True)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    v.step(b, i)
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


@contextlib.contextmanager
def _quiet_stderr():
    """Silence kineto's C++ "profiler_start/stop" lines (written to fd 2, not sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the cumulative allocated-minus-freed tensor bytes (CPU allocator) while fn runs."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def peak_step_bytes(v: Variant, b: Batch, i: int, device: torch.device) -> int:
    v.opt.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        v.step(b, i)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    return cpu_peak_bytes(lambda: v.step(b, i))


def resident_bytes(v: Variant) -> int:
    tensors = list(v.model.parameters()) + list(v.model.buffers())
    for state in v.opt.state.values():
        tensors += [t for t in state.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def make_batch(batch_size: int, probe_size: int, device: torch.device, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    xp = torch.randn(probe_size, 3, 32, 32, generator=g)
    yp = torch.randint(0, NUM_CLASSES, (probe_size,), generator=g)
    return Batch(x.to(device), y.to(device), xp.to(device), yp.to(device))


def available_variants(names: list[str] | None = None) -> list[type[Variant]]:
    """The default variants (plain, iegkit_l2r, double_backward and the installed optional ones), or
    those named, in the order given (an optional one that is not installed is skipped)."""
    known = {cls.name: cls for cls in (*VARIANTS, *EXTRA, *(c for _, c in OPTIONAL.values()))}
    if names is None:
        names = [c.name for c in VARIANTS] + list(OPTIONAL)
    out = []
    for name in names:
        if name not in known:
            raise SystemExit(f"--variants: unknown variant '{name}' (known: {sorted(known)})")
        if name in OPTIONAL and OPTIONAL[name][0] is None:
            print(f"{name}: {name.split('_')[0]} not installed, skipped")
            continue
        out.append(known[name])
    return out


def check(model_name: str, device: torch.device, classes: list[type[Variant]], b: Batch) -> str:
    """Max |w_variant - w_double_backward| from one identical state (after one plain step)."""
    torch.manual_seed(0)
    base = MODELS[model_name]().to(device)
    warm = Plain(base)
    warm.step(b, 0)
    lines = []
    results = {}
    for cls in classes:
        if issubclass(cls, Plain):
            continue
        results[cls.name] = cls(*copy.deepcopy((warm.model, warm.opt))).weights(b, 1).detach()
    ref_w = results.get(DoubleBackwardL2R.name)
    for name, w in results.items():
        if name != DoubleBackwardL2R.name and ref_w is not None:
            lines.append(f"{name} vs double_backward: max |dw| = {float((w - ref_w).abs().max()):.2e}")
    try:  # the test-suite reference (one extra training forward): meta-gradients, not weights
        from tests.reference import reference_meta_gradients

        model, opt = copy.deepcopy((warm.model, warm.opt))
        grad, _ = reference_meta_gradients(model, opt, b.x, b.y, b.xp, b.yp, weight_init=0.0)
        lines.append("tests/reference.py vs double_backward: max |dw| = "
                     f"{float((normalize(grad) - ref_w).abs().max()):.2e}")
    except ImportError as error:
        lines.append(f"tests/reference.py not importable ({error})")
    return "; ".join(lines)


@dataclass
class Row:
    device: str
    model: str
    batch: int
    variant: str
    median_ms: float
    min_ms: float
    max_ms: float
    cpu_ms: float
    peak_mib: float
    resident_mib: float


def bench(model_name: str, batch_size: int, device: torch.device, args,
          classes: list[type[Variant]], checks: list[str]) -> list[Row]:
    b = make_batch(batch_size, args.probe_batch, device, seed=batch_size)
    if args.check:
        line = f"{device.type} {model_name} B={batch_size}: {check(model_name, device, classes, b)}"
        print(f"  check {line}", flush=True)
        checks.append(line)
    torch.manual_seed(0)
    init = MODELS[model_name]().to(device)
    variants = [cls(copy.deepcopy(init)) for cls in classes]
    for v in variants:  # warm-up: momentum buffers exist, lazy initialisation done
        v.opt.zero_grad(set_to_none=True)
        v.step(b, 0)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    cpu_times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(args.repeats):
        gc.collect()
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            wall, cpu = time_step(v, b, r + 1, device)
            times[v.name].append(wall)
            cpu_times[v.name].append(cpu)
    rows = []
    for v in variants:
        peak = peak_step_bytes(v, b, args.repeats + 1, device)
        ts = times[v.name]
        rows.append(Row(device.type, model_name, batch_size, v.name, 1e3 * statistics.median(ts),
                        1e3 * min(ts), 1e3 * max(ts), 1e3 * statistics.median(cpu_times[v.name]),
                        peak / 2**20, resident_bytes(v) / 2**20))
    return rows


def profile_variant(model_name: str, batch_size: int, device: torch.device, args,
                    classes: list[type[Variant]]) -> None:
    from torch.profiler import ProfilerActivity, profile

    cls = next(c for c in classes if c.name == args.profile)
    b = make_batch(batch_size, args.probe_batch, device, seed=batch_size)
    torch.manual_seed(0)
    v = cls(MODELS[model_name]().to(device))
    for i in range(2):
        v.opt.zero_grad(set_to_none=True)
        v.step(b, i)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(3):
            v.opt.zero_grad(set_to_none=True)
            v.step(b, 2 + i)
            sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {args.profile} [{device.type} {model_name} B={batch_size}], 3 steps:")
    print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows))


def compare_tangents(model_name: str, batch_size: int, device: torch.device, args) -> list[str]:
    """--compare-tangents: is the compiled tangent pass float32 rounding of the exact u = J tau?

    After one plain step (momentum buffers, BatchNorm statistics), tau from the probe pass, then
    u = J tau by: the eager forward-mode pass, double backward, the compiled pass (all float32), and
    the eager and compiled passes in float64 on the same point (the float32 weights, tau and
    inputs cast exactly). Each is compared with float64 eager (relative L2 error over the whole
    (B, C) tangent, and largest error over largest entry), and so are the L2R weights made from it
    (max |dw| over max w). Then the eager and compiled float32 passes are timed, interleaved.
    Returns markdown table rows.
    """
    from iegkit._core import tangent as meta_fn
    from iegkit.functional.meta import contract_meta_gradients

    b = make_batch(batch_size, args.probe_batch, device, seed=batch_size)
    torch.manual_seed(0)
    warm = Plain(MODELS[model_name]().to(device))
    warm.step(b, 0)
    model, opt = warm.model, warm.opt
    tau, _ = meta_fn.probe_tangent(model, opt, b.xp, b.yp)
    params = {n: p.detach() for n, p in model.named_parameters()}
    model64 = copy.deepcopy(model).double()
    tau64 = {n: t.double() for n, t in tau.items()}
    x64 = b.x.double()
    started = time.perf_counter()
    passes = {
        "eager f32": meta_fn.logit_tangent(model, tau, b.x)[:2],
        "double backward f32": meta_fn._double_backward_tangent(model, params, tau, b.x),
        "compiled f32": meta_fn.logit_tangent(model, tau, b.x, compile=True)[:2],
    }
    compile_s = time.perf_counter() - started
    exact_logits, exact = meta_fn.logit_tangent(model64, tau64, x64)[:2]
    passes["compiled f64"] = meta_fn.logit_tangent(model64, tau64, x64, compile=True)[:2]

    def weights(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        grad, _ = contract_meta_gradients(
            logits.double(), u.double(), b.y,
            weight_init=torch.zeros(batch_size, dtype=torch.float64, device=device))
        return normalize(grad)

    w_exact = weights(exact_logits, exact)
    rows = []
    for name, (logits, u) in passes.items():
        u = u.double()
        rows.append(f"| {device.type} | {model_name} | {batch_size} | {name} vs f64 eager | "
                    f"{float((u - exact).norm() / exact.norm()):.1e} | "
                    f"{float((u - exact).abs().max() / exact.abs().max()):.1e} | "
                    f"{float((weights(logits, u) - w_exact).abs().max() / w_exact.max()):.1e} |")
    (el, eu), (cl, cu) = passes["eager f32"], passes["compiled f32"]
    rows.append(f"| {device.type} | {model_name} | {batch_size} | compiled f32 vs eager f32 | "
                f"{float((cu - eu).norm() / eu.norm()):.1e} | "
                f"{float((cu - eu).abs().max() / eu.abs().max()):.1e} | "
                f"{float((weights(cl, cu) - weights(el, eu)).abs().max() / weights(el, eu).max()):.1e} |")
    if any(meta_fn._COMPILE_FAILURES.get(m) for m in (model, model64)):
        rows.append(f"| {device.type} | {model_name} | {batch_size} | (compile failed: "
                    f"{meta_fn._COMPILE_FAILURES.get(model) or meta_fn._COMPILE_FAILURES.get(model64)}) "
                    "| | | |")
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.repeats):
        for compiled in ((False, True) if r % 2 == 0 else (True, False)):
            sync(device)
            t0 = time.perf_counter()
            meta_fn.logit_tangent(model, tau, b.x, compile=compiled)
            sync(device)
            times[compiled].append(time.perf_counter() - t0)
    eager_ms, compiled_ms = (1e3 * statistics.median(times[c]) for c in (False, True))
    rows.append(f"| {device.type} | {model_name} | {batch_size} | tangent pass: eager "
                f"{eager_ms:.1f} ms, compiled {compiled_ms:.1f} ms ({eager_ms / compiled_ms:.2f}x; "
                f"median of {args.repeats} interleaved; first compile {compile_s:.0f} s) | | | |")
    return rows


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def plain_of(r: Row, rows: list[Row]) -> Row | None:
    """The plain step a variant is compared with: plain_bf16 for a *_bf16 variant where it ran
    (the same precision), else plain."""
    names = ["plain_bf16", "plain"] if r.variant.endswith("_bf16") else ["plain"]
    for name in names:
        for p in rows:
            if (p.device, p.model, p.batch, p.variant) == (r.device, r.model, r.batch, name):
                return p
    return None


def table(rows: list[Row]) -> str:
    head = ("| device | model | B | variant | median ms | ratio to plain | peak MiB | "
            "memory ratio to plain |")
    lines = [head, "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        p = plain_of(r, rows)
        ratio = f"{r.median_ms / p.median_ms:.2f}x" if p else "-"
        mratio = f"{r.peak_mib / p.peak_mib:.2f}x" if p and p.peak_mib > 0 else "-"
        lines.append(f"| {r.device} | {r.model} | {r.batch} | {r.variant} | {r.median_ms:.1f} | "
                     f"{ratio} | {r.peak_mib:.1f} | {mratio} |")
    return "\n".join(lines)


def notes(rows: list[Row]) -> str:
    seen = {}
    for r in rows:
        seen.setdefault((r.device, r.model), r.resident_mib)
    resident = ", ".join(f"{d} {m}: {mib:.1f} MiB" for (d, m), mib in seen.items())
    spread, cpu = [], []
    for r in rows:
        if r.device != "cpu":
            continue
        spread.append(f"{r.model}/B={r.batch}/{r.variant}: {r.min_ms:.0f}-{r.max_ms:.0f} ms")
        p = plain_of(r, rows)
        if p is not None and p is not r and p.cpu_ms > 0:
            cpu.append(f"{r.model}/B={r.batch}/{r.variant}: {r.cpu_ms / p.cpu_ms:.2f}x")
    ratios = []
    for r in rows:
        p = plain_of(r, rows)
        if p is None or p is r:
            continue
        extra = ""
        for other in ("double_backward", "higher_l2r"):
            o = next((x for x in rows if (x.device, x.model, x.batch, x.variant)
                      == (r.device, r.model, r.batch, other)), None)
            if o is not None and r.variant.startswith("iegkit") and not r.variant.endswith("_bf16"):
                extra += f", {r.median_ms / o.median_ms:.2f}x {other}"
        ratios.append(f"{r.device}/{r.model}/B={r.batch}/{r.variant}: "
                      f"{r.median_ms / p.median_ms:.2f}x {p.variant}{extra}")
    out = [f"- Wall-time ratios: {'; '.join(ratios)}."] if ratios else []
    out += [f"- Resident at the start of a step (parameters, BatchNorm and momentum buffers; not in "
           f"\"peak MiB\"): {resident}."]
    if spread:
        out.append(f"- CPU, min-max over the repeats: {'; '.join(spread)}.")
    if cpu:
        out.append("- CPU, ratio to plain of the median *process CPU time* (less sensitive to other "
                   f"processes on the machine than wall time): {'; '.join(cpu)}.")
    return "\n".join(out)


def parse_batch_sizes(spec: str, models: list[str]) -> dict[str, list[int]]:
    """'128' (every model) or 'small_cnn:128,resnet29:64' (per model), or a mix of both."""
    out: dict[str, list[int]] = {m: [] for m in models}
    generic: list[int] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if ":" in item:
            model, size = item.split(":", 1)
            if model not in MODELS:
                raise SystemExit(f"--batch-sizes: unknown model '{model}' (known: {sorted(MODELS)})")
            if model in out:
                out[model].append(int(size))
        else:
            generic.append(int(item))
    for m in models:
        if not out[m]:
            out[m] = list(generic) or [128]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Time and peak memory of one training step: plain SGD vs. the L2R meta step "
                    "(iegkit, double backward, and higher/torchopt when installed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed steps per variant (median reported)")
    parser.add_argument("--cpu-repeats", type=int, default=None,
                        help="repeats for resnet29 on CPU (default: min(--repeats, 3))")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--models", default="small_cnn,resnet29",
                        help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--batch-sizes", default="small_cnn:128,resnet29:64",
                        help="training batch sizes: '128' for every model, or per model "
                             "'small_cnn:128,resnet29:64'")
    parser.add_argument("--probe-batch", type=int, default=100, help="probe (trusted) batch size")
    parser.add_argument("--devices", default="cpu,cuda",
                        help="comma-separated; cuda is skipped when unavailable")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variants, in this order [plain,iegkit_l2r,"
                             "double_backward and higher_l2r/torchopt_l2r when installed]; also "
                             "iegkit_l2r_compiled, plain_bf16, iegkit_l2r_bf16")
    parser.add_argument("--compare-tangents", action="store_true",
                        help="instead of timing steps: the compiled tangent pass against the eager "
                             "one and both against float64 (see compare_tangents)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the check that the meta variants compute the same weights")
    parser.add_argument("--profile", metavar="VARIANT", default=None,
                        help="afterwards, print a torch.profiler op table of this variant "
                             "(e.g. iegkit_l2r) for each device/model/batch size")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--write", metavar="PATH", default=None,
                        help="write/replace the section '## SECTION' (--section) in PATH")
    parser.add_argument("--section", default=SECTION,
                        help="the heading --write writes (another one leaves the default section)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            parser.error(f"--models: unknown model '{m}' (known: {sorted(MODELS)})")
    batch_sizes = parse_batch_sizes(args.batch_sizes, models)
    devices = []
    for d in (s.strip() for s in args.devices.split(",") if s.strip()):
        if d == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        devices.append(torch.device(d))
    if not devices:
        print("no device to run on (--devices)")
        return
    classes = available_variants(None if args.variants is None else
                                 [v.strip() for v in args.variants.split(",") if v.strip()])
    if args.profile and args.profile not in {c.name for c in classes}:
        parser.error(f"--profile: unknown variant '{args.profile}'")

    if args.compare_tangents:
        lines = ["| device | model | B | u = J tau | relative L2 error | max error / max entry | "
                 "L2R weights: max abs(dw) / max w |", "|---|---|---:|---|---:|---:|---:|"]
        for device in devices:
            for m in models:
                for bs in batch_sizes[m]:
                    print(f"[compare tangents: {device.type} {m} B={bs}]", flush=True)
                    lines += compare_tangents(m, bs, device, args)
        result = "\n".join(lines)
        print(result)
        if args.write:
            write_section(args.write, args.section if args.section != SECTION else TANGENT_SECTION,
                          "\n".join([f"Command: `{command(argv)}`", "", f"Date: {now()}", "",
                                      f"Machine: {machine(details=True)}", "",
                                      "See compare_tangents() in benchmarks/meta_step.py.", "",
                                      result]))
            print(f"wrote the tangent comparison to {args.write}")
        return

    started = time.perf_counter()
    rows: list[Row] = []
    checks: list[str] = []
    load_before = os.getloadavg()
    for device in devices:
        for m in models:
            for bs in batch_sizes[m]:
                repeats = args.repeats
                if device.type == "cpu" and m == "resnet29":
                    repeats = args.cpu_repeats if args.cpu_repeats is not None else min(args.repeats, 3)
                run_args = argparse.Namespace(**{**vars(args), "repeats": repeats})
                print(f"[{device.type} {m} B={bs} probe={args.probe_batch} repeats={repeats}]",
                      flush=True)
                rows.extend(bench(m, bs, device, run_args, classes, checks))
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    load = (f"1-minute load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the "
            f"end ({os.cpu_count()} CPUs); wall time {elapsed:.0f} s")
    result = table(rows)
    print()
    print(result)
    print()
    print(notes(rows))
    print(f"\n({load})")
    if args.profile:
        for device in devices:
            for m in models:
                for bs in batch_sizes[m]:
                    profile_variant(m, bs, device, args, classes)
    if args.write:
        skipped = [n for n, (mod, _) in OPTIONAL.items() if mod is None
                   and (args.variants is None or n in args.variants)]
        body = "\n".join([
            f"Command: `{command(argv)}`",
            "",
            f"Date: {now()}",
            "",
            f"Machine: {machine(details=True)}",
            "",
            f"Load: {load}.",
            "",
            "One training step (SGD lr 0.1, momentum 0.9, weight decay 5e-4; probe batch "
            f"{args.probe_batch}); median of the repeats, variants interleaved in one process. "
            "\"peak MiB\": tensor memory live during the step above what was live at its start "
            "(CPU: torch.profiler allocation events; CUDA: max_memory_allocated). See the "
            "docstring of benchmarks/meta_step.py for what each variant does."
            + (f" Not installed, not run: {', '.join(skipped)}." if skipped else ""),
            "",
            result,
            "",
            notes(rows),
        ] + (["- Same weights check (one identical state; weights = relu(-grad)/(sum + 1e-5)): "
              + " | ".join(checks)] if checks else []))
        write_section(args.write, args.section, body)
        print(f"wrote section '## {args.section}' to {args.write}")


if __name__ == "__main__":
    main()
