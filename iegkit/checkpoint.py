"""Checkpoints of a whole training run: model, optimizer, pipeline (every part, schedule position,
generators), the global RNG and any extra state, with a format version.

Resuming from a checkpoint reproduces the next steps of an uninterrupted run bit for bit on CPU
(``tests/test_checkpoint.py``), provided the loop's own randomness (data order, probe sampler,
augmentation generators) is saved in ``extra`` too.

Loading is transactional: everything is checked before anything is written, and a write that still
fails midway is undone, so a checkpoint that does not fit leaves the run exactly as it was.
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

from iegkit._core.compose import FORMAT_VERSION as PIPELINE_FORMAT_VERSION
from iegkit._core.compose import Pipeline
from iegkit.ema import training_values

__all__ = ["CHECKPOINT_FORMAT_VERSION", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT_VERSION = 1

_ENTRIES = ("format_version", "step", "model", "optimizer", "pipeline", "torch_rng", "generators",
            "extra")

# Optimizer state entries shaped like their parameter (SGD, Adam(W), RMSprop, Adagrad, Adadelta,
# ASGD, Rprop); other entries (a step count, LBFGS's flat history, Adafactor's factors) are not.
_PARAMETER_SHAPED = frozenset({"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq",
                               "square_avg", "grad_avg", "acc_delta", "sum", "ax", "prev",
                               "step_size"})


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt, or that does not fit what it is loaded into; the message
    names the file and what differs. Nothing was changed."""


def _generator_states(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {name: g.get_state() for name, g in generators.items()}


def _training_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The model's state, with the training values of parameters an average is swapped into now
    (inside ``evaluation_weights``): a checkpoint resumes training, so it must not hold the
    average (the average itself is saved in the pipeline's state)."""
    state = model.state_dict()
    swapped = training_values()
    if swapped:
        for name, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) in swapped:
                state[name] = swapped[id(tensor)]
    return state


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
    """Write everything needed to continue the run; atomic (a temporary file, then a rename).

    Inside ``with iegkit.evaluation_weights(pipeline):`` it saves the training weights, not the
    average swapped into the model for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": int(step),
        "model": _training_state_dict(model),
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
    """Restore a checkpoint in place; returns ``{"step": ..., "extra": ...}``.

    Transactional: the file's integrity and format, every model tensor's name and shape, the
    optimizer's parameter groups and state shapes, the pipeline's parts and their states (loaded
    into copies first) and the named generators are checked before anything is written; a write
    that still fails is undone. Raises CheckpointError naming the file and what differs (a file
    holding code to run: pickle.UnpicklingError), and nothing is changed."""
    path = Path(path)
    generators = dict(generators or {})
    _refuse_swapped_model(path, model)
    state = _read(path)
    _check_entries(path, state)
    _check_model(path, state["model"], model)
    _check_optimizer(path, state["optimizer"], optimizer, model)
    _check_pipeline(path, state["pipeline"], pipeline)
    _check_generators(path, state, generators)
    _write(path, state, model, optimizer, pipeline, generators)
    return {"step": state["step"], "extra": state["extra"]}


def _refuse(path: Path, detail: str) -> NoReturn:
    raise CheckpointError(f"checkpoint {path}: {detail}; nothing was loaded")


def _listed(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


def _refuse_swapped_model(path: Path, model: torch.nn.Module) -> None:
    # the end of the evaluation_weights block would overwrite the loaded weights
    swapped = training_values()
    if any(id(p) in swapped for p in model.parameters()):
        raise RuntimeError(
            f"checkpoint {path}: the model holds averaged weights (inside evaluation_weights() or "
            "average_parameters()), which the end of that block would overwrite; load the "
            "checkpoint outside the block"
        )


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    # weights_only: loading an untrusted run folder must not run code (everything saved is tensors,
    # numbers, strings and containers of them)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"checkpoint {path}: refused: it holds objects other than tensors, numbers, strings "
            f"and containers of them (loading it could run code), or it is corrupt ({error})"
        ) from error
    except Exception as error:  # torch raises EOFError, OSError, RuntimeError, KeyError here
        cause = str(error).splitlines()[0][:120] if str(error) else ""
        _refuse(path, f"the file is corrupt or not a checkpoint (empty, truncated, or another "
                      f"format: {type(error).__name__}: {cause})")


def _check_entries(path: Path, state: Any) -> None:
    if not isinstance(state, Mapping):
        _refuse(path, f"not an iegkit checkpoint (it holds a {type(state).__name__})")
    missing = [key for key in _ENTRIES if key not in state]
    if missing:
        _refuse(path, f"not an iegkit checkpoint (no {missing})")
    version = state["format_version"]
    if version != CHECKPOINT_FORMAT_VERSION:
        _refuse(path, f"format_version {version!r} is not supported (expected "
                      f"{CHECKPOINT_FORMAT_VERSION})")
    if isinstance(state["step"], bool) or not isinstance(state["step"], int):
        _refuse(path, f"step is a {type(state['step']).__name__}, expected an int")


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _check_model(path: Path, saved: Any, model: torch.nn.Module) -> None:
    if not isinstance(saved, Mapping):
        _refuse(path, "its model entry is not a state dict")
    current = model.state_dict()
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    if missing or unexpected:
        _refuse(path, f"model tensors differ: the model's {_listed(missing)} are not saved, the "
                      f"saved {_listed(unexpected)} are not the model's")
    for name, value in current.items():
        if not isinstance(value, Tensor):
            continue  # a module's extra state: its own load checks it
        if not isinstance(saved[name], Tensor):
            _refuse(path, f"model entry {name!r} is a {type(saved[name]).__name__}, not a tensor")
        if saved[name].shape != value.shape:
            _refuse(path, f"model tensor {name!r} has shape {_shape(saved[name])}, the model's is "
                          f"{_shape(value)}")


def _check_optimizer(path: Path, saved: Any, optimizer: torch.optim.Optimizer,
                     model: torch.nn.Module) -> None:
    if not isinstance(saved, Mapping) or not {"state", "param_groups"} <= set(saved):
        _refuse(path, "its optimizer entry is not an optimizer state dict")
    groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    if len(saved_groups) != len(groups):
        _refuse(path, f"the optimizer has {len(saved_groups)} parameter groups saved, "
                      f"{len(groups)} now")
    parameters: dict[Any, Tensor] = {}
    for i, (saved_group, group) in enumerate(zip(saved_groups, groups)):
        if len(saved_group["params"]) != len(group["params"]):
            _refuse(path, f"optimizer parameter group {i} holds {len(saved_group['params'])} "
                          f"parameters saved, {len(group['params'])} now")
        parameters.update(zip(saved_group["params"], group["params"]))
    names = {id(p): name for name, p in model.named_parameters()}
    for index, entries in saved["state"].items():
        if index not in parameters:
            _refuse(path, f"optimizer state for parameter {index!r}, which no group holds")
        parameter = parameters[index]
        label = names.get(id(parameter), f"parameter {index}")
        for key, value in entries.items():
            if (key in _PARAMETER_SHAPED and isinstance(value, Tensor)
                    and value.shape != parameter.shape):
                _refuse(path, f"optimizer state {key!r} of {label!r} has shape {_shape(value)}, "
                              f"the parameter's is {_shape(parameter)}")


def _check_pipeline(path: Path, saved: Any, pipeline: Pipeline) -> None:
    """What ``pipeline.load_state_dict`` checks, and each part's own load run on a copy of it."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("parts"), Mapping):
        _refuse(path, "its pipeline entry is not a pipeline state dict")
    if saved.get("format_version") != PIPELINE_FORMAT_VERSION:
        _refuse(path, f"its pipeline state has format_version {saved.get('format_version')!r}, "
                      f"expected {PIPELINE_FORMAT_VERSION}")
    names, saved_names = {p.name for p in pipeline.parts}, set(saved["parts"])
    if names != saved_names:
        _refuse(path, f"saved by a pipeline of parts {sorted(saved_names)}, this one has "
                      f"{sorted(names)}; load it into a pipeline built by the same recipe")
    saved_generators = saved.get("generators", {})
    for name, generator in pipeline.generators.items():
        if name in saved_generators:
            _check_rng_state(path, f"the generator of part {name!r}", saved_generators[name],
                             generator.get_state())
    for part in _part_copies(pipeline):
        try:
            part.load_state_dict(saved["parts"][part.name])
        except Exception as error:
            raise CheckpointError(f"checkpoint {path}: part {part.name!r} refuses its saved state: "
                                  f"{error}; nothing was loaded") from error


def _part_copies(pipeline: Pipeline) -> list[Any]:
    """Copies of the parts to load the saved states into without touching the pipeline; the model
    and optimizer are shared (a part's load_state_dict reads them, never writes them). Where a part
    cannot be copied (it caches a non-leaf tensor, a lock): [], and a failing write is undone."""
    shared = {id(obj): obj for obj in (pipeline, pipeline.model, pipeline.optimizer,
                                       pipeline.forward_model) if obj is not None}
    try:
        return copy.deepcopy(pipeline.parts, shared)
    except Exception:
        return []


def _check_rng_state(path: Path, what: str, saved: Any, current: Tensor) -> None:
    if (not isinstance(saved, Tensor) or saved.dtype != current.dtype
            or saved.shape != current.shape):
        _refuse(path, f"{what}: the saved state does not fit (expected a {current.dtype} tensor "
                      f"of shape {_shape(current)}, got {getattr(saved, 'shape', type(saved))})")


def _check_generators(path: Path, state: Mapping[str, Any],
                      generators: Mapping[str, torch.Generator]) -> None:
    _check_rng_state(path, "torch_rng", state["torch_rng"], torch.get_rng_state())
    saved = state["generators"]
    for name, generator in generators.items():
        if name not in saved:
            _refuse(path, f"no state for generator {name!r} (saved: {sorted(saved)})")
        _check_rng_state(path, f"generator {name!r}", saved[name], generator.get_state())


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, pipeline: Pipeline,
              generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    return {
        "model": {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
                  for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "pipeline": copy.deepcopy(pipeline.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "generators": _generator_states(generators),
    }


def _put(state: Mapping[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         pipeline: Pipeline, generators: Mapping[str, torch.Generator]) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    pipeline.load_state_dict(state["pipeline"])
    torch.set_rng_state(state["torch_rng"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])


def _write(path: Path, state: Mapping[str, Any], model: torch.nn.Module,
           optimizer: torch.optim.Optimizer, pipeline: Pipeline,
           generators: Mapping[str, torch.Generator]) -> None:
    before = _snapshot(model, optimizer, pipeline, generators)
    try:
        _put(state, model, optimizer, pipeline, generators)
    except Exception as error:
        failure = f"checkpoint {path}: loading failed midway ({type(error).__name__}: {error})"
        try:
            _put(before, model, optimizer, pipeline, generators)  # undo what was written
        except Exception as undo_error:
            raise CheckpointError(f"{failure}, and undoing it failed too ({undo_error}): the run "
                                  "is in an unknown state, rebuild it") from error
        raise CheckpointError(f"{failure}; what was written is restored") from error
