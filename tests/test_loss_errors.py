"""Losses refuse bad options, shapes and dtypes with precise messages naming the likely
cause (bad values: test_loss_values.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS

from jnn import (
    accuracy,
    binary_cross_entropy,
    huber,
    kl_divergence,
    mean_absolute_error,
    mean_squared_error,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
    top_k_accuracy,
)

LOSSES = [
    binary_cross_entropy,
    huber,
    kl_divergence,
    mean_absolute_error,
    mean_squared_error,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
]
CE = "softmax_cross_entropy_with_integer_labels"


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


# --------------------------------------------------------------------------- options and shapes


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("reduction", "error", "hint"),
    [
        ("avg", ValueError, r"$"),
        ("MEAN", ValueError, r" Hint: the names are lower case: 'mean'\."),
        (
            "batchmean",
            ValueError,
            r" Hint: 'mean' already averages over examples \(distributions\), like "
            r"PyTorch's 'batchmean'\.",
        ),
        (None, TypeError, r" Hint: for per-example values pass the string 'none'\."),
        (1, TypeError, r"$"),
    ],
)
def test_unknown_reduction(loss, reduction, error, hint):
    message = (
        rf"^{loss.__name__}: expected reduction 'mean', 'sum' or 'none', got {reduction!r}\." + hint
    )
    with pytest.raises(error, match=message):
        loss(jnp.zeros((4, 3)), jnp.zeros((4, 3)), reduction=reduction)


@pytest.mark.parametrize(
    "loss",
    [
        mean_squared_error,
        mean_absolute_error,
        huber,
        binary_cross_entropy,
        sigmoid_binary_cross_entropy,
        kl_divergence,
    ],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_elementwise_losses_refuse_broadcasting(loss, transform):
    first = {
        binary_cross_entropy: "probabilities",
        sigmoid_binary_cross_entropy: "logits",
        kl_divergence: "log_predictions",
    }.get(loss, "predictions")
    message = (
        rf"^{loss.__name__}: expected targets of shape \(4,\) like the {first}, got \(4, 1\)\. "
        rf"Hint: reshape them to match, e.g\. targets\.reshape\({first}\.shape\)\. "
        r"Broadcasting is not applied: it would silently give shape \(4, 4\)\."
    )
    with pytest.raises(ValueError, match=message):
        transform(loss)(jnp.zeros(4), jnp.zeros((4, 1)))


def test_elementwise_shape_error_with_different_sizes():
    with pytest.raises(
        ValueError,
        match=r"mean_squared_error: expected targets of shape \(4, 3\) like the predictions, "
        r"got \(5, 3\)\. Hint: targets need one value per element of predictions\.$",
    ):
        mean_squared_error(jnp.zeros((4, 3)), jnp.zeros((5, 3)))


def test_softmax_cross_entropy_with_integer_targets_points_to_the_integer_version():
    with pytest.raises(
        ValueError,
        match=r"softmax_cross_entropy: expected targets of shape \(32, 10\) like the logits, "
        r"got \(32,\)\. Hint: for integer class labels use "
        r"softmax_cross_entropy_with_integer_labels, or one-hot encode them with "
        r"jax\.nn\.one_hot\(labels, 10\)\.",
    ):
        softmax_cross_entropy(jnp.zeros((32, 10)), jnp.zeros(32, jnp.int32))


def test_softmax_cross_entropy_other_shape_error():
    with pytest.raises(
        ValueError,
        match=r"softmax_cross_entropy: expected targets of shape \(4, 3\) like the logits, "
        r"got \(4, 5\)\. Hint: targets hold one probability per class",
    ):
        softmax_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 5)))


@pytest.mark.parametrize("loss", [softmax_cross_entropy, kl_divergence], ids=lambda f: f.__name__)
def test_class_losses_need_a_class_axis(loss):
    first = "log_predictions" if loss is kl_divergence else "logits"
    with pytest.raises(
        ValueError,
        match=rf"{loss.__name__}: expected {first} of shape \[\.\.\., num_classes\] "
        r"\(at least 1-D\), got \(\)\.",
    ):
        loss(jnp.float32(0.0), jnp.float32(1.0))


def test_integer_labels_need_a_class_axis():
    with pytest.raises(
        ValueError,
        match=r"softmax_cross_entropy_with_integer_labels: expected logits of shape "
        r"\[\.\.\., num_classes\] \(at least 1-D\), got \(\)\.",
    ):
        softmax_cross_entropy_with_integer_labels(jnp.float32(0.0), jnp.int32(0))


@pytest.mark.parametrize(
    ("labels_shape", "hint"),
    [
        ((8, 3), r"for one-hot or soft targets use softmax_cross_entropy\."),
        ((8, 1), r"drop the trailing axis, e\.g\. labels\.squeeze\(-1\)\."),
        ((4,), r"labels hold one class index per example\."),
    ],
)
def test_integer_labels_shape_errors(labels_shape, hint):
    message = (
        r"softmax_cross_entropy_with_integer_labels: expected labels of shape \(8,\) "
        rf"\(the logits' shape without the class axis\), got {re_shape(labels_shape)}\. "
        rf"Hint: {hint}"
    )
    with pytest.raises(ValueError, match=message):
        softmax_cross_entropy_with_integer_labels(jnp.zeros((8, 3)), jnp.zeros(labels_shape, int))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_integer_labels_dtype_error(transform):
    with pytest.raises(
        TypeError,
        match=r"softmax_cross_entropy_with_integer_labels: expected integer labels, got dtype "
        r"float32\. Hint: cast class indices with labels\.astype\(jnp\.int32\)",
    ):
        transform(softmax_cross_entropy_with_integer_labels)(
            jnp.zeros((4, 3)), jnp.zeros(4, jnp.float32)
        )


@pytest.mark.parametrize(
    "loss",
    [softmax_cross_entropy, softmax_cross_entropy_with_integer_labels],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("label_smoothing", [-0.1, 1.5])
def test_label_smoothing_out_of_range(loss, label_smoothing):
    targets = jnp.zeros(4, jnp.int32) if loss is not softmax_cross_entropy else jnp.zeros((4, 3))
    with pytest.raises(
        ValueError,
        match=rf"{loss.__name__}: expected label_smoothing in \[0, 1\], got {label_smoothing}\.",
    ):
        loss(jnp.zeros((4, 3)), targets, label_smoothing=label_smoothing)


@pytest.mark.parametrize("delta", [0.0, -1.0])
def test_huber_delta_must_be_positive(delta):
    with pytest.raises(ValueError, match=rf"huber: expected a positive delta, got {delta}\."):
        huber(jnp.zeros(3), jnp.zeros(3), delta=delta)


@pytest.mark.parametrize("eps", [-1e-3, 0.5])
def test_binary_cross_entropy_eps_range(eps):
    with pytest.raises(
        ValueError, match=rf"binary_cross_entropy: expected eps in \[0, 0\.5\), got {eps}\."
    ):
        binary_cross_entropy(jnp.full(3, 0.5), jnp.zeros(3), eps=eps)


@pytest.mark.parametrize("label_smoothing", ["0.1", None, True])
def test_label_smoothing_of_the_wrong_kind(label_smoothing):
    with pytest.raises(
        TypeError,
        match=r"softmax_cross_entropy: expected label_smoothing to be a number "
        r"\(label_smoothing in \[0, 1\]\), got",
    ):
        softmax_cross_entropy(jnp.zeros((4, 3)), jnp.eye(3)[:4], label_smoothing=label_smoothing)


@pytest.mark.parametrize("label_smoothing", [-0.5, 1.5])
def test_traced_label_smoothing_out_of_range_gives_nan(label_smoothing):
    logits, labels = jnp.zeros((4, 3)), jnp.array([0, 1, 2, 0])
    for loss, targets in [
        (softmax_cross_entropy_with_integer_labels, labels),
        (softmax_cross_entropy, jax.nn.one_hot(labels, 3)),
    ]:
        got = jax.jit(lambda a, t=targets, f=loss: f(logits, t, label_smoothing=a))(label_smoothing)
        assert np.isnan(got), loss.__name__


def test_huber_delta_kind_and_traced_value():
    with pytest.raises(
        TypeError, match=r"^huber: expected delta to be a number \(a positive delta\), got '1'"
    ):
        huber(jnp.zeros(3), jnp.zeros(3), delta="1")
    with pytest.raises(ValueError, match=r"^huber: expected a positive delta, got"):
        huber(jnp.zeros(3), jnp.zeros(3), delta=np.float32(0.0))
    assert huber(jnp.ones(3), jnp.zeros(3), delta=np.float32(2.0)) == 0.5  # NumPy floats
    bad = jax.jit(lambda d: huber(jnp.ones(3), jnp.zeros(3), delta=d))(-1.0)
    assert np.isnan(bad)


def test_binary_cross_entropy_eps_kind():
    with pytest.raises(TypeError, match=r"^binary_cross_entropy: expected eps to be a number"):
        binary_cross_entropy(jnp.full(3, 0.5), jnp.zeros(3), eps=None)


# --------------------------------------------------------------------------- likely causes


def test_predictions_from_a_one_output_layer_name_the_cause():
    with pytest.raises(
        ValueError,
        match=r"^mean_squared_error: expected targets of shape \(8, 1\) like the "
        r"predictions, got \(8,\)\. .* Likely cause: predictions of shape \(8, 1\) come "
        r"from a last layer with one output, e\.g\. Dense\(1\): use predictions\[\.\.\., 0\]\.$",
    ):
        mean_squared_error(jnp.zeros((8, 1)), jnp.zeros(8))
    with pytest.raises(
        ValueError,
        match=r"Likely cause: drop the trailing axis of the targets: targets\[\.\.\., 0\]",
    ):
        mean_absolute_error(jnp.zeros(8), jnp.zeros((8, 1)))


def test_class_labels_given_to_a_regression_loss():
    with pytest.raises(
        ValueError,
        match=r"Likely cause: integer targets \(8,\) against predictions \(8, 3\) look like "
        r"class labels and per-class scores: use softmax_cross_entropy_with_integer_labels\.",
    ):
        mean_squared_error(jnp.zeros((8, 3)), jnp.zeros(8, jnp.int32))


@pytest.mark.parametrize("loss", [binary_cross_entropy, sigmoid_binary_cross_entropy])
def test_two_scores_per_example_given_to_a_binary_loss(loss):
    with pytest.raises(
        ValueError,
        match=rf"^{loss.__name__}: expected targets of shape \(8, 2\) .* Likely cause: 2 "
        r"(logits|probabilities) per example are scores of 2 classes: use "
        r"softmax_cross_entropy_with_integer_labels",
    ):
        loss(jnp.full((8, 2), 0.5), jnp.zeros(8))


def test_one_logit_per_example_given_to_integer_label_cross_entropy():
    with pytest.raises(
        ValueError,
        match=rf"^{CE}: expected labels of shape \(\) .*got \(8,\)\. Hint: for one-hot or soft "
        r"targets use softmax_cross_entropy\. If the logits hold one score per example \(a "
        r"binary decision\), use sigmoid_binary_cross_entropy\.",
    ):
        softmax_cross_entropy_with_integer_labels(jnp.zeros(8), jnp.zeros(8, jnp.int32))


def test_class_labels_with_a_trailing_axis_given_as_soft_targets():
    with pytest.raises(
        ValueError,
        match=r"Hint: targets with a trailing axis of 1 are class labels: use "
        r"softmax_cross_entropy_with_integer_labels\(logits, labels\[\.\.\., 0\]\)\.",
    ):
        softmax_cross_entropy(jnp.zeros((8, 3)), jnp.zeros((8, 1), jnp.int32))


@pytest.mark.parametrize(
    ("loss", "shape", "targets", "what"),
    [
        (sigmoid_binary_cross_entropy, (4,), np.zeros(4, np.float32), "logits"),
        (softmax_cross_entropy, (4, 3), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], "logits"),
        (softmax_cross_entropy_with_integer_labels, (4, 3), np.zeros(4, np.int32), "logits"),
        (kl_divergence, (4, 3), np.full((4, 3), 1 / 3, np.float32), "log_predictions"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_integer_scores_are_refused(loss, shape, targets, what, transform):
    with pytest.raises(
        TypeError,
        match=rf"^{loss.__name__}: expected floating-point {what}, got dtype int32\. Hint: .*"
        r"If they really are scores, cast them first, e\.g\. x\.astype\(jnp\.float32\)\.",
    ):
        transform(loss)(jnp.zeros(shape, jnp.int32), targets)


@pytest.mark.parametrize("loss", [*LOSSES, accuracy, top_k_accuracy], ids=lambda f: f.__name__)
@pytest.mark.parametrize("position", [0, 1], ids=["scores", "targets"])
@pytest.mark.parametrize("bad", [None, "0.5"], ids=["None", "str"])
def test_inputs_that_are_not_arrays_are_named(loss, position, bad):
    args = [jnp.full((4, 3), 0.2), jnp.full((4, 3), 0.2)]
    args[position] = bad
    with pytest.raises(
        TypeError, match=rf"^{loss.__name__}: expected an array as \w+, got {type(bad).__name__}"
    ):
        loss(*args)
