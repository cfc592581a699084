"""Bad input gets a clear error naming the argument."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from conftest import make_problem
from torch import nn

import iegkit
from iegkit._core.meta_step import MetaBatch, PseudoLabelGraph, lookahead_meta_gradients
from iegkit.errors import NonFiniteLossError, UnsupportedOptimizerError
from iegkit.functional import meta_gradients
from iegkit.functional.collapse import pseudo_label_accuracy
from iegkit.functional.lookahead import check_lookahead_optimizer, trainable_parameters
from iegkit.functional.losses import check_logits, check_targets, mix_targets
from iegkit.functional.meta import MetaInit
from iegkit.functional.mixup import mix_coefficients, resample
from iegkit.functional.pseudo_label import guess_targets
from iegkit.functional.schedule import sgdr
from iegkit.parts.consistency_pseudo_labeler import ConsistencyPseudoLabeler
from iegkit.parts.distribution_alignment import DistributionAlignment
from iegkit.parts.probe_mixup import probe_mixup_pool
from iegkit.parts.sgdr_schedule import SGDRSchedule


@pytest.fixture
def setup():
    model, x, y, xp, yp, q = make_problem("cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, x, y, xp, yp, q


def test_label_out_of_range(setup):
    model, opt, x, y, xp, yp, q = setup
    y = y.clone()
    y[0] = 7
    with pytest.raises(ValueError, match=r"targets: labels must lie in \[0, 3\)"):
        meta_gradients(model, opt, x, y, xp, yp)
    with pytest.raises(ValueError, match="targets"):
        iegkit.recipes.l2r(model, opt)(x, y, xp, yp, step=0)


def test_negative_probe_label(setup):
    model, opt, x, y, xp, yp, q = setup
    yp = yp.clone()
    yp[0] = -1
    with pytest.raises(ValueError, match="probe_targets"):
        meta_gradients(model, opt, x, y, xp, yp)


def test_batch_target_length_mismatch(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match=r"targets: expected shape \(8,\)"):
        meta_gradients(model, opt, x, y[:5], xp, yp)
    with pytest.raises(ValueError, match="probe_targets"):
        meta_gradients(model, opt, x, y, xp, yp[:2])


def test_float_targets_rejected(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(TypeError, match="targets: expected integer class indices"):
        meta_gradients(model, opt, x, y.double(), xp, yp)


def test_empty_probe_batch(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match="probe_inputs: empty probe batch"):
        meta_gradients(model, opt, x, y, xp[:0], yp[:0])
    with pytest.raises(ValueError, match="probe_inputs"):
        iegkit.recipes.l2r(model, opt)(x, y, xp[:0], yp[:0], step=0)


def test_probe_without_probe_batch(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match="probe_inputs"):
        iegkit.recipes.l2r(model, opt)(x, y, step=0)


def test_probe_inputs_of_wrong_shape(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match=r"probe_inputs: expected examples of shape \(1, 8, 8\)"):
        meta_gradients(model, opt, x, y, xp[:, :, :4], yp)


def test_non_finite_loss(setup):
    model, opt, x, y, xp, yp, q = setup
    xp = xp.clone()
    xp[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="probe loss"):
        meta_gradients(model, opt, x, y, xp, yp)
    x = x.clone()
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError):
        meta_gradients(model, opt, x, y, xp.nan_to_num(), yp, weight_init=0.125)


def test_unsupported_optimizer(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(UnsupportedOptimizerError, match="RMSprop"):
        meta_gradients(model, torch.optim.RMSprop(model.parameters()), x, y, xp, yp)


def test_weight_init_shape_and_missing_pseudo_targets(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match="weight_init"):
        meta_gradients(model, opt, x, y, xp, yp, weight_init=torch.ones(3))
    with pytest.raises(ValueError, match="pseudo_targets: required"):
        meta_gradients(model, opt, x, y, xp, yp, label_init=0.9)
    with pytest.raises(ValueError, match="pseudo_targets: expected shape"):
        meta_gradients(model, opt, x, y, xp, yp, weight_init=0.1, label_init=0.9,
                       pseudo_targets=q[:, :2])


def test_bind_type_errors(setup):
    model, opt, *_ = setup
    with pytest.raises(TypeError, match="optimizer"):
        iegkit.compose(iegkit.MetaReweighter()).bind(model, "sgd")
    with pytest.raises(TypeError, match="model"):
        iegkit.compose(iegkit.MetaReweighter()).bind(opt, opt)


# --- Error messages, matched exactly --------------------------------------------------------------
# Found by mutation testing (docs/mutation.md): bad input gets a clear error that names the
# argument, spelled as the caller spells it, and says what was expected. The messages are matched
# case-sensitively, with the numbers (shapes, counts) they report. (The tangent pass's fallback
# warning is matched in tests/test_fallback.py.)


def _exactly(message: str) -> str:
    """A regex matching exactly ``message`` (case-sensitive, nothing before or after)."""
    return "^" + re.escape(message) + "$"


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


# -- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["peak_lr", "m_mul", "min_lr", "warmup_start_lr"])
def test_sgdr_real_arguments_are_named_with_the_type_received(name):
    """A non-number names the argument and the type it got."""
    settings = dict(peak_lr=0.1, first_cycle_steps=10)
    settings[name] = "0.1"
    with pytest.raises(TypeError, match=_exactly(f"{name}: expected a real number, got str")):
        sgdr(0, **settings)


@pytest.mark.parametrize("value,got", [(True, "bool"), (1.5, "float")])
def test_sgdr_integer_arguments_are_named_with_the_type_received(value, got):
    """A bool or a float for an integer setting names the argument and the type it got."""
    with pytest.raises(TypeError, match=_exactly(f"warmup_steps: expected an integer, got {got}")):
        sgdr(0, peak_lr=0.1, first_cycle_steps=10, warmup_steps=value)


def test_sgdr_schedule_errors_name_optimizer_step_and_the_group():
    """SGDRSchedule: a non-optimizer names ``optimizer``; a pure ``lrs_at`` query names only
    ``step`` (no param-group suffix), while a setting that fails against a group's peak at
    construction names that group; a foreign optimizer at contribute names ``optimizer`` and
    says how to build it."""
    with pytest.raises(TypeError,
                       match=_exactly("optimizer: expected a torch.optim.Optimizer, got str")):
        SGDRSchedule("sgd", 10)
    optimizer = _sgd(nn.Linear(3, 2))
    scheduler = SGDRSchedule(optimizer, 10)
    with pytest.raises(ValueError, match=_exactly("step: expected >= 0, got -1.0")):
        scheduler.lrs_at(-1)
    with pytest.raises(ValueError, match=_exactly(
            "min_lr: expected <= peak_lr (0.1), got 0.5 (peak_lr is the initial lr of "
            "param_groups[0])")):
        SGDRSchedule(optimizer, 10, min_lr=0.5)
    other = _sgd(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=_exactly(
            "optimizer: part 'sgdr_schedule' was built on a different optimizer than the "
            "pipeline's; build SGDRSchedule(pipeline_optimizer, ...)")):
        scheduler.contribute(SimpleNamespace(step=0, optimizer=other))


# -- look-ahead optimizers -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_amsgrad_is_refused_naming_optimizer_and_the_fix(cls):
    """amsgrad=True names ``optimizer``, the setting and the supported alternative."""
    optimizer = cls(nn.Linear(3, 2).parameters(), lr=0.1, amsgrad=True)
    with pytest.raises(UnsupportedOptimizerError, match=_exactly(
            "optimizer: Adam/AdamW with amsgrad=True is not supported by the exact look-ahead "
            "(its max() has no derivative at ties); use amsgrad=False")):
        check_lookahead_optimizer(optimizer)


def test_an_unsupported_optimizer_is_named_with_the_supported_ones():
    """Another optimizer class names ``optimizer``, its class and the torch.optim classes that
    are supported."""
    optimizer = torch.optim.RMSprop(nn.Linear(3, 2).parameters(), lr=0.1)
    with pytest.raises(UnsupportedOptimizerError, match=_exactly(
            "optimizer: RMSprop is not supported by the exact look-ahead; supported: "
            "torch.optim.SGD (any momentum, dampening, nesterov, weight_decay), "
            "torch.optim.Adam and torch.optim.AdamW (amsgrad=False)")):
        check_lookahead_optimizer(optimizer)


def test_an_optimizer_of_another_model_is_named():
    """A parameter the optimizer holds but the model lacks names ``optimizer`` and ``model``."""
    model = nn.Linear(3, 2)
    optimizer = _sgd(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=_exactly(
            "optimizer: holds a parameter that is not a parameter of model; pass the model whose "
            "parameters the optimizer updates")):
        trainable_parameters(model, optimizer)


# -- meta-gradient inputs ----------------------------------------------------------------------


def test_meta_gradient_batches_are_checked_naming_the_argument():
    """Empty batches, probe examples of another shape (with both shapes) and targets that are not
    a tensor name the argument."""
    model, x, y, xp, yp, q = make_problem("mlp")
    opt = _sgd(model)
    with pytest.raises(ValueError, match=_exactly("inputs: empty training batch")):
        meta_gradients(model, opt, x[:0], y[:0], xp, yp)
    with pytest.raises(ValueError, match=_exactly(
            "probe_inputs: empty probe batch; the meta step needs at least one trusted example")):
        meta_gradients(model, opt, x, y, xp[:0], yp[:0])
    wide = torch.cat([xp, xp[:, :1]], dim=1)  # (5, 7) probe examples against (8, 6) inputs
    with pytest.raises(ValueError, match=_exactly(
            "probe_inputs: expected examples of shape (6,) like inputs, got (7,)")):
        meta_gradients(model, opt, x, y, wide, yp)
    with pytest.raises(TypeError,
                       match=_exactly("targets: expected a tensor of class indices, got list")):
        meta_gradients(model, opt, x, y.tolist(), xp, yp)


def test_label_init_and_its_pseudo_targets_are_named():
    """A label_init of the wrong shape names ``label_init`` and the batch size; a label_init
    without pseudo targets names ``pseudo_targets`` and their (B, C) shape."""
    model, x, y, xp, yp, q = make_problem("mlp")
    opt = _sgd(model)
    with pytest.raises(ValueError,
                       match=_exactly("label_init: expected a scalar or shape (8,), got (3,)")):
        meta_gradients(model, opt, x, y, xp, yp, label_init=torch.full((3,), 0.9))
    with pytest.raises(ValueError, match=_exactly(
            "pseudo_targets: required (shape (B, C)) when label_init is given")):
        meta_gradients(model, opt, x, y, xp, yp, label_init=0.9)


def test_the_virtual_gradient_path_checks_pseudo_targets_and_labels():
    """With omega0 != 0 (the virtual gradient runs a forward of its own) pseudo targets of the
    wrong shape name ``pseudo_targets`` with both shapes, and labels beyond the model's outputs
    name ``targets`` and the number of classes."""
    model, x, y, xp, yp, q = make_problem("mlp")
    opt = _sgd(model)
    with pytest.raises(ValueError,
                       match=_exactly("pseudo_targets: expected shape (8, 4) (B, C), got (8, 3)")):
        meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125, label_init=0.9,
                       pseudo_targets=q[:, :3])
    bad = y.clone()
    bad[0] = 4
    with pytest.raises(ValueError, match=r"^targets: labels must lie in \[0, 4\) \(the model has "
                                         r"4 outputs\), got values in \[\d+, 4\]$"):
        meta_gradients(model, opt, x, bad, xp, yp, weight_init=0.125)


def test_pseudo_graph_without_training_logits_is_named():
    """Differentiating through the pseudo labels without the caller's forward names
    ``pseudo_graph`` and the missing ``training_logits``."""
    model, x, y, xp, yp, q = make_problem("mlp")
    graph = PseudoLabelGraph(fn=lambda z: torch.softmax(z, -1), views=())
    with pytest.raises(ValueError, match=_exactly(
            "pseudo_graph: differentiating through the pseudo labels needs training_logits (the "
            "caller's forward with graph)")):
        lookahead_meta_gradients(model, _sgd(model), MetaBatch(x, y, xp, yp, q),
                                 MetaInit(torch.full((8,), 0.125), torch.full((8,), 0.9)),
                                 pseudo_graph=graph)


def test_a_non_finite_loss_names_which_loss():
    """A NaN loss names the loss (the probe loss, or the look-ahead's weighted training loss) and
    why it must be finite."""
    model, x, y, xp, yp, q = make_problem("mlp")
    opt = _sgd(model)
    with pytest.raises(NonFiniteLossError, match=_exactly(
            "probe loss L_p(theta'): loss is nan; check the inputs and the learning rate (the meta "
            "step needs a finite loss)")):
        meta_gradients(model, opt, x, y, torch.full_like(xp, float("nan")), yp)
    with pytest.raises(NonFiniteLossError, match=_exactly(
            "look-ahead loss sum_i omega0_i l_i: loss is nan; check the inputs and the learning "
            "rate (the meta step needs a finite loss)")):
        meta_gradients(model, opt, torch.full_like(x, float("nan")), y, xp, yp, weight_init=0.125)


# -- losses, pseudo labels, mixing -------------------------------------------------------------


def test_small_functional_errors_name_the_argument():
    """Each names its argument: a label mix without pseudo targets, no views, an unknown mixing
    kind, an empty population, and labels of another batch size (with both sizes)."""
    targets = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=_exactly(
            "pseudo_targets: required (shape (B, C)) when a label mix is given")):
        mix_targets(targets, 3, label_mix=0.5)
    with pytest.raises(ValueError, match=_exactly("view_logits: expected at least one view")):
        guess_targets([])
    with pytest.raises(ValueError, match=_exactly(
            "kind: expected 'official', 'beta' or 'beta_max', got 'gaussian'")):
        mix_coefficients(4, kind="gaussian")
    with pytest.raises(ValueError, match=_exactly(
            "population: expected at least one example to resample from")):
        resample(3, 0)
    pseudo = torch.softmax(torch.randn(4, 3), -1)  # B = 4 != C = 3
    with pytest.raises(ValueError, match=_exactly("labels: expected 4 labels like pseudo, got 5")):
        pseudo_label_accuracy(pseudo, torch.zeros(5, dtype=torch.long))


def test_the_threshold_split_without_weights_is_named():
    """A threshold without the reweighter's weights names ``weights`` and the part they come
    from."""
    probe_x, probe_y = torch.randn(3, 2), torch.tensor([0, 1, 2])
    weak = strong = torch.randn(4, 2)
    pseudo = torch.softmax(torch.randn(4, 3), -1)
    with pytest.raises(ValueError, match=_exactly(
            "weights: the threshold split needs the MetaReweighter's weights")):
        probe_mixup_pool(probe_x, probe_y, weak, strong, pseudo, torch.tensor([0, 1, 2, 0]),
                         threshold=0.5)


# -- parts ---------------------------------------------------------------------------------------


def test_a_strong_augment_that_is_not_callable_is_named():
    """A non-callable names ``strong_augment`` and the expected signature."""
    with pytest.raises(TypeError, match=_exactly(
            "strong_augment: expected a callable (images, generator=None) -> images")):
        ConsistencyPseudoLabeler(5)


def test_the_ema_teacher_is_named_after_its_labeler():
    """The EMA teacher made at bind time carries the labeler's name, so its errors say which
    part they come from."""
    model = nn.Linear(3, 2)
    labeler = ConsistencyPseudoLabeler(lambda images, generator=None: images, teacher_decay=0.99,
                                       name="labeler")
    labeler.bind(model, _sgd(model))
    assert labeler.teacher.name == "labeler/teacher"
    with pytest.raises(ValueError, match=_exactly(
            "model: part 'labeler/teacher' averages another model than the pipeline's")):
        labeler.teacher.bind(nn.Linear(3, 2), _sgd(model))


@pytest.mark.parametrize("shape", [(8, 3), (2, 5, 3)])
def test_distribution_alignment_reports_the_class_dimension(shape):
    """Pseudo labels of another class count name ``num_classes`` and report both counts; the
    count reported is the last (class) dimension, whatever the batch dimensions."""
    pseudo = torch.softmax(torch.randn(*shape), -1)
    part = DistributionAlignment(4)
    with pytest.raises(ValueError, match=_exactly(
            "num_classes: DistributionAlignment was built for 4 classes, the pseudo labels have 3")):
        part.contribute(SimpleNamespace(get=lambda key: pseudo))


# --- Input checks on every path of the look-ahead -------------------------------------------------
# Found by mutation testing (docs/mutation.md).


def test_bad_inputs_are_named_on_every_path():
    model, x, y, xp, yp, q = make_problem("mlp")  # 4 classes
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = y.clone()
    bad[0] = 4  # == C
    for weight_init in (0.0, 0.125):  # without and with the virtual gradient's forward
        with pytest.raises(ValueError, match="targets"):
            meta_gradients(model, opt, x, bad, xp, yp, weight_init=weight_init)
        with pytest.raises(ValueError, match="pseudo_targets"):
            meta_gradients(model, opt, x, y, xp, yp, weight_init=weight_init, label_init=0.9,
                           pseudo_targets=torch.full((x.shape[0], 5), 0.2, dtype=x.dtype))
    with pytest.raises(ValueError, match="inputs"):
        meta_gradients(model, opt, x[:0], y[:0], xp, yp)
    with pytest.raises(ValueError, match="pseudo_graph"):
        lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp, q),
                                 MetaInit(torch.full((8,), 0.125, dtype=x.dtype),
                                          torch.full((8,), 0.9, dtype=x.dtype)),
                                 pseudo_graph=PseudoLabelGraph(lambda z: z, []))


@pytest.mark.parametrize("shape", [(8, 2, 4), (8, 1, 4), (4,)])  # (8, 2, 4): a broadcast error
def test_the_callers_logits_are_checked_before_the_virtual_gradient_uses_them(shape):
    """omega0 != 0 with the caller's forward (``training_logits``): logits that are not (B, C) are
    refused naming the model, and labels out of range naming the targets, before the virtual
    gradient broadcasts them against the labels' one-hot."""
    model, x, y, xp, yp, q = make_problem("mlp")  # 8 examples, 4 classes
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    init = MetaInit(torch.full((8,), 0.125, dtype=x.dtype), torch.full((8,), 0.9, dtype=x.dtype))
    per_view = shape[1] if len(shape) == 3 else None
    bad_logits = (model(x)[0] if per_view is None
                  else torch.cat([model(x)] * per_view, dim=1).reshape(shape))
    with pytest.raises(ValueError, match=re.escape(f"model: expected logits of shape (B, C), got "
                                                   f"{shape}")):
        lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp, q), init,
                                 training_logits=lambda: bad_logits)
    bad = y.clone()
    bad[0] = 4  # == C
    with pytest.raises(ValueError, match=r"^targets: labels must lie in \[0, 4\)"):
        lookahead_meta_gradients(model, opt, MetaBatch(x, bad, xp, yp, q), init,
                                 training_logits=lambda: model(x))


@pytest.mark.parametrize("omega0", [0.0, 0.125])  # with and without the virtual gradient
def test_pseudo_targets_are_checked_against_the_callers_logits(omega0):
    """With ``training_logits``, pseudo targets of the wrong shape are refused naming them, whether
    the virtual gradient reads the caller's logits (omega0 != 0) or only the contraction does."""
    model, x, y, xp, yp, q = make_problem("mlp")  # 8 examples, 4 classes
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    init = MetaInit(torch.full((8,), omega0, dtype=x.dtype), torch.full((8,), 0.9, dtype=x.dtype))
    with pytest.raises(ValueError, match="^pseudo_targets"):
        lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp, q[:, :3]), init,
                                 training_logits=lambda: model(x))


def test_check_targets_and_logits_edges():
    check_targets("t", torch.zeros(0, dtype=torch.long), 0, 3)  # an empty batch has no range
    check_targets("t", torch.tensor([2]), 1, 3)
    for labels in (torch.tensor([3]), torch.tensor([0, 3])):
        with pytest.raises(ValueError, match=r"t: labels must lie in \[0, 3\)"):
            check_targets("t", labels, labels.numel(), 3)
    with pytest.raises(TypeError, match="t: expected a tensor"):
        check_targets("t", [0, 1], 2, 3)
    for logits in (torch.zeros(4), torch.zeros(2, 3, 4)):
        with pytest.raises(ValueError, match="model: expected logits of shape"):
            check_logits(logits)
