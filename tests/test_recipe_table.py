"""The recipe table (``recipes.SPECS``): what build(), the demo, the CLI and the benchmarks read.

Its defaults are read from each recipe itself (checked here against ``inspect.signature``, the
reference); build() fills the run's length and the strong view from the table, with no branch on
a method's name; one helper builds the pseudo-label stack of every recipe that has pseudo labels.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import make_problem

from iegkit import recipes
from iegkit.parts import ConsistencyPseudoLabeler, KLConsistency, ProbeMixUp


def _flip(images, generator=None):
    return images.flip(-1)


@pytest.mark.parametrize("method", recipes.method_names())
def test_the_tables_defaults_are_the_recipes_own(method):
    spec = recipes.SPECS[method]
    parameters = inspect.signature(spec.make).parameters
    want = {name: (recipes.REQUIRED if p.default is inspect.Parameter.empty else p.default)
            for name, p in parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in spec.fixed}
    got = spec.defaults
    assert list(got) == list(want)
    assert all(got[k] is want[k] or got[k] == want[k] for k in want)


def test_every_recipe_and_ablation_is_in_the_table():
    assert set(recipes.RECIPES) | set(recipes.BASELINES) <= set(recipes.SPECS)
    assert [f"ieg-{n}" for n in recipes.TABLE7] == [m for m in recipes.SPECS if m.startswith("ieg-")]
    assert recipes.required_options("glc") == ["transition"]
    assert recipes.required_options("small_loss") == ["noise_rate", "steps_per_epoch"]
    assert recipes.required_options("robust_ieg") == []  # build gives it the run's length


def _kinds(pipeline):
    return [type(part).__name__ for part in pipeline.parts]


@pytest.mark.parametrize("n", sorted(recipes.TABLE7))
def test_build_of_an_ablation_is_ieg_with_its_components_ramped_over_the_run(n):
    model, *_ = make_problem("cnn", batch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    built = recipes.build(f"ieg-{n}", model, opt, total_steps=7, strong_augment=_flip)
    direct = recipes.ieg(model, opt, components=recipes.TABLE7[n], rampup_steps=7,
                         strong_augment=_flip, plain_strong_augment=_flip)
    assert _kinds(built) == _kinds(direct)
    for part in built.parts:
        if isinstance(part, (ProbeMixUp, KLConsistency)):
            assert part.rampup_steps == 7
        if isinstance(part, ConsistencyPseudoLabeler):
            assert part.strong_augment is _flip
    with pytest.raises(ValueError, match=r"components: fixed by the method 'ieg-3'"):
        recipes.build("ieg-3", model, opt, total_steps=7, components={"UC"})


def test_build_passes_the_run_length_and_strong_view_only_where_the_table_says():
    model, *_ = make_problem("cnn", batch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    robust = recipes.build("robust_ieg", model, opt, total_steps=9, strong_augment=_flip,
                           components={"UC", "MC", "lambda"})  # no AA: the plain strong view
    labeler = next(p for p in robust.parts if isinstance(p, ConsistencyPseudoLabeler))
    assert labeler.strong_augment is _flip
    assert next(p for p in robust.parts if isinstance(p, KLConsistency)).rampup_steps == 9
    official = recipes.build("ieg", model, opt, total_steps=9, rampup_steps=None)
    assert next(p for p in official.parts if isinstance(p, KLConsistency)).rampup_steps is None
    plain = recipes.build("gce", model, opt, total_steps=9, strong_augment=_flip)  # ignored
    assert _kinds(plain) == ["GeneralizedCrossEntropy"]
    with pytest.raises(ValueError, match="method: unknown 'nope'"):
        recipes.build("nope", model, opt, total_steps=9)


@pytest.mark.parametrize("method", ["eg", "ieg", "robust_eg", "robust_ieg"])
def test_every_pseudo_label_recipe_uses_the_one_stack(method, monkeypatch):
    calls = []
    stack = recipes._pseudo_label_stack

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return stack(*args, **kwargs)

    monkeypatch.setattr(recipes, "_pseudo_label_stack", spy)
    model, *_ = make_problem("cnn", batch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recipes.build(method, model, opt, total_steps=5, strong_augment=_flip)
    assert len(calls) == 1
    robust = method.startswith("robust_")
    assert (calls[0].get("teacher_decay") is not None) == robust


def test_the_cli_offers_every_method_that_needs_no_more_options():
    from iegkit.cli import _parser

    for method in recipes.method_names():
        ok = not recipes.required_options(method)
        try:
            _parser().parse_args(["train", "--recipe", method, "--out", "x"])
        except SystemExit:
            assert not ok, method
        else:
            assert ok, method
    choices = [m for m in recipes.method_names() if not recipes.required_options(m)]
    assert set(choices) == set(recipes.method_names()) - {"glc", "small_loss"}
