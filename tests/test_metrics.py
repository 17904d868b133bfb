"""Metrics: accuracy, top-k and the confusion matrix against NumPy; Mean under scan and jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS

from jnn import Mean, accuracy, confusion_matrix, top_k_accuracy

NUM_CLASSES = 4


@pytest.fixture
def logits_and_labels(rng):
    logits = rng.standard_normal((3, 5, NUM_CLASSES)).astype(np.float32)  # no ties
    return logits, rng.integers(0, NUM_CLASSES, (3, 5)).astype(np.int32)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_accuracy_from_logits_matches_numpy(logits_and_labels, transform):
    logits, labels = logits_and_labels
    got = transform(accuracy)(logits, labels)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, np.mean(logits.argmax(-1) == labels), rtol=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_accuracy_from_class_indices_matches_numpy(logits_and_labels, transform):
    logits, labels = logits_and_labels
    predictions = logits.argmax(-1).astype(np.int32)
    got = transform(accuracy)(predictions, labels)
    np.testing.assert_allclose(got, np.mean(predictions == labels), rtol=1e-6)
    np.testing.assert_allclose(transform(accuracy)(labels, labels), 1.0)


def test_accuracy_errors():
    with pytest.raises(
        ValueError,
        match=r"accuracy: expected logits of shape \(16, num_classes\) or class indices of "
        r"shape \(16,\) for labels of shape \(16,\), got \(32, 10\)\.",
    ):
        accuracy(jnp.zeros((32, 10)), jnp.zeros(16, jnp.int32))
    with pytest.raises(
        TypeError,
        match=r"accuracy: expected integer labels, got dtype float32\. Hint: labels are class "
        r"indices; for one-hot labels pass labels\.argmax\(-1\)\.",
    ):
        accuracy(jnp.zeros((4, 3)), jnp.eye(3, dtype=jnp.float32)[jnp.zeros(4, jnp.int32)])
    with pytest.raises(
        TypeError,
        match=r"accuracy: expected integer predictions when they have the labels' shape, got "
        r"dtype float32\. Hint: .*\(probabilities > 0\.5\)\.astype\(jnp\.int32\)\.",
    ):
        accuracy(jnp.full(4, 0.7, jnp.float32), jnp.ones(4, jnp.int32))


@pytest.mark.parametrize(
    ("labels", "expected", "got"),
    [
        (
            [0, 1, 4],
            rf"labels in \[0, {NUM_CLASSES}\) \(the logits have {NUM_CLASSES} classes on their "
            r"last axis\)",
            r"4 at index 2 \(1 of 3 labels\)",
        ),
        ([0, -1, 1], r"labels in \[0, 4\) .*", r"-1 at index 1 \(1 of 3 labels\)\. Hint: drop"),
    ],
)
def test_accuracy_labels_out_of_range(labels, expected, got):
    with pytest.raises(ValueError, match=rf"^accuracy: expected {expected}, got {got}"):
        accuracy(jnp.zeros((3, NUM_CLASSES)), jnp.array(labels))
    with pytest.raises(ValueError, match=rf"^top_k_accuracy: expected {expected}, got {got}"):
        top_k_accuracy(jnp.zeros((3, NUM_CLASSES)), jnp.array(labels), k=2)


def test_accuracy_negative_class_indices():
    with pytest.raises(
        ValueError,
        match=r"^accuracy: expected labels >= 0 \(class indices\), got -1 at index 1 \(1 of 3 "
        r"labels\)\. Hint: drop padded examples first, or average the hits",
    ):
        accuracy(jnp.array([0, 1, 1]), jnp.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"^accuracy: expected predictions >= 0 \(class indices\)"):
        accuracy(jnp.array([0, -1, 1]), jnp.array([0, 1, 1]))


def test_accuracy_under_jit_with_bad_labels_is_nan_not_a_miss(logits_and_labels):
    logits, labels = logits_and_labels
    labels = labels.copy()
    labels[0, 0] = -1  # would count as a plain miss
    assert np.isnan(jax.jit(accuracy)(logits, labels))
    assert np.isnan(jax.jit(functools.partial(top_k_accuracy, k=2))(logits, labels))
    assert np.isnan(jax.jit(accuracy)(logits.argmax(-1), labels))


def test_accuracy_one_hot_labels_hint():
    with pytest.raises(
        TypeError,
        match=r"Hint: if the labels are one-hot \[\.\.\., num_classes\], pass "
        r"labels\.argmax\(-1\);",
    ):
        accuracy(jnp.zeros((4, 3)), jnp.eye(3, dtype=jnp.int32)[jnp.array([0, 1, 2, 0])])


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("k", [1, 2, NUM_CLASSES])
def test_top_k_accuracy_matches_numpy(logits_and_labels, transform, k):
    logits, labels = logits_and_labels
    top = np.argsort(-logits, axis=-1)[..., :k]
    expected = np.mean((top == labels[..., None]).any(-1))
    got = transform(functools.partial(top_k_accuracy, k=k))(logits, labels)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_top_1_accuracy_is_accuracy(logits_and_labels):
    logits, labels = logits_and_labels
    np.testing.assert_allclose(top_k_accuracy(logits, labels, k=1), accuracy(logits, labels))


@pytest.mark.parametrize(
    ("k", "error", "hint"),
    [
        (0, ValueError, r"\.$"),
        (
            NUM_CLASSES + 1,
            ValueError,
            rf"\. Hint: the logits have {NUM_CLASSES} classes on their last axis, so at most "
            rf"k={NUM_CLASSES} \(which always hits\)\.$",
        ),
        (2.0, TypeError, r" \(float\)\.$"),
        (True, TypeError, r" \(bool\)\.$"),
    ],
)
def test_top_k_accuracy_bad_k(logits_and_labels, k, error, hint):
    logits, labels = logits_and_labels
    with pytest.raises(
        error,
        match=rf"^top_k_accuracy: expected k to be an int in \[1, {NUM_CLASSES}\] "
        rf"\(the number of classes\), got {k!r}" + hint,
    ):
        top_k_accuracy(logits, labels, k=k)


def test_top_k_accuracy_accepts_numpy_ints(logits_and_labels):
    logits, labels = logits_and_labels
    np.testing.assert_allclose(
        top_k_accuracy(logits, labels, k=np.int64(2)), top_k_accuracy(logits, labels, k=2)
    )


def test_top_k_accuracy_shape_and_dtype_errors():
    with pytest.raises(
        ValueError,
        match=r"top_k_accuracy: expected logits of shape \(8, num_classes\) for labels of "
        r"shape \(8,\), got \(8,\)\.",
    ):
        top_k_accuracy(jnp.zeros(8), jnp.zeros(8, jnp.int32), k=1)
    with pytest.raises(TypeError, match=r"top_k_accuracy: expected integer labels, got dtype"):
        top_k_accuracy(jnp.zeros((8, 3)), jnp.zeros(8), k=1)
    with pytest.raises(
        ValueError, match=r"got \(8,\)\. Hint: top-k needs a score for every class, not predicted"
    ):
        top_k_accuracy(jnp.zeros(8, jnp.int32), jnp.zeros(8, jnp.int32), k=1)


# --------------------------------------------------------------------------- confusion matrix


def numpy_confusion_matrix(predictions, labels, num_classes):
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for true, predicted in zip(labels.ravel(), predictions.ravel(), strict=True):
        if 0 <= true < num_classes and 0 <= predicted < num_classes:
            matrix[true, predicted] += 1
    return matrix


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_confusion_matrix_from_logits_matches_numpy_loop(logits_and_labels, transform):
    logits, labels = logits_and_labels
    fn = transform(functools.partial(confusion_matrix, num_classes=NUM_CLASSES))
    got = fn(logits, labels)
    assert got.shape == (NUM_CLASSES, NUM_CLASSES) and got.dtype == jnp.int32
    np.testing.assert_array_equal(
        got, numpy_confusion_matrix(logits.argmax(-1), labels, NUM_CLASSES)
    )
    assert int(got.sum()) == labels.size
    np.testing.assert_allclose(np.trace(got) / labels.size, accuracy(logits, labels), rtol=1e-6)


def test_confusion_matrix_rows_are_labels_columns_are_predictions():
    got = confusion_matrix(jnp.array([2, 2, 0]), jnp.array([0, 0, 0]), num_classes=3)
    np.testing.assert_array_equal(got, [[1, 0, 2], [0, 0, 0], [0, 0, 0]])


def test_confusion_matrix_under_jit_with_static_num_classes(rng):
    predictions = rng.integers(-1, 4, 50).astype(np.int32)  # -1 and 3 are out of range
    labels = rng.integers(0, 4, 50).astype(np.int32)
    fn = jax.jit(confusion_matrix, static_argnames="num_classes")
    np.testing.assert_array_equal(
        fn(predictions, labels, num_classes=3), numpy_confusion_matrix(predictions, labels, 3)
    )


@pytest.mark.parametrize(
    ("num_classes", "error"),
    [(0, ValueError), (-2, ValueError), (3.0, TypeError), (None, TypeError)],
)
def test_confusion_matrix_bad_num_classes(num_classes, error):
    with pytest.raises(
        error,
        match=rf"confusion_matrix: expected num_classes to be a positive int, "
        rf"got {num_classes!r}",
    ):
        confusion_matrix(jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32), num_classes=num_classes)


def test_confusion_matrix_logits_must_have_num_classes(logits_and_labels):
    logits, labels = logits_and_labels
    with pytest.raises(
        ValueError,
        match=r"^confusion_matrix: expected logits with num_classes=3 classes on the last axis, "
        rf"got shape \(3, 5, {NUM_CLASSES}\)\. Hint: pass num_classes={NUM_CLASSES}, or the "
        r"matrix would silently drop the classes beyond it\.",
    ):
        confusion_matrix(logits, labels, num_classes=3)
    assert int(confusion_matrix(logits, labels, num_classes=np.int64(NUM_CLASSES)).sum()) == 15


def test_confusion_matrix_shape_error():
    with pytest.raises(ValueError, match=r"confusion_matrix: expected logits of shape \(3, "):
        confusion_matrix(jnp.zeros(4, jnp.int32), jnp.zeros(3, jnp.int32), num_classes=2)


# --------------------------------------------------------------------------- Mean


def test_mean_accumulated_in_scan_equals_numpy_mean(rng):
    batches = rng.standard_normal((6, 4, 3)).astype(np.float32)

    def step(mean, batch):
        return mean.update(batch), None

    mean, _ = jax.jit(lambda b: jax.lax.scan(step, Mean.empty(), b))(batches)
    assert isinstance(mean, Mean)
    assert mean.total.dtype == jnp.float32 and mean.count.dtype == jnp.float32
    np.testing.assert_allclose(mean.count, batches.size)
    np.testing.assert_allclose(mean.compute(), np.mean(batches), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_mean_weighted_update(rng, transform):
    values = rng.standard_normal((5, 3)).astype(np.float32)
    weights = rng.uniform(size=(5, 1)).astype(np.float32)  # one weight per row
    mean = transform(Mean.update)(Mean.empty(), values, weights)
    expected = np.average(values, weights=np.broadcast_to(weights, values.shape))
    np.testing.assert_allclose(mean.compute(), expected, rtol=1e-5)
    np.testing.assert_allclose(mean.count, 3 * weights.sum(), rtol=1e-6)


def test_mean_mask_skips_padding():
    values = jnp.array([1.0, 2.0, 3.0, 100.0])
    mean = Mean.empty().update(values, jnp.array([1, 1, 1, 0]))
    np.testing.assert_allclose(mean.compute(), 2.0)


def test_mean_merge_equals_one_update(rng):
    a = rng.standard_normal(7).astype(np.float32)
    b = rng.standard_normal((2, 3)).astype(np.float32)
    merged = Mean.empty().update(a).merge(Mean.empty().update(b))
    both = Mean.empty().update(np.concatenate([a, b.ravel()]))
    np.testing.assert_allclose(merged.compute(), both.compute(), rtol=1e-5)
    np.testing.assert_allclose(merged.count, 13)


def test_mean_of_booleans_and_scalars():
    mean = Mean.empty().update(jnp.array([True, False, True, True])).update(1.0)
    np.testing.assert_allclose(mean.compute(), 4 / 5)


def test_mean_is_a_pytree_and_empty_is_nan():
    mean = Mean.empty()
    assert len(jax.tree.leaves(mean)) == 2
    assert np.isnan(mean.compute())
    assert np.isnan(jax.jit(Mean.compute)(mean))


def test_mean_weights_shape_error():
    with pytest.raises(
        ValueError,
        match=r"Mean\.update: expected weights broadcastable to the values' shape \(4, 3\), "
        r"got \(4,\)\. Hint: .* weights\[:, None\]\.",
    ):
        Mean.empty().update(jnp.zeros((4, 3)), jnp.ones(4))
