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


def test_negative_ids_count_from_the_end():
    embed = Embedding(5, 3)
    params = arange_params()
    out = embed.apply(params, jnp.array([-1, -5]))
    np.testing.assert_allclose(out, params["embedding"][jnp.array([4, 0])])


def test_concrete_ids_out_of_range_raise():
    embed = Embedding(5, 3)
    params = arange_params()
    with pytest.raises(
        ValueError,
        match=r"Embedding: expected ids in \[0, 5\) \(num_embeddings 5; negative ids down to -5 count from the end\), got 7 at index \(1, 0\) of ids of shape \(2, 2\) \(2 out of range\)\.",
    ):
        embed.apply(params, np.array([[0, 1], [7, -6]]))
    with pytest.raises(ValueError, match=r"got -6 at index \(0,\)"):
        embed.apply(params, jnp.array([-6]))


@pytest.mark.parametrize(
    "transform", [jax.jit, lambda f: jax.vmap(f, in_axes=(None, 0))], ids=["jit", "vmap"]
)
def test_traced_ids_out_of_range_give_nan_rows(transform):
    """Under a trace the ids cannot be checked without a host round trip on the training
    path: as documented, ids out of range give rows of NaN, never a plausible row."""
    embed = Embedding(5, 3)
    params = arange_params()
    out = transform(embed.apply)(params, jnp.array([5, -6, 2]))
    assert np.isnan(out[:2]).all()
    np.testing.assert_allclose(out[2], params["embedding"][2])


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
    with pytest.raises(TypeError, match=r"Embedding: features must be an int, got 2.0 \(float\)"):
        Embedding(3, 2.0)
    with pytest.raises(
        ValueError,
        match=r"Embedding: padding_index must be in \[-5, 5\) \(num_embeddings 5\), got 5\.",
    ):
        Embedding(5, 3, padding_index=5)
    with pytest.raises(ValueError, match=r"got -6\."):
        Embedding(5, 3, padding_index=-6)
    with pytest.raises(
        TypeError, match=r"Embedding: padding_index must be an int or None, got True"
    ):
        Embedding(5, 3, padding_index=True)
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


# --------------------------------------------------------------------------- padding index


def numpy_lookup(table, ids, padding_row):
    """Rows of ``table``, with zeros (and so no gradient) wherever the id is the padding row."""
    table = np.asarray(table, np.float64)
    ids = np.asarray(ids) % table.shape[0]
    rows = table[ids]
    rows[ids == padding_row] = 0.0
    return rows


@pytest.mark.parametrize("padding_index", [2, -1, 0])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_padding_index_matches_numpy(key, transform, padding_index):
    embed = Embedding(5, 3, padding_index=padding_index)
    row = padding_index % 5
    params = embed.init(key, jnp.zeros((2,), jnp.int32))
    np.testing.assert_array_equal(params["embedding"][row], 0.0)  # initialised to zero
    assert np.all(np.delete(np.asarray(params["embedding"]), row, axis=0) != 0.0)
    # Its lookups are zero even when the row is not, e.g. after loading other weights.
    params = arange_params()
    ids = jnp.array([[0, 1, 2, 3], [4, -1, -3, 2]])
    out = transform(embed.apply)(params, ids)
    np.testing.assert_allclose(out, numpy_lookup(params["embedding"], ids, row))
    grads = transform(jax.grad(lambda p: (embed.apply(p, ids) ** 2).sum()))(params)
    expected = np.zeros((5, 3))
    table = np.asarray(params["embedding"])
    np.add.at(expected, np.asarray(ids) % 5, 2 * table[np.asarray(ids) % 5])
    expected[row] = 0.0
    np.testing.assert_allclose(grads["embedding"], expected, rtol=1e-6)


def test_padding_index_with_unsigned_ids_and_attend():
    embed = Embedding(5, 3, padding_index=-1)
    params = arange_params()
    out = embed.apply(params, jnp.array([4, 1], jnp.uint8))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_allclose(out[1], params["embedding"][1])
    # attend still scores against the padding row, as torch's tied F.linear does.
    x = jnp.ones((1, 3))
    np.testing.assert_allclose(embed.attend(params, x), x @ params["embedding"].T, rtol=1e-6)


@pytest.mark.parametrize("padding_index", [3, -2])
def test_padding_index_matches_torch(padding_index):
    """Outputs and table gradients against torch.nn.Embedding(padding_idx=...), weights
    copied from torch (whose padding row starts at zero, as jnn's does)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Embedding(6, 4, padding_idx=padding_index).double()
    ids = np.array([[0, 3, 4, 3], [5, 1, 4, 2]])
    weights = np.linspace(-1.0, 1.0, 16).reshape(4, 4)  # a loss that weighs every output
    out = module(torch.from_numpy(ids))
    (out.sum(0) * torch.from_numpy(weights)).sum().backward()
    table = module.weight.detach().numpy()
    assert np.all(table[padding_index] == 0.0)

    embed = Embedding(6, 4, padding_index=padding_index)
    params = {"embedding": jnp.asarray(table, jnp.float32)}

    def loss(p):
        return (embed.apply(p, ids).sum(0) * weights).sum()

    np.testing.assert_allclose(embed.apply(params, ids), out.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        jax.grad(loss)(params)["embedding"], module.weight.grad.numpy(), rtol=1e-6, atol=1e-6
    )


def test_initializer_receives_the_fan_in(key):
    seen = []

    def recording(key, shape, dtype=jnp.float32, *, fan_in=None):
        seen.append((tuple(shape), fan_in))
        return jnp.ones(shape, dtype)

    table = Embedding(7, 3, padding_index=1, w_init=recording).init(key, jnp.zeros(2, jnp.int32))
    assert seen == [((7, 3), 3)]  # PyTorch's fan-in of a [num_embeddings, features] weight
    np.testing.assert_array_equal(table["embedding"][:, 0], [1, 0, 1, 1, 1, 1, 1])
    bound = 1 / np.sqrt(64)
    torch_like = Embedding(100, 64, w_init=initializers.pytorch_default())
    params = torch_like.init(key, jnp.zeros(2, jnp.int32))
    assert bound * 0.9 < float(jnp.abs(params["embedding"]).max()) <= bound
