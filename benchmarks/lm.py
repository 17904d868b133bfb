"""Decoder-only language-model training steps: jnn, hand-written JAX and PyTorch eager.

Architecture: ``jnn.TransformerLM``'s network. Token embeddings (tied to the output
projection), ``layers`` pre-norm causal blocks of ``x + attention(layer_norm(x))`` and
``x + mlp(layer_norm(x))`` with rotary positions (rotate-half), biases on every
projection and a tanh-approximate GELU MLP, a final layer norm, logits. Loss: next-token
softmax cross-entropy in float32 (inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``);
AdamW (3e-4, betas 0.9/0.95, weight decay 0.1 on every parameter).

Precision: parameters and optimizer state in float32; the forward and backward passes in
bfloat16. jnn wraps the model in ``jnn.MixedPrecision(model, jnp.bfloat16)``; the
hand-written version casts the float32 params to bfloat16 at the top of the loss (in both,
the gradients arrive in float32); PyTorch runs under ``torch.autocast`` (bfloat16),
which keeps layer norms and the residual stream in float32.

Attention: ``jax.nn.dot_product_attention(..., is_causal=True)`` with cuDNN's fused
kernel on an NVIDIA GPU (XLA's if cuDNN's fails there), ``F.scaled_dot_product_attention
(is_causal=True)`` in PyTorch; on a CPU jnn writes attention as einsums (its default).

Sizes (``SIZES``): ``gpt2-small`` (12 blocks, width 768, 12 heads, MLP 3072, vocabulary
32,768, sequence 1,024, batch 8; 110,221,824 parameters) and ``tiny`` (2 blocks, width 64,
4 heads, MLP 256, vocabulary 256, sequence 64, batch 4), which only checks that it runs.
Model FLOPs per step (``model_flops``): ``(6 N + 12 L d S)`` per token, times ``B S``
tokens (``N`` parameters, ``L`` blocks, ``d`` width, ``S`` sequence; PaLM's count, with
attention over the full ``S x S`` square, masked half included).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from benchmarks.harness import Runner, jax_runner, torch_device, torch_timed

LEARNING_RATE, BETAS, WEIGHT_DECAY, EPSILON = 3e-4, (0.9, 0.95), 0.1, 1e-8


@dataclass(frozen=True)
class Size:
    """Shape of one language-model workload."""

    layers: int
    features: int
    heads: int
    mlp: int
    vocab: int
    length: int
    batch: int


SIZES = {
    "gpt2-small": Size(12, 768, 12, 3072, 32768, 1024, 8),
    "tiny": Size(2, 64, 4, 256, 256, 64, 4),
}


def param_count(size: str) -> int:
    """Parameters of the network: embedding, blocks, final norm (the head is tied)."""
    s = SIZES[size]
    d, m = s.features, s.mlp
    block = 2 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
    return s.vocab * d + s.layers * block + 2 * d


def model_flops(batch: int, size: str) -> float:
    """Model FLOPs of one training step: ``(6 N + 12 L d S) * batch * S``."""
    s = SIZES[size]
    per_token = 6 * param_count(size) + 12 * s.layers * s.features * s.length
    return float(per_token * batch * s.length)


def _tokens(batch: int, s: Size, seed: int = 0) -> np.ndarray:
    """Random token ids ``[batch, length + 1]``: inputs and shifted targets."""
    return np.random.default_rng(seed).integers(0, s.vocab, (batch, s.length + 1), np.int32)


@functools.cache
def attention_implementation() -> str | None:
    """``"cudnn"`` on an NVIDIA GPU where its fused causal kernel compiles and runs (a
    small probe, forward and backward), ``"xla"`` on a GPU where it does not, ``None``
    (the library's choice) elsewhere."""
    import jax
    import jax.numpy as jnp

    if jax.devices()[0].platform != "gpu":
        return None
    q = jnp.ones((2, 128, 2, 64), jnp.bfloat16)

    def probe(q):
        out = jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn")
        return out.astype(jnp.float32).sum()

    try:
        jax.block_until_ready(jax.jit(jax.grad(probe))(q))
    except Exception as error:  # any failure to build or run it means: use XLA's
        print(f"  note: cuDNN attention unavailable, XLA's used ({type(error).__name__})")
        return "xla"
    return "cudnn"


def _optax_adamw():
    import optax

    return optax.adamw(
        LEARNING_RATE, b1=BETAS[0], b2=BETAS[1], eps=EPSILON, weight_decay=WEIGHT_DECAY
    )


def _jax_step(loss_fn, params, tokens) -> Runner:
    """A jitted AdamW step of ``loss_fn(params, tokens)``, donating params and state."""
    import jax
    import optax

    optimizer = _optax_adamw()

    def _step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(_step, donate_argnums=(0, 1))

    def call(state):
        params, opt_state, loss = step(*state, tokens)
        return (params, opt_state), loss

    return jax_runner(call, (params, optimizer.init(params)), params)


def jnn_model(s: Size, implementation: str | None):
    """``jnn.TransformerLM`` of size ``s`` (blocks unrolled, no remat) under
    ``jnn.MixedPrecision``: float32 params and AdamW state, the forward and backward passes
    in bfloat16, float32 logits, so the loss is float32."""
    import jax.numpy as jnp

    import jnn

    lm = jnn.TransformerLM(
        s.vocab,
        s.layers,
        s.features,
        s.heads,
        mlp_features=s.mlp,
        max_length=s.length,
        implementation=implementation,
    )
    return jnn.MixedPrecision(lm, jnp.bfloat16)


def jnn_lm(batch: int, size: str) -> Runner:
    """``jnn_model`` with the attention implementation of the backend."""
    import jax
    import jax.numpy as jnp

    import jnn

    s = SIZES[size]
    tokens = jnp.asarray(_tokens(batch, s))
    model = jnn_model(s, attention_implementation())
    params = model.init(jax.random.key(0), tokens[:, :-1])

    def loss_fn(params, tokens):
        logits = model.apply(params, tokens[:, :-1])
        return jnn.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    return _jax_step(loss_fn, params, tokens)


def jax_params(size: str, key) -> dict:
    """Hand-written params with the layout (and count) of ``jnn.TransformerLM``'s."""
    import jax
    import jax.numpy as jnp

    s = SIZES[size]
    d, h, m = s.features, s.heads, s.mlp
    keys = iter(jax.random.split(key, 6 * s.layers + 1))

    def normal(shape, fan_in):
        return jax.random.normal(next(keys), shape) / np.sqrt(fan_in)

    def norm():
        return {"scale": jnp.ones((d,)), "offset": jnp.zeros((d,))}

    def heads_in():
        return {"weight": normal((d, h, d // h), d), "bias": jnp.zeros((h, d // h))}

    params = {"embed": {"embedding": normal((s.vocab, d), d)}, "norm": norm()}
    for i in range(s.layers):
        params[f"block_{i}"] = {
            "norm_1": norm(),
            "attention": {
                "query": heads_in(),
                "key": heads_in(),
                "value": heads_in(),
                "output": {"weight": normal((h, d // h, d), d), "bias": jnp.zeros((d,))},
            },
            "norm_2": norm(),
            "mlp": {
                "dense_0": {"weight": normal((d, m), d), "bias": jnp.zeros((m,))},
                "dense_1": {"weight": normal((m, d), m), "bias": jnp.zeros((d,))},
            },
        }
    return params


def jax_forward(params, inputs, implementation=None):
    """Logits ``[batch, length, vocab]`` of ``inputs`` ``[batch, length]``, in the dtype
    of ``params``: the network written out in plain JAX."""
    import jax
    import jax.numpy as jnp

    def layer_norm(p, x):  # statistics in float32, the result in x's dtype
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        var = jnp.square(h - mean).mean(-1, keepdims=True)
        return ((h - mean) * jax.lax.rsqrt(var + 1e-5)).astype(x.dtype) * p["scale"] + p["offset"]

    def rope(x):  # [batch, length, heads, head_dim], rotate-half, angles in float32
        half = x.shape[-1] // 2
        frequencies = 10000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
        angles = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * frequencies
        cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]
        x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)

    def project(p, x):
        return jnp.einsum("btd,dhk->bthk", x, p["weight"]) + p["bias"]

    table = params["embed"]["embedding"]
    x = table[inputs]
    for i in range(sum(name.startswith("block_") for name in params)):
        b = params[f"block_{i}"]
        a, n = b["attention"], layer_norm(b["norm_1"], x)
        q, k, v = rope(project(a["query"], n)), rope(project(a["key"], n)), project(a["value"], n)
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
        x = x + jnp.einsum("bthk,hkd->btd", out, a["output"]["weight"]) + a["output"]["bias"]
        n, mlp = layer_norm(b["norm_2"], x), b["mlp"]
        up = jax.nn.gelu(n @ mlp["dense_0"]["weight"] + mlp["dense_0"]["bias"])
        x = x + up @ mlp["dense_1"]["weight"] + mlp["dense_1"]["bias"]
    return layer_norm(params["norm"], x) @ table.T


def jax_lm(batch: int, size: str) -> Runner:
    """The same network by hand: a dict of arrays, einsum projections,
    ``jax.nn.dot_product_attention``, optax's AdamW, one ``jax.jit``."""
    import jax
    import jax.numpy as jnp
    import optax

    s = SIZES[size]
    tokens = jnp.asarray(_tokens(batch, s))
    implementation = attention_implementation()

    def loss_fn(params, tokens):
        half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
        logits = jax_forward(half, tokens[:, :-1], implementation).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return _jax_step(loss_fn, jax_params(size, jax.random.key(0)), tokens)


def torch_network(size: str):
    """The network as a ``torch.nn.Module``, on the CPU; rotary angles as buffers."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    s = SIZES[size]
    d, h, hd = s.features, s.heads, s.features // s.heads
    half = hd // 2

    def rope(x, cos, sin):  # [batch, length, heads, head_dim] -> same, rotated in float32
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_1, self.norm_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.output = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.up, self.down = nn.Linear(d, s.mlp), nn.Linear(s.mlp, d)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm_1(x)).view(b, t, 3, h, hd).unbind(2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            a = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            x = x + self.output(a.transpose(1, 2).reshape(b, t, d))
            return x + self.down(F.gelu(self.up(self.norm_2(x)), approximate="tanh"))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(s.vocab, d)
            self.blocks = nn.ModuleList(Block() for _ in range(s.layers))
            self.norm = nn.LayerNorm(d)
            frequencies = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
            angles = torch.arange(s.length, dtype=torch.float32)[:, None] * frequencies
            self.register_buffer("cos", angles.cos()[:, None, :], persistent=False)
            self.register_buffer("sin", angles.sin()[:, None, :], persistent=False)

        def forward(self, tokens):
            x = self.embed(tokens)
            cos, sin = self.cos[: tokens.shape[1]], self.sin[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x, cos, sin)
            return F.linear(self.norm(x), self.embed.weight)  # tied output projection

    return LM()


def torch_lm(batch: int, size: str) -> Runner:
    """PyTorch eager as its documentation writes such a model: ``nn.Module``s, one fused
    query-key-value ``Linear``, ``F.scaled_dot_product_attention(is_causal=True)``,
    bfloat16 ``torch.autocast``, ``torch.optim.AdamW`` (``fused=True`` on CUDA)."""
    import torch
    import torch.nn.functional as F

    s = SIZES[size]
    device = torch_device()
    model = torch_network(size).to(device)
    tokens = torch.from_numpy(_tokens(batch, s)).long().to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=LEARNING_RATE,
        betas=BETAS,
        eps=EPSILON,
        weight_decay=WEIGHT_DECAY,
        fused=device.type == "cuda",
    )

    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, s.vocab), targets)
        loss.backward()
        optimizer.step()

    return torch_timed(one, sum(p.numel() for p in model.parameters()))


IMPLEMENTATIONS = {"jnn": jnn_lm, "jax": jax_lm, "torch": torch_lm}
