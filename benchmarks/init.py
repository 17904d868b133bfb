"""Init cost: ``jnn.TransformerLM.init`` beside the same blocks initialised by hand.

A composite's ``init`` traces its ``forward`` once on abstract inputs and then creates
each leaf's parameters once, so its cost grows linearly with depth. This times ``init``
of a deep ``TransformerLM`` (eager, as users call it) against a hand-written function
that makes the same tree with ``jax.nn.initializers`` calls, interleaved round by round,
and reports the median of each and their ratio. Run from the repository root::

    python -m benchmarks.init              # 24 blocks, 9 rounds
    python -m benchmarks.init --quick      # 4 blocks, 3 rounds: checks it runs
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import jnn

lecun = jax.nn.initializers.lecun_normal()
zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


def hand_init(key, *, vocab: int, layers: int, features: int, heads: int, hidden: int) -> dict:
    """The parameter tree of ``jnn.TransformerLM``, made leaf by leaf."""
    head = features // heads
    keys = iter(jax.random.split(key, 6 * layers + 1))

    def norm():
        return {"scale": ones(None, (features,)), "offset": zeros(None, (features,))}

    def projection(shape_in, shape_out):
        weight = lecun(next(keys), (*shape_in, *shape_out), jnp.float32)
        return {"weight": weight, "bias": zeros(None, shape_out)}

    params = {
        "embed": {"embedding": jax.random.normal(next(keys), (vocab, features)) / features**0.5}
    }
    for i in range(layers):
        params[f"block_{i}"] = {
            "norm_1": norm(),
            "attention": {
                "query": projection((features,), (heads, head)),
                "key": projection((features,), (heads, head)),
                "value": projection((features,), (heads, head)),
                "output": projection((heads, head), (features,)),
            },
            "norm_2": norm(),
            "mlp": {
                "dense_0": projection((features,), (hidden,)),
                "dense_1": projection((hidden,), (features,)),
            },
        }
    params["norm"] = norm()
    return params


def shapes(tree) -> dict:
    return jax.tree.map(lambda a: a.shape, tree)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="4 blocks, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.rounds = 4, 3
    sizes = dict(vocab=args.vocab, layers=args.layers, features=args.features, heads=args.heads)
    model = jnn.TransformerLM(
        vocab_size=args.vocab, num_layers=args.layers, features=args.features, num_heads=args.heads
    )
    tokens = jnp.zeros((1, 16), jnp.int32)
    key = jax.random.key(0)

    def run_jnn():
        return model.init(key, tokens)

    def run_hand():
        return hand_init(key, **sizes, hidden=4 * args.features)

    assert shapes(run_jnn()) == shapes(run_hand()), "the two trees must match"
    times: dict[str, list[float]] = {"jnn": [], "hand-written": []}
    for _ in range(args.rounds):
        for name, fn in (("jnn", run_jnn), ("hand-written", run_hand)):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(t) for name, t in times.items()}
    ratio = result["jnn"] / result["hand-written"]
    print(
        f"init of a {args.layers}-block TransformerLM (width {args.features}, "
        f"{args.rounds} rounds, median): jnn {result['jnn'] * 1e3:.1f} ms, "
        f"hand-written {result['hand-written'] * 1e3:.1f} ms, ratio {ratio:.2f}"
    )
    return {**result, "ratio": ratio}


if __name__ == "__main__":
    main()
