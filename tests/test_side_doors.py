"""Parts talk through keys and the step context only (docs/architecture.md, "No side doors").

Read from the source with ``ast`` where the rule is about the code (private helpers imported
across packages, the strong view's name as a bare string), and by running parts where it is about
behaviour (the gate labels through ``keys.IMAGE_LABELER``; randomness is the pipeline's, so a
checkpoint restores every draw; the optimizer hooks are protocol members).
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch

import iegkit
from iegkit import keys
from iegkit.errors import MissingProviderError
from iegkit._core.part import PartBase, overrides
from conftest import make_problem

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "iegkit"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _package(path: Path) -> str:
    """A subpackage (``iegkit.diagnostics``) shares its private helpers; a top-level module
    (``iegkit.ema``) is its own package."""
    module = _module(path)
    if path.name == "__init__.py":
        return module
    parent = module.rsplit(".", 1)[0]
    return module if parent == "iegkit" else parent


def _private_imports_across_packages() -> list[str]:
    found = []
    packages = {_module(p): _package(p) for p in PACKAGE.rglob("*.py")}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("iegkit")):
                continue
            source_package = packages.get(node.module, node.module)
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and source_package != _package(path):
                    found.append(f"{_module(path)} imports {node.module}.{alias.name}")
    return found


def test_no_private_helper_is_imported_across_packages():
    assert _private_imports_across_packages() == []


def test_the_rule_sees_a_private_import(tmp_path, monkeypatch):
    """The scan is not vacuous: it reports a private import between two top-level modules."""
    fake = tmp_path / "iegkit"
    (fake / "sub").mkdir(parents=True)
    (fake / "a.py").write_text("def _helper():\n    return 1\n")
    (fake / "b.py").write_text("from iegkit.a import _helper\n")
    (fake / "sub" / "__init__.py").write_text("")
    (fake / "sub" / "c.py").write_text("def _shared():\n    return 2\n")
    (fake / "sub" / "d.py").write_text("from iegkit.sub.c import _shared\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _private_imports_across_packages() == ["iegkit.b imports iegkit.a._helper"]


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_the_strong_view_is_named_by_its_constant_only():
    """Its name lives beside its key (``keys.STRONG_VIEW_NAME``, ``keys.STRONG_VIEW``)."""
    bare = [f"{path.relative_to(ROOT)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
            if path.name != "keys.py"
            for line, value in _code_strings(path) if value == keys.STRONG_VIEW_NAME]
    assert bare == []
    assert keys.STRONG_VIEW == f"view:{keys.STRONG_VIEW_NAME}"


def test_every_protocol_member_is_declared():
    """The optimizer hooks are members of the protocol, with no-op defaults in PartBase; the
    pipeline registers a pre-hook only for a part that overrides the no-op."""
    for member in ("before_optimizer_step", "after_optimizer_step"):
        assert member in iegkit.Part.__protocol_attrs__ if hasattr(
            iegkit.Part, "__protocol_attrs__") else hasattr(iegkit.Part, member)
        assert callable(getattr(PartBase, member))
    warmup = iegkit.LRWarmup(5)
    assert overrides(warmup, "before_optimizer_step")
    assert not overrides(iegkit.CrossEntropy(), "before_optimizer_step")
    labeler = iegkit.ConsistencyPseudoLabeler(lambda x, generator=None: x)
    assert overrides(labeler, "after_optimizer_step")  # a method, not an attribute set in bind


class NoHooks:
    """A duck-typed part written before the optimizer hooks were protocol members."""

    name, requires, optional_requires, provides, refines, needs_probe = "old", (), (), (), (), False

    def setup(self, plan):
        pass

    def bind(self, model, optimizer):
        pass

    def contribute(self, ctx):
        return iegkit.Contribution(losses={"loss": ctx.logits().square().mean()})

    def after_optimizer_step(self, step):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_duck_typed_part_without_a_member_is_refused_by_name():
    with pytest.raises(TypeError, match=r"lacks \['before_optimizer_step'\].*PartBase"):
        iegkit.compose(NoHooks())


def _noise(images, generator=None):
    return images + torch.randn(images.shape, generator=generator, dtype=images.dtype)


def _gated_pipeline(seed=0, every=1):
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    labeler = iegkit.ConsistencyPseudoLabeler(_noise, probe_diagnostics_every=1)
    gate = iegkit.TrustedGate(x.float(), y, every=every)
    pipeline = iegkit.compose(gate, iegkit.KLConsistency(), labeler, model=model, optimizer=opt,
                              seed=seed)
    return pipeline, model, opt, (x, y, xp, yp)


def test_the_gate_reads_the_labeler_through_its_key_and_orders_after_it():
    pipeline, *_ , batch = _gated_pipeline()
    names = [part.name for part in pipeline.parts]
    assert names.index("pseudo_labeler") < names.index("trusted_gate")
    out = pipeline(*batch, step=0)
    assert "trusted_gate/holdout_accuracy" in out.metrics
    assert keys.IMAGE_LABELER not in out.values  # only tensors reach StepOutput.values
    pipeline.close()


def test_a_gate_without_a_labeler_is_refused_at_build_time():
    gate = iegkit.TrustedGate(torch.zeros(4, 3), torch.arange(4))
    with pytest.raises(MissingProviderError, match=keys.IMAGE_LABELER):
        iegkit.compose(gate, iegkit.CrossEntropy())


def test_passing_the_labeler_as_before_names_the_change():
    labeler = iegkit.ConsistencyPseudoLabeler(_noise)
    with pytest.raises(TypeError, match=r"holdout_inputs: .*keys.IMAGE_LABELER"):
        iegkit.TrustedGate(labeler, torch.arange(4))


def _step(pipeline, model, opt, batch, step):
    out = pipeline(*batch, step=step)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    return out


def test_every_draw_is_the_pipelines_and_a_checkpoint_restores_them():
    """The gate's and the probe diagnostic's draws come from pipeline generators (seeded by
    compose(seed=), saved by state_dict): a resumed run repeats the uninterrupted one exactly."""
    pipeline, model, opt, batch = _gated_pipeline(seed=3)
    assert {"trusted_gate", "pseudo_labeler/probe_diagnostics"} <= set(pipeline.generators)
    _step(pipeline, model, opt, batch, 0)
    saved = (copy.deepcopy(pipeline.state_dict()), copy.deepcopy(model.state_dict()),
             copy.deepcopy(opt.state_dict()))
    first = _step(pipeline, model, opt, batch, 1)
    pipeline.close()

    twin, twin_model, twin_opt, _ = _gated_pipeline(seed=3)
    twin.load_state_dict(saved[0])
    twin_model.load_state_dict(saved[1])
    twin_opt.load_state_dict(saved[2])
    again = _step(twin, twin_model, twin_opt, batch, 1)
    for name in ("trusted_gate/holdout_accuracy", "pseudo_labeler/probe_accuracy"):
        assert torch.equal(first.metrics[name], again.metrics[name]), name
    assert torch.equal(first.loss, again.loss)
    twin.close()


def test_the_probe_diagnostic_does_not_shift_the_training_draws():
    """Its stream is its own: measuring it every step or never leaves the loss bit for bit."""
    losses = []
    for every in (1, None):
        model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        labeler = iegkit.ConsistencyPseudoLabeler(_noise, probe_diagnostics_every=every)
        pipeline = iegkit.compose(labeler, iegkit.KLConsistency(), model=model, optimizer=opt)
        losses.append([_step(pipeline, model, opt, (x, y, xp, yp), s).loss for s in range(3)])
        pipeline.close()
    assert all(torch.equal(a, b) for a, b in zip(*losses))


def test_a_random_stream_named_like_a_part_is_refused():
    class Streams(PartBase):
        name = "streams"

        def setup(self, plan):
            plan.add_random_stream("streams/x", owner=self.name)

        def contribute(self, ctx):
            return iegkit.Contribution(losses={"loss": ctx.logits().square().mean()})

    other = iegkit.CrossEntropy()
    other.name = "streams/x"
    with pytest.raises(ValueError, match="random stream is named like a part"):
        iegkit.compose(Streams(), other)
    with pytest.raises(ValueError, match="random stream: expected a name 'p/<stream>'"):
        iegkit.Plan().add_random_stream("q/x", owner="p")
