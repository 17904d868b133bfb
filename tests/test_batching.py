"""batches: every example once, a reproducible shuffle per key, and the data checks that
fit and evaluate share."""

import chex
import jax
import numpy as np
import pytest

import jnn


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32)


def test_batches_cover_every_example_once_and_shuffle_by_key(data):
    x, y = data
    seen = np.concatenate([b[0] for b in jnn.batches((x, y), 20)])
    np.testing.assert_array_equal(seen, x)
    a = [b[1] for b in jnn.batches((x, y), 20, key=jax.random.key(0))]
    b = [b[1] for b in jnn.batches((x, y), 20, key=jax.random.key(0))]
    c = [b[1] for b in jnn.batches((x, y), 20, key=jax.random.key(1))]
    chex.assert_trees_all_equal(a, b)
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))
    order = np.concatenate([b[0][:, 0] for b in jnn.batches((x, y), 20, key=jax.random.key(0))])
    np.testing.assert_array_equal(np.sort(order), np.sort(x[:, 0]))
    assert [len(b[0]) for b in jnn.batches((x, y), 20, drop_last=True)] == [20] * 4
    dicts = list(jnn.batches({"x": x, "y": y}, 50))
    assert dicts[1]["x"].shape == (46, 4)


def test_batches_errors(data):
    x, y = data
    with pytest.raises(ValueError, match="batches: every array must share the leading"):
        list(jnn.batches((x, y[:10]), 4))
    with pytest.raises(ValueError, match="batches: batch_size must be a positive int"):
        list(jnn.batches((x, y), 0))
    with pytest.raises(TypeError, match=r"^batches: expected key to be a PRNG key such as "):
        list(jnn.batches((x, y), 4, key=3))


def test_batches_are_checked_when_called(data):
    x, y = data
    with pytest.raises(
        ValueError,
        match=r"^batches: batch_size 128 is larger than the 96 examples, so drop_last=True "
        r"yields no batch\. Hint: lower batch_size, or pass drop_last=False\.$",
    ):
        jnn.batches((x, y), 128, drop_last=True)  # no list(): raised before iterating
    with pytest.raises(TypeError, match=r"^batches: batch_size must be an int, got 16\.0"):
        jnn.batches((x, y), 16.0)
    with pytest.raises(ValueError, match=r"^batches: data holds 0 examples\.$"):
        jnn.batches((x[:0], y[:0]), 16)
    with pytest.raises(
        ValueError,
        match=r"^batches: expected arrays with a leading \(example\) axis in data, got a scalar "
        r"at data\[1\]\.$",
    ):
        jnn.batches((x, np.float32(1.0)), 16)
    assert [len(b[0]) for b in jnn.batches((x, y), 128)] == [96]  # without drop_last: one


def test_numpy_int_batch_size_and_pytrees_of_several_inputs(data):
    x, y = data
    assert [len(b[1]) for b in jnn.batches(((x, x), y), np.int64(40))] == [40, 40, 16]
    with pytest.raises(
        ValueError,
        match=r"^batches: every array must share the leading \(example\) axis, got 96 examples "
        r"in data\[0\]\[0\] but 95 in data\[0\]\[1\]\.$",
    ):
        jnn.batches(((x, x[1:]), y), 16)
    with pytest.raises(TypeError, match=r"^batches: expected drop_last to be a bool, got 1"):
        jnn.batches((x, y), 16, drop_last=1)
