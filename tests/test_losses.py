"""Losses: NumPy (and PyTorch) formulas for every reduction, label smoothing, log-space
targets, gradients and jit. Bad inputs are tested in test_loss_errors.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

from jnn import (
    binary_cross_entropy,
    huber,
    kl_divergence,
    mean_absolute_error,
    mean_squared_error,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
)

REDUCTIONS = {"mean": np.mean, "sum": np.sum, "none": lambda v: v}
BATCH = (2, 3)  # two batch axes, so "none" must keep both
NUM_CLASSES = 5


# --------------------------------------------------------------------------- NumPy references


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def np_huber(p, t, delta=1.0):
    d = np.abs(p - t)
    return np.where(d <= delta, 0.5 * d**2, delta * (d - 0.5 * delta))


def np_binary_cross_entropy(p, t, eps=1e-7):
    p = np.clip(p, eps, 1 - eps)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def np_softmax_cross_entropy(z, t, label_smoothing=0.0):
    t = (1 - label_smoothing) * t + label_smoothing / z.shape[-1]
    return -(t * np_log_softmax(z)).sum(-1)


def np_kl_divergence(log_p, t):
    # PyTorch's KLDivLoss(reduction="none"): t * (log t - log_p), 0 where t == 0.
    safe_t = np.where(t > 0, t, 1.0)
    return np.where(t > 0, t * (np.log(safe_t) - log_p), 0.0).sum(-1)


def np_kl_divergence_log_targets(log_p, log_t):
    # KLDivLoss(log_target=True): exp(log_t) * (log_t - log_p); 0 where log_t == -inf.
    present = np.isfinite(log_t)
    safe = np.where(present, log_t, 0.0)
    return np.where(present, np.exp(safe) * (safe - log_p), 0.0).sum(-1)


# --------------------------------------------------------------------------- inputs


def regression_inputs(rng):
    return rng.standard_normal(BATCH).astype(np.float32), rng.standard_normal(BATCH).astype(
        np.float32
    )


def probability_inputs(rng):
    p = rng.uniform(0.05, 0.95, BATCH).astype(np.float32)
    return p, (rng.uniform(size=BATCH) > 0.5).astype(np.float32)


def logit_binary_inputs(rng):
    z = 3 * rng.standard_normal(BATCH).astype(np.float32)
    return z, rng.uniform(size=BATCH).astype(np.float32)  # soft labels


def distribution_inputs(rng):
    z = rng.standard_normal(BATCH + (NUM_CLASSES,)).astype(np.float32)
    t = rng.uniform(size=BATCH + (NUM_CLASSES,)).astype(np.float32)
    return z, t / t.sum(-1, keepdims=True)


def integer_label_inputs(rng):
    z = rng.standard_normal(BATCH + (NUM_CLASSES,)).astype(np.float32)
    return z, rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)


def kl_inputs(rng):
    z, t = distribution_inputs(rng)
    t[0, 0, :2] = 0.0  # zero targets contribute nothing
    t = t / t.sum(-1, keepdims=True)
    return np_log_softmax(z).astype(np.float32), t


def kl_log_target_inputs(rng):
    log_p, t = kl_inputs(rng)
    with np.errstate(divide="ignore"):
        return log_p, np.log(t)  # -inf where t == 0


# (loss, inputs, NumPy reference of the per-example values, options)
CASES = {
    "mean_squared_error": (mean_squared_error, regression_inputs, lambda p, t: (p - t) ** 2, {}),
    "mean_absolute_error": (mean_absolute_error, regression_inputs, lambda p, t: abs(p - t), {}),
    "huber": (huber, regression_inputs, np_huber, {}),
    "huber_delta_0.5": (
        huber,
        regression_inputs,
        functools.partial(np_huber, delta=0.5),
        {"delta": 0.5},
    ),
    "binary_cross_entropy": (
        binary_cross_entropy,
        probability_inputs,
        np_binary_cross_entropy,
        {},
    ),
    "sigmoid_binary_cross_entropy": (
        sigmoid_binary_cross_entropy,
        logit_binary_inputs,
        lambda z, t: np_binary_cross_entropy(np_sigmoid(z), t, eps=0.0),
        {},
    ),
    "softmax_cross_entropy": (
        softmax_cross_entropy,
        distribution_inputs,
        np_softmax_cross_entropy,
        {},
    ),
    "softmax_cross_entropy_smoothed": (
        softmax_cross_entropy,
        distribution_inputs,
        functools.partial(np_softmax_cross_entropy, label_smoothing=0.2),
        {"label_smoothing": 0.2},
    ),
    "softmax_cross_entropy_with_integer_labels": (
        softmax_cross_entropy_with_integer_labels,
        integer_label_inputs,
        lambda z, y: -np.take_along_axis(np_log_softmax(z), y[..., None], -1)[..., 0],
        {},
    ),
    "softmax_cross_entropy_with_integer_labels_smoothed": (
        softmax_cross_entropy_with_integer_labels,
        integer_label_inputs,
        lambda z, y: np_softmax_cross_entropy(z, np.eye(NUM_CLASSES)[y], label_smoothing=0.1),
        {"label_smoothing": 0.1},
    ),
    "kl_divergence": (kl_divergence, kl_inputs, np_kl_divergence, {}),
    "kl_divergence_log_targets": (
        kl_divergence,
        kl_log_target_inputs,
        np_kl_divergence_log_targets,
        {"log_targets": True},
    ),
}

LOSSES = sorted({case[0] for case in CASES.values()}, key=lambda f: f.__name__)
CLASS_LOSSES = {
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
    kl_divergence,
}


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("reduction", sorted(REDUCTIONS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_matches_numpy(rng, case, reduction, transform):
    loss, make_inputs, reference, options = CASES[case]
    a, b = make_inputs(rng)
    got = transform(functools.partial(loss, reduction=reduction, **options))(a, b)
    per_example = reference(a.astype(np.float64), b if b.dtype.kind == "i" else b.astype(float))
    expected = REDUCTIONS[reduction](per_example)
    assert got.shape == np.shape(expected)
    if reduction == "none":
        assert got.shape == BATCH  # class losses drop the class axis, the others keep it
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", sorted(REDUCTIONS))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3, 1.0])
def test_integer_labels_equal_one_hot_targets(rng, reduction, label_smoothing):
    logits, labels = integer_label_inputs(rng)
    options = {"reduction": reduction, "label_smoothing": label_smoothing}
    from_integers = softmax_cross_entropy_with_integer_labels(logits, labels, **options)
    one_hot = jax.nn.one_hot(labels, NUM_CLASSES)
    np.testing.assert_allclose(
        from_integers, softmax_cross_entropy(logits, one_hot, **options), rtol=1e-6
    )


def test_full_label_smoothing_is_uniform_target_cross_entropy(rng):
    logits, labels = integer_label_inputs(rng)
    got = softmax_cross_entropy_with_integer_labels(
        logits, labels, label_smoothing=1.0, reduction="none"
    )
    np.testing.assert_allclose(got, -np_log_softmax(logits).mean(-1), rtol=1e-5)


def test_label_smoothing_can_be_traced(rng):
    logits, labels = integer_label_inputs(rng)

    @jax.jit
    def f(a):
        return softmax_cross_entropy_with_integer_labels(logits, labels, label_smoothing=a)

    expected = np_softmax_cross_entropy(logits, np.eye(NUM_CLASSES)[labels], 0.25).mean()
    np.testing.assert_allclose(f(0.25), expected, rtol=1e-5)


def test_binary_cross_entropy_on_probabilities_equals_on_logits(rng):
    logits, targets = logit_binary_inputs(rng)
    logits = logits / 3  # moderate, so clipping does not matter
    np.testing.assert_allclose(
        binary_cross_entropy(jax.nn.sigmoid(logits), targets),
        sigmoid_binary_cross_entropy(logits, targets),
        rtol=1e-5,
    )


def test_binary_cross_entropy_clips_confident_mistakes():
    loss = binary_cross_entropy(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]), eps=1e-3)
    np.testing.assert_allclose(loss, -np.log(1e-3), rtol=1e-4)
    assert np.isfinite(binary_cross_entropy(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0])))


def test_sigmoid_binary_cross_entropy_is_stable_for_large_logits():
    loss = sigmoid_binary_cross_entropy(jnp.array([100.0, -100.0]), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(loss, 100.0, rtol=1e-6)


def test_kl_divergence_of_equal_distributions_is_zero(rng):
    _, t = distribution_inputs(rng)
    np.testing.assert_allclose(kl_divergence(np.log(t), t, reduction="none"), 0.0, atol=1e-6)


def test_integer_and_boolean_inputs_are_promoted():
    loss = mean_squared_error(jnp.array([1, 2, 3]), jnp.array([1, 1, 1]))
    assert jnp.issubdtype(loss.dtype, jnp.floating)  # the default float dtype
    np.testing.assert_allclose(loss, 5 / 3, rtol=1e-6)
    np.testing.assert_allclose(
        sigmoid_binary_cross_entropy(jnp.zeros(2), jnp.array([True, False])), np.log(2), rtol=1e-6
    )


# --------------------------------------------------------------------------- gradients

# (loss, inputs, options, order): second order only where it adds something (curvature of
# the smooth losses), since numerical second derivatives are slow in eager float32.
GRADIENT_CASES = {
    "mean_squared_error": (mean_squared_error, regression_inputs, {}, 1),
    "huber": (huber, regression_inputs, {"delta": 10.0}, 2),  # quadratic in range
    "binary_cross_entropy": (binary_cross_entropy, probability_inputs, {}, 1),
    "sigmoid_binary_cross_entropy": (sigmoid_binary_cross_entropy, logit_binary_inputs, {}, 1),
    "softmax_cross_entropy": (
        softmax_cross_entropy,
        distribution_inputs,
        {"label_smoothing": 0.1},
        2,
    ),
    "softmax_cross_entropy_with_integer_labels": (
        softmax_cross_entropy_with_integer_labels,
        integer_label_inputs,
        {},
        1,
    ),
    "kl_divergence": (kl_divergence, kl_inputs, {}, 1),
    "kl_divergence_log_targets": (kl_divergence, kl_log_target_inputs, {"log_targets": True}, 1),
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradients(rng, case):
    loss, make_inputs, options, order = GRADIENT_CASES[case]
    a, b = make_inputs(rng)
    check_gradients(lambda x: loss(x, b, **options), (a,), order=order)


def test_huber_gradient_is_clipped_at_delta():
    grad = jax.grad(huber)(jnp.array([-5.0, 0.5, 5.0]), jnp.zeros(3), delta=2.0)
    np.testing.assert_allclose(grad, np.array([-2.0, 0.5, 2.0]) / 3, rtol=1e-6)


def test_softmax_cross_entropy_gradient_is_softmax_minus_targets(rng):
    logits, targets = distribution_inputs(rng)
    grad = jax.grad(softmax_cross_entropy)(logits, targets, reduction="sum")
    np.testing.assert_allclose(grad, np.exp(np_log_softmax(logits)) - targets, atol=1e-6)


# --------------------------------------------------------------------------- log-space targets


def test_kl_divergence_log_targets_equal_probability_targets(rng):
    log_p, t = kl_inputs(rng)
    with np.errstate(divide="ignore"):
        log_t = np.log(t)
    for reduction in REDUCTIONS:
        np.testing.assert_allclose(
            kl_divergence(log_p, log_t, log_targets=True, reduction=reduction),
            kl_divergence(log_p, t, reduction=reduction),
            rtol=1e-5,
            atol=1e-7,
        )


@pytest.mark.parametrize("log_targets", [False, True])
def test_kl_divergence_matches_torch_kl_div_in_float64(rng, log_targets):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    log_p = np_log_softmax(2 * rng.standard_normal((4, 5)))
    log_t = np_log_softmax(rng.standard_normal((4, 5)))
    t = log_t if log_targets else np.exp(log_t)
    tp = torch.tensor(log_p, requires_grad=True)
    tt = torch.tensor(t, requires_grad=True)
    expected = {
        "none": F.kl_div(tp, tt, reduction="none", log_target=log_targets).sum(-1),
        "mean": F.kl_div(tp, tt, reduction="batchmean", log_target=log_targets),
        "sum": F.kl_div(tp, tt, reduction="sum", log_target=log_targets),
    }
    torch_grads = torch.autograd.grad(expected["sum"], (tp, tt))
    with jax.enable_x64(True):
        a, b = jnp.asarray(log_p), jnp.asarray(t)
        for reduction, value in expected.items():
            got = kl_divergence(a, b, log_targets=log_targets, reduction=reduction)
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, value.detach().numpy(), rtol=1e-12, atol=1e-14)
        grads = jax.grad(
            lambda x, y: kl_divergence(x, y, log_targets=log_targets, reduction="sum"), (0, 1)
        )(a, b)
    for got, expected_grad in zip(grads, torch_grads, strict=True):
        np.testing.assert_allclose(got, expected_grad.numpy(), rtol=1e-12, atol=1e-14)


def test_kl_divergence_zero_log_target_probability_contributes_zero(rng):
    """PyTorch gives NaN for a log-target of -inf (0 * -inf); jnn counts it as 0, like a
    probability target of 0, with finite gradients."""
    log_p, log_t = kl_log_target_inputs(rng)
    assert np.isneginf(log_t).any()
    got = jax.jit(lambda a, b: kl_divergence(a, b, log_targets=True, reduction="none"))(
        log_p, log_t
    )
    assert np.all(np.isfinite(got))
    grads = jax.grad(lambda a, b: kl_divergence(a, b, log_targets=True), (0, 1))(log_p, log_t)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(grads[1][np.isneginf(log_t)], 0.0)


def test_kl_divergence_gradient_with_respect_to_log_targets(rng):
    log_p = np_log_softmax(rng.standard_normal((3, 4))).astype(np.float32)
    log_t = np_log_softmax(rng.standard_normal((3, 4))).astype(np.float32)
    # Through log_softmax, so the perturbed targets stay distributions (which are checked).
    check_gradients(
        lambda z: kl_divergence(log_p, jax.nn.log_softmax(z), log_targets=True), (log_t,)
    )
