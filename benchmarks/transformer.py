"""Two-layer pre-norm transformer encoder training steps in each library.

Architecture: inputs ``[batch, 64, 128]``; two blocks of ``x + attention(layer_norm(x))``
and ``x + mlp(layer_norm(x))`` with 4 heads, MLP 128 -> 512 -> 128 (GELU); a final layer
norm, mean over positions, dense 10; softmax cross-entropy; Adam 1e-3.
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Runner, equinox_train, jax_train, jnn_train, nnx_train

LEARNING_RATE = 1e-3
LENGTH, MODEL, HEADS, HIDDEN, LAYERS, CLASSES = 64, 128, 4, 512, 2, 10


def _data(batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, LENGTH, MODEL)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch).astype(np.int32)
    return x, y


def jnn_transformer(batch: int) -> Runner:

    import jnn

    x, y = _data(batch)
    # Two blocks, unrolled: at this depth a scan (jnn.Repeat) costs about 25% of the step
    # on a CPU, because XLA cannot fuse or schedule across its loop boundary.
    block = jnn.TransformerBlock(num_heads=HEADS, mlp_features=HIDDEN)
    model = jnn.Sequential(
        [
            *[block] * LAYERS,
            jnn.LayerNorm(),
            jnn.Lambda(lambda h: h.mean(axis=1), name="mean"),
            jnn.Dense(CLASSES),
        ]
    )
    return jnn_train(model, x, y, LEARNING_RATE)


def jax_transformer(batch: int) -> Runner:
    """Hand-written in the formulation that measured fastest on a CPU: attention as two
    einsums and a softmax (with the query scaled first), layer norm in one pass over
    its input (squares taken before both means, which XLA then fuses into one loop;
    shifted by each row's first element for accuracy). The first version, with
    ``jax.nn.dot_product_attention`` and a two-pass layer norm, took 1.35x as long."""
    import jax
    import jax.numpy as jnp

    x, y = _data(batch)
    head_dim = MODEL // HEADS
    key = jax.random.key(0)
    counter = iter(range(1000))

    def dense(n_in, *shape):
        weight = jax.random.normal(jax.random.fold_in(key, next(counter)), (n_in, *shape))
        return {"weight": weight / np.sqrt(n_in), "bias": jnp.zeros(shape)}

    def norm():
        return {"scale": jnp.ones((MODEL,)), "offset": jnp.zeros((MODEL,))}

    blocks = []
    for _ in range(LAYERS):
        blocks.append(
            {
                "norm1": norm(),
                "query": dense(MODEL, HEADS, head_dim),
                "key": dense(MODEL, HEADS, head_dim),
                "value": dense(MODEL, HEADS, head_dim),
                "output": {
                    "weight": jax.random.normal(
                        jax.random.fold_in(key, next(counter)), (HEADS, head_dim, MODEL)
                    )
                    / np.sqrt(MODEL),
                    "bias": jnp.zeros((MODEL,)),
                },
                "norm2": norm(),
                "up": dense(MODEL, HIDDEN),
                "down": dense(HIDDEN, MODEL),
            }
        )
    params = {"blocks": blocks, "norm": norm(), "head": dense(MODEL, CLASSES)}

    def layer_norm(p, h):
        d = h - jax.lax.stop_gradient(h[..., :1])
        squares = jnp.square(d)
        mean = d.mean(-1, keepdims=True)
        var = jnp.maximum(squares.mean(-1, keepdims=True) - jnp.square(mean), 0.0)
        return (d - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["offset"]

    def project(p, h):
        return jnp.einsum("bld,dhk->blhk", h, p["weight"]) + p["bias"]

    def attention(q, k, v):
        q = q / np.float32(np.sqrt(head_dim))
        weights = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q, k), axis=-1)
        return jnp.einsum("bhqs,bshk->bqhk", weights, v)

    def forward(p, h):
        for b in p["blocks"]:
            n = layer_norm(b["norm1"], h)
            a = attention(project(b["query"], n), project(b["key"], n), project(b["value"], n))
            h = h + jnp.einsum("blhk,hkd->bld", a, b["output"]["weight"]) + b["output"]["bias"]
            n = layer_norm(b["norm2"], h)
            up = jax.nn.gelu(n @ b["up"]["weight"] + b["up"]["bias"])
            h = h + up @ b["down"]["weight"] + b["down"]["bias"]
        h = layer_norm(p["norm"], h).mean(axis=1)
        return h @ p["head"]["weight"] + p["head"]["bias"]

    return jax_train(forward, params, x, y, LEARNING_RATE)


def linen_transformer(batch: int) -> Runner:
    import flax.linen as nn
    import jax

    x, y = _data(batch)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h):
            h = h + nn.MultiHeadDotProductAttention(num_heads=HEADS)(nn.LayerNorm()(h))
            n = nn.LayerNorm()(h)
            return h + nn.Dense(MODEL)(nn.gelu(nn.Dense(HIDDEN)(n)))

    class Encoder(nn.Module):
        @nn.compact
        def __call__(self, h):
            for _ in range(LAYERS):
                h = Block()(h)
            return nn.Dense(CLASSES)(nn.LayerNorm()(h).mean(axis=1))

    model = Encoder()
    params = model.init(jax.random.key(0), x)["params"]
    return jax_train(lambda p, x: model.apply({"params": p}, x), params, x, y, LEARNING_RATE)


def nnx_transformer(batch: int) -> Runner:
    """Flax NNX as its documentation writes it: nnx.MultiHeadAttention, nnx.LayerNorm and
    nnx.Linear modules, nnx.Optimizer and nnx.jit. nnx.gelu is tanh-approximate, like
    jax.nn.gelu in the other versions."""
    from flax import nnx

    x, y = _data(batch)

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm1 = nnx.LayerNorm(MODEL, rngs=rngs)
            self.attention = nnx.MultiHeadAttention(HEADS, MODEL, decode=False, rngs=rngs)
            self.norm2 = nnx.LayerNorm(MODEL, rngs=rngs)
            self.up = nnx.Linear(MODEL, HIDDEN, rngs=rngs)
            self.down = nnx.Linear(HIDDEN, MODEL, rngs=rngs)

        def __call__(self, h):
            h = h + self.attention(self.norm1(h))
            return h + self.down(nnx.gelu(self.up(self.norm2(h))))

    class Encoder(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([Block(rngs) for _ in range(LAYERS)])
            self.norm = nnx.LayerNorm(MODEL, rngs=rngs)
            self.head = nnx.Linear(MODEL, CLASSES, rngs=rngs)

        def __call__(self, h):
            for block in self.blocks:
                h = block(h)
            return self.head(self.norm(h).mean(axis=1))

    return nnx_train(Encoder(nnx.Rngs(0)), x, y, LEARNING_RATE)


def equinox_transformer(batch: int) -> Runner:
    """Equinox's documented style: a per-example ``[length, features]`` model (layer norms
    and linears vmapped over positions, as in the Equinox BERT example), vmapped over the
    batch by the step, filter_jit. Equinox's attention has no biases by default; they are
    switched on to match the other versions."""
    import equinox as eqx
    import jax

    x, y = _data(batch)

    class Block(eqx.Module):
        norm1: eqx.nn.LayerNorm
        attention: eqx.nn.MultiheadAttention
        norm2: eqx.nn.LayerNorm
        up: eqx.nn.Linear
        down: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.norm1 = eqx.nn.LayerNorm(MODEL)
            self.attention = eqx.nn.MultiheadAttention(
                HEADS,
                MODEL,
                use_query_bias=True,
                use_key_bias=True,
                use_value_bias=True,
                use_output_bias=True,
                key=k1,
            )
            self.norm2 = eqx.nn.LayerNorm(MODEL)
            self.up = eqx.nn.Linear(MODEL, HIDDEN, key=k2)
            self.down = eqx.nn.Linear(HIDDEN, MODEL, key=k3)

        def __call__(self, h):
            n = jax.vmap(self.norm1)(h)
            h = h + self.attention(n, n, n)
            n = jax.vmap(self.norm2)(h)
            return h + jax.vmap(lambda t: self.down(jax.nn.gelu(self.up(t))))(n)

    class Encoder(eqx.Module):
        blocks: list[Block]
        norm: eqx.nn.LayerNorm
        head: eqx.nn.Linear

        def __init__(self, key):
            keys = jax.random.split(key, LAYERS + 1)
            self.blocks = [Block(k) for k in keys[:LAYERS]]
            self.norm = eqx.nn.LayerNorm(MODEL)
            self.head = eqx.nn.Linear(MODEL, CLASSES, key=keys[-1])

        def __call__(self, h):
            for block in self.blocks:
                h = block(h)
            return self.head(jax.vmap(self.norm)(h).mean(axis=0))

    return equinox_train(Encoder(jax.random.key(0)), x, y, LEARNING_RATE)


def torch_transformer(batch: int) -> Runner:
    import torch

    from benchmarks.harness import torch_runner

    x, y = _data(batch)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(
                MODEL,
                HEADS,
                HIDDEN,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.norm = torch.nn.LayerNorm(MODEL)
            self.head = torch.nn.Linear(MODEL, CLASSES)

        def forward(self, h):
            return self.head(self.norm(self.encoder(h)).mean(dim=1))

    return torch_runner(Encoder(), torch.from_numpy(x), torch.from_numpy(y).long(), LEARNING_RATE)


IMPLEMENTATIONS = {
    "jnn": jnn_transformer,
    "jax": jax_transformer,
    "flax.linen": linen_transformer,
    "flax.nnx": nnx_transformer,
    "equinox": equinox_transformer,
    "torch": torch_transformer,
}
