"""Losses check the values they receive: labels out of range, probabilities outside
[0, 1], distributions that do not sum to 1, log-probabilities above 0. Concrete values
raise naming the offending entries; under jit the affected examples are NaN, never a
finite wrong loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn import (
    binary_cross_entropy,
    kl_divergence,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
)

CE = "softmax_cross_entropy_with_integer_labels"


def jit_none(loss, **options):
    """The loss under jit with reduction="none": values are traced, so never checked."""
    return jax.jit(lambda a, b: loss(a, b, reduction="none", **options))


# --------------------------------------------------------------------------- label values


@pytest.mark.parametrize(
    ("labels", "got", "hint"),
    [
        (
            [0, -1, 2, 1],
            r"-1 at index 1 \(1 of 4 labels\)",
            r"if negative labels mark padding to ignore",
        ),
        ([1, 2, 3, 3], r"3 at index 2, 3 at index 3 \(2 of 4 labels\)", r"labels run from 1 to 3"),
        ([0, 7, 2, 1], r"7 at index 1 \(1 of 4 labels\)", r"the scores have 3 classes"),
    ],
)
def test_labels_out_of_range_raise_naming_them(labels, got, hint):
    with pytest.raises(
        ValueError,
        match=rf"^{CE}: expected labels in \[0, 3\) \(the logits have 3 classes on their last "
        rf"axis\), got {got}\. Hint: {hint}",
    ):
        softmax_cross_entropy_with_integer_labels(jnp.zeros((4, 3)), jnp.array(labels))


def test_labels_out_of_range_name_positions_in_several_axes():
    labels = np.zeros((2, 5), np.int32)
    labels[1, 3] = 9
    with pytest.raises(ValueError, match=r"got 9 at index \(1, 3\) \(1 of 10 labels\)"):
        softmax_cross_entropy_with_integer_labels(jnp.zeros((2, 5, 4)), labels)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_labels_out_of_range_under_jit_give_nan_for_those_examples(rng, label_smoothing):
    logits = rng.standard_normal((5, 3)).astype(np.float32)
    labels = np.array([0, -1, 2, 3, 1], np.int32)  # -1 would read class 2, 3 would clip
    loss = softmax_cross_entropy_with_integer_labels
    got = jit_none(loss, label_smoothing=label_smoothing)(logits, labels)
    bad = np.array([False, True, False, True, False])
    assert np.all(np.isnan(got[bad])) and np.all(np.isfinite(got[~bad]))
    valid = loss(logits[~bad], labels[~bad], label_smoothing=label_smoothing, reduction="none")
    np.testing.assert_allclose(got[~bad], valid, rtol=1e-6)
    assert np.isnan(jax.jit(loss)(logits, labels))  # the mean: NaN, not a finite wrong loss
    grad = jax.jit(jax.grad(lambda z: loss(z, labels, reduction="sum")))(logits)
    np.testing.assert_array_equal(grad[bad], 0.0)  # no gradient from a bad label


# --------------------------------------------------------------------------- probabilities


def test_binary_cross_entropy_given_logits_points_to_the_logit_version():
    with pytest.raises(
        ValueError,
        match=r"^binary_cross_entropy: expected probabilities in \[0, 1\], got -2 at index 0, "
        r"3\.5 at index 2 \(2 of 3 probabilities\)\. Hint: these look like logits: use "
        r"sigmoid_binary_cross_entropy\(logits, targets\)",
    ):
        binary_cross_entropy(jnp.array([-2.0, 0.3, 3.5]), jnp.array([0.0, 1.0, 1.0]))


def test_binary_cross_entropy_outside_0_1_under_jit_gives_nan_not_a_clipped_value():
    probabilities = jnp.array([-2.0, 0.3, 3.5, 1.0])
    targets = jnp.array([0.0, 1.0, 1.0, 1.0])
    got = jit_none(binary_cross_entropy)(probabilities, targets)
    assert np.isnan(got[0]) and np.isnan(got[2])
    valid = np.array([1, 3])
    expected = binary_cross_entropy(probabilities[valid], targets[valid], reduction="none")
    np.testing.assert_allclose(got[valid], expected, rtol=1e-6)  # 1.0 is clipped, as before
    assert np.isnan(jax.jit(binary_cross_entropy)(probabilities, targets))


@pytest.mark.parametrize("loss", [binary_cross_entropy, sigmoid_binary_cross_entropy])
@pytest.mark.parametrize(
    ("targets", "hint"),
    [
        ([-1.0, 1.0, 1.0], r"labels in \{-1, 1\} become \{0, 1\} with \(targets \+ 1\) / 2\."),
        ([0.0, 2.0, 1.0], r"class indices 0\.\.K-1 .* softmax_cross_entropy_with_integer_labels"),
        ([0.0, 1.5, 1.0], r"binary targets are probabilities of the positive class\."),
    ],
)
def test_binary_targets_outside_0_1(loss, targets, hint):
    with pytest.raises(
        ValueError, match=rf"^{loss.__name__}: expected targets in \[0, 1\], got .* Hint: {hint}"
    ):
        loss(jnp.full(3, 0.5), jnp.array(targets))
    got = jit_none(loss)(jnp.full(3, 0.5), jnp.array(targets))
    assert np.isnan(got).sum() == 1


def test_nan_inputs_stay_nan_without_an_error():
    got = binary_cross_entropy(jnp.array([np.nan, 0.5]), jnp.array([1.0, 1.0]), reduction="none")
    assert np.isnan(got[0]) and np.isfinite(got[1])


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (
            [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
            r"expected targets summing to 1 over the last axis \(within 1e-03; a row of zeros "
            r"masks its example\), got 2 at index 0 \(1 of 2 row sums\)\. Hint: rows with "
            r"several 1s are several labels per example \(multi-label\): use "
            r"sigmoid_binary_cross_entropy",
        ),
        (
            [[0.2, 0.3, 0.4], [0.0, 1.0, 0.0]],
            r"expected targets summing to 1 .* got 0\.9 at index 0 \(1 of 2 row sums\)\. Hint: normalise them, e\.g\. "
            r"targets / targets\.sum\(-1, keepdims=True\)\.",
        ),
        (
            [[-0.5, 0.5, 1.0], [0.0, 1.0, 0.0]],
            r"expected targets >= 0 \(probabilities\), got -0\.5 at index \(0, 0\) \(1 of 6 "
            r"targets\)\. Hint: targets are probabilities: .* check the argument order, "
            r"softmax_cross_entropy\(logits, targets\)\.",
        ),
    ],
)
def test_soft_targets_must_be_distributions(targets, message):
    with pytest.raises(ValueError, match=rf"^softmax_cross_entropy: {message}"):
        softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array(targets))
    got = jit_none(softmax_cross_entropy)(jnp.zeros((2, 3)), jnp.array(targets))
    assert np.isnan(got[0]) and np.isfinite(got[1])


def test_soft_targets_accept_rows_of_zeros_as_masks():
    got = softmax_cross_entropy(
        jnp.zeros((2, 4)), jnp.array([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]), reduction="none"
    )
    np.testing.assert_allclose(got, [0.0, np.log(4)], rtol=1e-6)


# --------------------------------------------------------------------------- log space


def test_kl_divergence_given_probabilities_as_log_predictions():
    with pytest.raises(
        ValueError,
        match=r"^kl_divergence: expected log-probabilities \(<= 0\) as log_predictions, got "
        r"0\.2 at index 0, 0\.8 at index 1 \(2 of 2 log_predictions\)\. Hint: these look like "
        r"probabilities: pass jnp\.log\(predictions\)\.",
    ):
        kl_divergence(jnp.array([0.2, 0.8]), jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"Hint: these look like scores \(logits\): pass "):
        kl_divergence(jnp.array([2.0, -1.0]), jnp.array([0.5, 0.5]))


def test_kl_divergence_targets_in_the_wrong_space():
    log_p = jnp.log(jnp.array([0.2, 0.8]))
    with pytest.raises(
        ValueError,
        match=r"^kl_divergence: expected targets >= 0 \(probabilities\), got -0\.6931 at index "
        r"0, -0\.6931 at index 1 \(2 of 2 targets\)\. Hint: negative targets look like "
        r"log-probabilities: pass log_targets=True\.",
    ):
        kl_divergence(log_p, jnp.log(jnp.array([0.5, 0.5])))
    with pytest.raises(
        ValueError,
        match=r"^kl_divergence: expected log-probabilities \(<= 0\) as targets "
        r"\(log_targets=True\), got 0\.5 at index 0, .* Hint: these look like probabilities: "
        r"pass log_targets=False, or jnp\.log\(targets\)\.",
    ):
        kl_divergence(log_p, jnp.array([0.5, 0.5]), log_targets=True)
    with pytest.raises(TypeError, match=r"^kl_divergence: expected log_targets to be a bool"):
        kl_divergence(log_p, jnp.array([0.5, 0.5]), log_targets="yes")


def test_kl_divergence_given_probabilities_was_negative_and_is_now_nan_under_jit():
    p = jnp.array([[0.2, 0.8], [0.5, 0.5]])
    t = jnp.array([[0.5, 0.5], [0.5, 0.5]])
    with np.errstate(all="ignore"):
        wrong = float(np.sum(t[0] * (np.log(t[0]) - p[0])))  # what the formula would give
    assert wrong < 0  # a negative "divergence": the silent result before
    got = jit_none(kl_divergence)(p.at[1].set(jnp.log(p[1])), t)
    assert np.isnan(got[0]) and np.isfinite(got[1])
    got = jit_none(kl_divergence, log_targets=True)(jnp.log(p), t.at[1].set(jnp.log(t[1])))
    assert np.isnan(got[0]) and np.isfinite(got[1])


def test_a_class_masked_with_minus_inf_adds_nothing():
    # Masking a class with a -inf logit (an illegal action, a padded vocabulary entry) is
    # common; 0 * log 0 counts as 0, as the integer-label form already does.
    logits = jnp.array([[0.5, -jnp.inf, 1.0], [2.0, 0.0, -jnp.inf]])
    labels = jnp.array([0, 1])
    unmasked = [jnp.array([[0.5, 1.0]]), jnp.array([[2.0, 0.0]])]
    expected = [
        float(softmax_cross_entropy_with_integer_labels(z, jnp.array([i])))
        for z, i in zip(unmasked, (0, 1), strict=True)
    ]
    for loss, targets in (
        (softmax_cross_entropy, jax.nn.one_hot(labels, 3)),
        (softmax_cross_entropy_with_integer_labels, labels),
    ):
        values = loss(logits, targets, reduction="none")
        np.testing.assert_allclose(values, expected, rtol=1e-6)
        grads = jax.grad(lambda z, loss=loss, t=targets: loss(z, t))(logits)
        assert np.isfinite(np.asarray(grads)).all()
        assert float(grads[0, 1]) == 0.0 and float(grads[1, 2]) == 0.0


def test_kl_divergence_a_zero_target_adds_nothing_even_where_the_prediction_is_zero():
    log_predictions = jnp.array([[jnp.log(0.25), jnp.log(0.75), -jnp.inf]])
    targets = jnp.array([[0.5, 0.5, 0.0]])
    expected = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    for log_targets, t in ((False, targets), (True, jnp.log(targets))):
        value = kl_divergence(log_predictions, t, log_targets=log_targets)
        np.testing.assert_allclose(value, expected, rtol=1e-6)
        grads = jax.grad(lambda lp, t=t, f=log_targets: kl_divergence(lp, t, log_targets=f))(
            log_predictions
        )
        np.testing.assert_allclose(grads, [[-0.5, -0.5, 0.0]], rtol=1e-6)
