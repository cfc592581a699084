"""Checkpoints of a whole training run: model, optimizer, pipeline (every part, schedule position,
generators), the global RNG and any extra state, with a format version.

Resuming from a checkpoint reproduces the next steps of an uninterrupted run bit for bit on CPU
(``tests/test_checkpoint.py``), provided the loop's own randomness (data order, probe sampler,
augmentation generators) is saved in ``extra`` too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from iegkit._core.compose import Pipeline

__all__ = ["CHECKPOINT_FORMAT_VERSION", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT_VERSION = 1


def _generator_states(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {name: g.get_state() for name, g in generators.items()}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    pipeline: Pipeline,
    step: int,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write everything needed to continue the run; atomic (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "pipeline": pipeline.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "generators": _generator_states(generators or {}),
        "extra": dict(extra or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    pipeline: Pipeline,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint in place; returns ``{"step": ..., "extra": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    # weights_only: loading an untrusted run folder must not run code (everything saved is tensors,
    # numbers, strings and containers of them)
    state = torch.load(path, map_location="cpu", weights_only=True)
    version = state.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"checkpoint: format_version {version!r} is not supported "
                         f"(expected {CHECKPOINT_FORMAT_VERSION})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    pipeline.load_state_dict(state["pipeline"])
    torch.set_rng_state(state["torch_rng"])
    for name, generator in (generators or {}).items():
        if name not in state["generators"]:
            raise ValueError(f"checkpoint: no state for generator '{name}'")
        generator.set_state(state["generators"][name])
    return {"step": state["step"], "extra": state["extra"]}
