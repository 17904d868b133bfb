"""Embedding: lookup and tied output logits against NumPy, gradients, tying, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

from jnn import RNN, Dense, DTypeError, Embedding, GRUCell, Module, ShapeError, initializers


def arange_params(num_embeddings=5, features=3):
    return {
        "embedding": jnp.arange(num_embeddings * features, dtype=jnp.float32).reshape(
            num_embeddings, features
        )
        / 10
    }


@pytest.mark.parametrize("ids_shape", [(), (4,), (2, 3)])
@pytest.mark.parametrize("features", [1, 6])
def test_shape_agreement(key, ids_shape, features):
    embed = Embedding(7, features)
    params = embed.init(key, jax.ShapeDtypeStruct(ids_shape, jnp.int32))
    assert params["embedding"].shape == (7, features)
    h = embed.apply(params, jnp.zeros(ids_shape, jnp.int32))
    assert h.shape == (*ids_shape, features)
    assert embed.apply(params, h, attend=True).shape == (*ids_shape, 7)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_lookup_and_attend_match_numpy(transform):
    embed = Embedding(5, 3)
    params = arange_params()
    table = np.asarray(params["embedding"], np.float64)
    ids = jnp.array([[0, 4, 2], [1, 1, 3]], jnp.uint8)
    np.testing.assert_allclose(transform(embed.apply)(params, ids), table[np.asarray(ids)])
    x = jnp.arange(6.0).reshape(2, 3) - 2
    expected = np.asarray(x, np.float64) @ table.T
    attend = transform(functools.partial(embed.apply, attend=True))
    np.testing.assert_allclose(attend(params, x), expected, rtol=1e-6)
    np.testing.assert_allclose(transform(embed.attend)(params, x), expected, rtol=1e-6)


def test_ids_out_of_range_give_nan_and_negative_ids_wrap():
    embed = Embedding(5, 3)
    params = arange_params()
    out = embed.apply(params, jnp.array([-1, 5]))
    np.testing.assert_allclose(out[0], params["embedding"][4])
    assert np.isnan(out[1]).all()


def test_initializers(key):
    params = Embedding(1000, 64).init(key, jnp.zeros((2,), jnp.int32))
    np.testing.assert_allclose(float(jnp.std(params["embedding"])), 1 / 8, rtol=0.05)
    torch_like = Embedding(1000, 64, w_init=initializers.normal(1.0))
    np.testing.assert_allclose(
        float(jnp.std(torch_like.init(key, jnp.zeros((2,), jnp.int32))["embedding"])),
        1.0,
        rtol=0.05,
    )
    half = Embedding(3, 2, w_init=initializers.constant(0.5), param_dtype=jnp.bfloat16)
    table = half.init(key, jnp.zeros((), jnp.int32))["embedding"]
    assert table.dtype == jnp.bfloat16
    np.testing.assert_array_equal(table, np.full((3, 2), 0.5))


def test_gradients(key):
    embed = Embedding(6, 4)
    ids = jnp.array([[0, 3, 3], [5, 1, 0]])
    x = jax.random.normal(key, (2, 4))
    params = embed.init(key, ids)
    check_gradients(
        lambda p, x: (embed.apply(p, ids) ** 2).sum() + jnp.tanh(embed.attend(p, x)).sum(),
        (params, x),
    )
    # A row used twice collects both gradients; an unused row gets none.
    grads = jax.grad(lambda p: embed.apply(p, ids).sum())(params)["embedding"]
    np.testing.assert_array_equal(grads[:, 0], [2, 1, 0, 2, 0, 1])


def test_vmap_equals_batch(key):
    embed = Embedding(6, 4)
    ids = jnp.array([[0, 3], [5, 1], [2, 2]])
    params = embed.init(key, ids)
    mapped = jax.vmap(embed.apply, in_axes=(None, 0))(params, ids)
    np.testing.assert_array_equal(mapped, embed.apply(params, ids))


class TiedLanguageModel(Module):
    """Embed, run a GRU, score against the same table: the documented tying pattern."""

    vocab: int = 7
    features: int = 4

    def forward(self, scope, ids):
        embed = Embedding(self.vocab, self.features)
        h = scope("embed", embed, ids)
        h = scope("gru", RNN(GRUCell(self.features)), h)
        return scope("embed", embed, h, attend=True)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_tied_weights_share_one_matrix_and_its_gradient(transform, key):
    model = TiedLanguageModel()
    ids = jnp.array([[1, 2, 3, 0], [4, 5, 6, 6]])
    params = model.init(key, ids)
    assert sorted(params) == ["embed", "gru"]
    assert list(params["embed"]) == ["embedding"]
    logits = transform(model.apply)(params, ids)
    assert logits.shape == (2, 4, 7)

    def untied(table_in, table_out, gru):
        h = Embedding(7, 4).apply({"embedding": table_in}, ids)
        h = RNN(GRUCell(4)).apply(gru, h)
        return h @ table_out.T

    table = params["embed"]["embedding"]
    np.testing.assert_allclose(logits, untied(table, table, params["gru"]), rtol=1e-6)

    def loss(logits):
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    tied_grad = transform(jax.grad(lambda p: loss(model.apply(p, ids))))(params)
    grad_in, grad_out = jax.grad(lambda a, b: loss(untied(a, b, params["gru"])), argnums=(0, 1))(
        table, table
    )
    assert np.abs(grad_in).sum() > 0 and np.abs(grad_out).sum() > 0  # both uses contribute
    np.testing.assert_allclose(tied_grad["embed"]["embedding"], grad_in + grad_out, rtol=1e-5)


def test_attend_flag_must_be_static(key):
    embed = Embedding(5, 3)
    params = embed.init(key, jnp.zeros((2,), jnp.int32))
    with pytest.raises(DTypeError, match=r"Embedding: attend must be a Python bool"):
        jax.jit(embed.apply)(params, jnp.zeros((2, 3)), attend=True)
    out = jax.jit(embed.apply, static_argnames="attend")(params, jnp.zeros((2, 3)), attend=True)
    chex.assert_shape(out, (2, 5))


def test_errors(key):
    with pytest.raises(
        ValueError, match=r"Embedding: num_embeddings must be a positive int, got 0"
    ):
        Embedding(0, 3)
    with pytest.raises(ValueError, match=r"Embedding: features must be a positive int, got 2.0"):
        Embedding(3, 2.0)
    embed = Embedding(5, 3)
    params = embed.init(key, jnp.zeros((2,), jnp.int32))
    with pytest.raises(
        DTypeError, match=r"Embedding: expected integer ids, got dtype float32 \(shape \(2, 4\)\)"
    ):
        embed.apply(params, jnp.zeros((2, 4)))
    with pytest.raises(DTypeError, match=r"Embedding: expected integer ids, got dtype bool"):
        embed.apply(params, jnp.zeros((2,), bool))
    with pytest.raises(
        ShapeError,
        match=r"Embedding: expected attended input with last dimension 3 \(features\), got shape \(2, 4\)",
    ):
        embed.apply(params, jnp.zeros((2, 4)), attend=True)
    with pytest.raises(DTypeError, match=r"Embedding: expected a floating-point attended input"):
        embed.attend(params, jnp.zeros((2, 3), jnp.int32))

    class Model(Module):
        def forward(self, scope, x):
            return scope("head", Dense(2), scope("embed", Embedding(5, 3), x))

    with pytest.raises(DTypeError, match=r"Embedding at 'embed': expected integer ids"):
        Model().init(key, jnp.zeros((2,)))
