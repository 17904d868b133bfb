"""Positional encodings: sinusoidal and learned tables, RoPE; NumPy references, offsets,
gradients, jit/vmap, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

from jnn import (
    DTypeError,
    LearnedPositions,
    Sequential,
    ShapeError,
    SinusoidalPositions,
    initializers,
    rotary_embedding,
    sinusoidal_positions,
)


def numpy_sinusoids(length, features, base=10000.0):
    """PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d)), loop by loop."""
    table = np.zeros((length, features))
    for p in range(length):
        for j in range(features):
            angle = p / base ** (2 * (j // 2) / features)
            table[p, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    return table


def numpy_rope(x, positions, base=10000.0):
    """Rotate each pair (x[i], x[i + d/2]) of x [..., length, heads, d] as a 2-D vector."""
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    out = np.empty_like(x)
    pos = np.broadcast_to(np.asarray(positions, np.float64), x.shape[:-2])
    for index in np.ndindex(x.shape[:-1]):
        p = pos[index[:-1]]
        for i in range(d // 2):
            angle = p * base ** (-2 * i / d)
            rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            out[(*index, [i, i + d // 2])] = rotation @ x[(*index, [i, i + d // 2])]
    return out


# --------------------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("length, features, base", [(6, 8, 10000.0), (5, 7, 100.0), (1, 2, 10.0)])
def test_sinusoidal_matches_numpy(length, features, base):
    table = sinusoidal_positions(length, features, base)
    assert table.shape == (length, features) and table.dtype == jnp.float32
    np.testing.assert_allclose(table, numpy_sinusoids(length, features, base), atol=1e-5)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_sinusoidal_layer_adds_the_table_with_offset(transform):
    layer = SinusoidalPositions()
    x = np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32)
    table = numpy_sinusoids(9, 4)
    y = transform(lambda x: layer.apply({}, x))(x)
    np.testing.assert_allclose(y, x + table[:6], atol=1e-5)
    shifted = transform(lambda x, offset: layer.apply({}, x, offset=offset))(x[:, :2], 3)
    np.testing.assert_allclose(shifted, x[:, :2] + table[3:5], atol=1e-5)
    unbatched = layer.apply({}, x[0])
    np.testing.assert_allclose(unbatched, y[0], atol=1e-6)
    assert layer.init(jax.random.key(0), x) == {}


def test_sinusoidal_errors():
    with pytest.raises(
        ValueError, match=r"sinusoidal_positions: features must be a positive int, got 0"
    ):
        sinusoidal_positions(3, 0)
    with pytest.raises(
        ValueError, match=r"SinusoidalPositions: base must be a number greater than 1"
    ):
        SinusoidalPositions(base=0.5)
    with pytest.raises(
        ShapeError, match=r"SinusoidalPositions: expected input \[..., length, features\] of rank"
    ):
        SinusoidalPositions().apply({}, jnp.zeros(4))
    with pytest.raises(DTypeError, match=r"SinusoidalPositions: expected a floating-point input"):
        SinusoidalPositions().apply({}, jnp.zeros((3, 4), jnp.int32))
    with pytest.raises(
        ShapeError, match=r"SinusoidalPositions: expected a scalar offset, got shape \(2, 1\)"
    ):
        SinusoidalPositions().apply({}, jnp.zeros((2, 3, 4)), offset=jnp.zeros((2, 1), int))
    with pytest.raises(
        DTypeError, match=r"SinusoidalPositions: expected offset to be a number, got dtype bool"
    ):
        SinusoidalPositions().apply({}, jnp.zeros((3, 4)), offset=True)
    with pytest.raises(
        TypeError, match=r"SinusoidalPositions: base must be a float, got '10' \(str\)"
    ):
        SinusoidalPositions(base="10")
    with pytest.raises(
        TypeError, match=r"sinusoidal_positions: base must be a number, got '10' \(str\)"
    ):
        sinusoidal_positions(3, 4, base="10")


# --------------------------------------------------------------------------- learned


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_learned_positions_add_rows_of_the_table(key, transform):
    layer = LearnedPositions(max_length=8)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    params = layer.init(key, x)
    assert params["embedding"].shape == (8, 3)
    table = np.asarray(params["embedding"])
    np.testing.assert_allclose(transform(layer.apply)(params, x), x + table[:5], rtol=1e-6)
    step = transform(lambda p, x, o: layer.apply(p, x, offset=o))(params, x[:, :1], 7)
    np.testing.assert_allclose(step, x[:, :1] + table[7], rtol=1e-6)
    np.testing.assert_allclose(layer.apply(params, x[0]), x[0] + table[:5], rtol=1e-6)


def test_learned_positions_init_and_gradients(key):
    layer = LearnedPositions(16)
    params = layer.init(key, jnp.zeros((1, 4, 256)))
    np.testing.assert_allclose(float(jnp.std(params["embedding"])), 0.02, rtol=0.05)
    custom = LearnedPositions(4, w_init=initializers.constant(0.5)).init(key, jnp.zeros((1, 2, 3)))
    np.testing.assert_array_equal(custom["embedding"], np.full((4, 3), 0.5))
    x = jax.random.normal(key, (2, 3, 4))
    params = LearnedPositions(5).init(key, x)
    check_gradients(
        lambda p, x: jnp.sin(LearnedPositions(5).apply(p, x, offset=2)).sum(), (params, x)
    )
    grad = jax.grad(lambda p: LearnedPositions(5).apply(p, x, offset=1).sum())(params)
    np.testing.assert_array_equal(grad["embedding"][:, 0], [0, 2, 2, 2, 0])  # rows 1..3, batch 2


def test_learned_positions_in_a_scan_with_traced_offset(key):
    layer = LearnedPositions(4)
    x = jnp.ones((6, 1, 2))  # six steps of [batch 1, features 2]; the table has four rows
    params = layer.init(key, x[:, :, None])

    def run(x):
        def step(t, x_t):
            return t + 1, layer.apply(params, x_t[:, None], offset=t)

        return jax.lax.scan(step, 0, x)[1][:, :, 0]

    np.testing.assert_allclose(jax.jit(run)(x[:4])[:, 0], 1 + params["embedding"], rtol=1e-6)
    # Past the table the compiled program raises, naming the offset it reached.
    with pytest.raises(
        jax.errors.JaxRuntimeError,
        match=r"LearnedPositions: offset 4 plus input length 1 = 5 exceeds max_length 4\. Hint: make the table longer\.",
    ):
        jax.block_until_ready(jax.jit(run)(x))


def test_learned_positions_traced_negative_offset_raises_at_run_time(key):
    layer = LearnedPositions(4)
    x = jnp.ones((1, 2, 3))
    params = layer.init(key, x)
    shifted = jax.jit(lambda o: layer.apply(params, x, offset=o))
    np.testing.assert_allclose(shifted(2), x + params["embedding"][2:], rtol=1e-6)
    with pytest.raises(
        jax.errors.JaxRuntimeError, match=r"LearnedPositions: offset must be >= 0, got -1\."
    ):
        jax.block_until_ready(shifted(-1))


def test_learned_positions_batch_axis_rule(key):
    layer = LearnedPositions(8)
    with pytest.raises(
        ShapeError,
        match=r"LearnedPositions: expected input \[batch, ..., length, features\] of rank at least 3, got shape \(5, 4\)\. Hint: for one sequence add a batch axis, x\[None\]; a \(batch, features\) table has no positions: add a length axis, x\[:, None, :\]\.",
    ):
        layer.init(key, jnp.zeros((5, 4)))
    x = jax.random.normal(key, (3, 5, 4))
    params = layer.init(key, x)
    per_example = jax.vmap(lambda x: layer.apply(params, x, offset=1))(x)
    np.testing.assert_allclose(per_example, layer.apply(params, x, offset=1), rtol=1e-6)
    with pytest.raises(
        ShapeError,
        match=r"LearnedPositions: expected input \[..., length, features\] of rank at least 2, got shape \(4,\)",
    ):
        layer.apply(params, jnp.zeros(4))


def test_learned_positions_initializer_receives_the_fan_in(key):
    seen = []

    def recording(key, shape, dtype=jnp.float32, *, fan_in=None):
        seen.append((tuple(shape), fan_in))
        return jnp.zeros(shape, dtype)

    LearnedPositions(6, w_init=recording).init(key, jnp.zeros((1, 2, 5)))
    assert seen == [((6, 5), 5)]


@pytest.mark.parametrize(
    "offset, error, message",
    [
        (1.5, DTypeError, r"expected offset to be an integer, got dtype float32"),
        (jnp.array(1.0), DTypeError, r"expected offset to be an integer, got dtype float32"),
        (True, DTypeError, r"expected offset to be an integer, got dtype bool"),
        (
            "1",
            DTypeError,
            r"expected offset to be an integer \(a scalar array inside jit\), got str",
        ),
        (
            jnp.array([1, 2]),
            ShapeError,
            r"expected a scalar offset, got shape \(2,\)\. Hint: one offset serves the whole batch",
        ),
    ],
)
def test_learned_positions_offset_errors(key, offset, error, message):
    layer = LearnedPositions(8)
    params = layer.init(key, jnp.zeros((2, 3, 4)))
    with pytest.raises(error, match=r"LearnedPositions: " + message):
        layer.apply(params, jnp.zeros((2, 3, 4)), offset=offset)


def test_learned_positions_errors(key):
    layer = LearnedPositions(max_length=8)
    with pytest.raises(
        ShapeError,
        match=r"LearnedPositions: input length = 12 exceeds max_length 8 \(input shape \(2, 12, 4\)\)",
    ):
        layer.init(key, jnp.zeros((2, 12, 4)))
    params = layer.init(key, jnp.zeros((2, 8, 4)))
    with pytest.raises(
        ShapeError, match=r"LearnedPositions: input length = 9 exceeds max_length 8"
    ):
        layer.apply(params, jnp.zeros((2, 9, 4)))
    with pytest.raises(
        ShapeError, match=r"LearnedPositions: offset 6 plus input length 3 = 9 exceeds max_length 8"
    ):
        layer.apply(params, jnp.zeros((2, 3, 4)), offset=6)
    with pytest.raises(ShapeError, match=r"LearnedPositions: offset must be >= 0, got -1"):
        layer.apply(params, jnp.zeros((2, 3, 4)), offset=-1)
    with pytest.raises(
        ShapeError,
        match=r"LearnedPositions: expected input with last dimension 4 \(set at init\), got shape \(2, 3, 5\)",
    ):
        layer.apply(params, jnp.zeros((2, 3, 5)))
    with pytest.raises(
        ValueError, match=r"LearnedPositions: max_length must be a positive int, got 0"
    ):
        LearnedPositions(0)
    model = Sequential({"positions": layer})
    params = model.init(key, jnp.zeros((1, 2, 4)))
    with pytest.raises(
        ShapeError, match=r"LearnedPositions at 'positions': input length = 10 exceeds max_length 8"
    ):
        model.apply(params, jnp.zeros((1, 10, 4)))


# --------------------------------------------------------------------------- rotary


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("positions_shape", [(5,), (2, 5)])
def test_rope_matches_numpy_rotation(transform, positions_shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 6)).astype(np.float32)
    positions = rng.integers(0, 50, positions_shape)
    y = transform(lambda x, p: rotary_embedding(x, p, base=100.0))(x, positions)
    np.testing.assert_allclose(y, numpy_rope(x, positions, base=100.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(  # a rotation keeps each pair's length
        np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5
    )


def test_rope_scores_depend_only_on_the_position_difference():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((1, 1, 8)), rng.standard_normal((1, 1, 8))

    def score(m, n):
        rq = rotary_embedding(jnp.asarray(q, jnp.float32), jnp.array([m]))
        rk = rotary_embedding(jnp.asarray(k, jnp.float32), jnp.array([n]))
        return float(jnp.sum(rq * rk))

    for m, n in [(0, 3), (5, 2), (7, 7)]:
        for shift in (1, 10, 100):
            np.testing.assert_allclose(
                score(m + shift, n + shift), score(m, n), rtol=1e-4, atol=1e-4
            )
    assert not np.isclose(score(0, 3), score(0, 4))


def test_rope_dtype_vmap_and_gradients():
    x = jax.random.normal(jax.random.key(0), (3, 4, 2, 4))
    positions = jnp.arange(4)
    assert rotary_embedding(x.astype(jnp.bfloat16), positions).dtype == jnp.bfloat16
    per_example = jax.vmap(lambda x: rotary_embedding(x, positions))(x)
    np.testing.assert_allclose(per_example, rotary_embedding(x, positions), rtol=1e-6)
    check_gradients(lambda x: rotary_embedding(x, positions).sum(), (x,))


def test_rope_errors():
    with pytest.raises(
        ShapeError, match=r"rotary_embedding: expected an even head_dim .* got shape \(5, 2, 3\)"
    ):
        rotary_embedding(jnp.zeros((5, 2, 3)), jnp.arange(5))
    with pytest.raises(
        ShapeError, match=r"rotary_embedding: expected x \[..., length, heads, head_dim\] of rank"
    ):
        rotary_embedding(jnp.zeros((5, 4)), jnp.arange(5))
    with pytest.raises(
        ShapeError,
        match=r"rotary_embedding: expected positions broadcastable to \(2, 5\) \(x.shape\[:-2\]\), got shape \(4,\)",
    ):
        rotary_embedding(jnp.zeros((2, 5, 2, 4)), jnp.arange(4))
    with pytest.raises(ValueError, match=r"rotary_embedding: base must be a number greater than 1"):
        rotary_embedding(jnp.zeros((5, 2, 4)), jnp.arange(5), base=1.0)
    with pytest.raises(
        DTypeError, match=r"rotary_embedding: expected a floating-point x, got dtype int32"
    ):
        rotary_embedding(jnp.zeros((5, 2, 4), jnp.int32), jnp.arange(5))
    with pytest.raises(
        DTypeError, match=r"rotary_embedding: expected integer or float positions, got dtype bool"
    ):
        rotary_embedding(jnp.zeros((5, 2, 4)), jnp.ones(5, bool))
