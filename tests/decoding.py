"""Cached decoding, step by step, for the tests that compare it with the full pass."""

import jax
import jax.numpy as jnp


def decode_step_by_step(lm, params, tokens, cache, prompt_length):
    """Logits of ``tokens`` ``[batch, length]``: the first ``prompt_length`` in one cached
    call, then one jitted call per token. Returns ``(logits, cache)``."""
    logits, cache = lm.apply(params, tokens[:, :prompt_length], cache=cache)
    steps = [logits]
    decode = jax.jit(lambda p, t, c: lm.apply(p, t, cache=c))
    for t in range(prompt_length, tokens.shape[1]):
        logits, cache = decode(params, tokens[:, t : t + 1], cache)
        steps.append(logits)
    return jnp.concatenate(steps, axis=1), cache
