"""Train a character-level transformer language model and sample text with a KV cache.

Data: ``examples/data/jnn_text.txt``, about 97,000 characters of this project's own
prose (the README, the guides and the docstrings, without code blocks; MIT licence, see
``examples/data/README.md``). The last tenth is held out.

The model is ``jnn.TransformerLM``: character embeddings tied to the output layer,
pre-norm causal blocks with rotary positions, trained on random windows of the training
text to predict each next character. It reports held-out bits per character against
two count-based baselines (unigram and bigram character frequencies, add-one smoothed),
then samples: the prompt runs through the model once to fill the key-value cache, and
each new character costs one single-position forward pass that reads the cache, all
inside one jit-compiled ``lax.scan``. Prompt and sample together fit in one training
window (``--context``): positions the model never saw in training give garbled text.

It prints the training loss every tenth of the run with the elapsed time; the defaults
take about three minutes on a 2-core CPU. It writes no files.

Run:  python examples/char_transformer.py
      python examples/char_transformer.py --steps 200 --prompt "The model "
      python examples/char_transformer.py --precision bfloat16   (mixed precision)
      python examples/char_transformer.py --smoke   (5 steps and a short sample, for CI)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # JAX and jnn load inside the functions, so --help answers at once
    import jnn

DATA = Path(__file__).resolve().parent / "data" / "jnn_text.txt"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="training steps")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per training step")
    parser.add_argument(
        "--context", type=int, default=128, help="characters per training window (and KV cache)"
    )
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--features", type=int, default=128, help="width of the model")
    parser.add_argument("--heads", type=int, default=4, help="attention heads per block")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout rate in training")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--prompt", type=str, default="A layer ", help="text to start from")
    parser.add_argument(
        "--sample-length", type=int, default=110, help="characters to generate after the prompt"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="sampling temperature; 0 always picks the most likely character",
    )
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="compute dtype (params stay float32; float16 adds dynamic loss scaling)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of init, batches and sampling")
    parser.add_argument("--smoke", action="store_true", help="a few steps, a short sample (CI)")
    return parser


def load_text() -> tuple[np.ndarray, list[str]]:
    """Character ids of the whole text, and the alphabet (sorted characters)."""
    text = DATA.read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    index = {c: i for i, c in enumerate(alphabet)}
    return np.array([index[c] for c in text], np.int32), alphabet


def windows(ids: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``ids[s : s + length]`` and targets shifted by one, for each start ``s``."""
    chunks = ids[starts[:, None] + np.arange(length + 1)]
    return chunks[:, :-1], chunks[:, 1:]


def count_baseline_bits(train: np.ndarray, test: np.ndarray, vocab: int) -> tuple[float, float]:
    """Held-out bits per character of add-one-smoothed unigram and bigram counts."""
    unigram = np.bincount(train, minlength=vocab) + 1.0
    unigram_bits = -np.log2(unigram[test] / unigram.sum()).mean()
    bigram = np.ones((vocab, vocab))
    np.add.at(bigram, (train[:-1], train[1:]), 1.0)
    bigram /= bigram.sum(axis=1, keepdims=True)
    bigram_bits = -np.log2(bigram[test[:-1], test[1:]]).mean()
    return float(unigram_bits), float(bigram_bits)


def make_generate(model: jnn.Module):
    """A jitted ``generate(params, prompt, key, temperature, steps=n) -> ids [n]``.

    ``prompt`` is ``[length]`` ids; ``temperature`` 0 picks the most likely character.
    """
    import jax
    import jax.numpy as jnp

    def generate(params, prompt, key, temperature, steps):
        cache = model.init_cache(params, 1)
        logits, cache = model.apply(params, prompt[None], cache=cache)  # fill the cache

        def one(carry, step_key):
            cache, last = carry
            greedy = jnp.argmax(last)
            scaled = last / jnp.maximum(temperature, 1e-6)
            sampled = jax.random.categorical(step_key, scaled)
            token = jnp.where(temperature > 0, sampled, greedy).astype(prompt.dtype)
            logits, cache = model.apply(params, token[None, None], cache=cache)
            return (cache, logits[0, -1]), token

        _, tokens = jax.lax.scan(one, (cache, logits[0, -1]), jax.random.split(key, steps))
        return tokens

    return jax.jit(generate, static_argnames="steps")


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help exits here, before JAX loads
    if args.smoke:
        args.steps, args.context, args.sample_length = 5, 32, 20

    ids, alphabet = load_text()
    if any(c not in alphabet for c in args.prompt):
        parser.error("the prompt uses characters that are not in the text")
    if len(args.prompt) + args.sample_length > args.context:
        # Rotary positions past the training windows were never seen: samples degrade.
        parser.error(
            f"prompt plus sample ({len(args.prompt)} + {args.sample_length}) must fit in "
            f"the {args.context} positions the model is trained on (--context)"
        )
    split = len(ids) * 9 // 10
    train, test = ids[:split], ids[split:]
    print(f"{len(train):,} training and {len(test):,} held-out characters")

    import jax
    import jax.numpy as jnp
    import optax

    import jnn

    model = jnn.TransformerLM(
        vocab_size=len(alphabet),
        num_layers=args.layers,
        features=args.features,
        num_heads=args.heads,
        max_length=args.context,  # the KV cache holds one training window
        dropout_rate=args.dropout,
    )
    if args.precision != "float32":
        # Params stay float32 (the optimizer's master copy); the forward and backward
        # passes run in the chosen dtype; logits, and so the loss, come back in float32.
        model = jnn.MixedPrecision(model, args.precision)
    init_key, sample_key = jax.random.split(jax.random.key(args.seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.learning_rate, min(100, args.steps // 10 + 1), args.steps
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
    # Params, optimizer state, step count and the run's key (step i's dropout key is
    # jnn.step_key(state.key, i)), as one pytree.
    loss_scale = jnn.DynamicLossScale() if args.precision == "float16" else None
    state = jnn.init_train_state(
        model, optimizer, init_key, jnp.zeros((1, args.context), jnp.int32), loss_scale=loss_scale
    )
    loss = jnn.softmax_cross_entropy_with_integer_labels
    step = jnn.make_train_step(model, loss, optimizer)  # donates the state: always rebind it

    count = sum(p.size for p in jax.tree.leaves(state.params))
    print(f"{count:,} parameters; training {args.steps} steps (the first one compiles)")
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for i in range(args.steps):
        starts = rng.integers(0, len(train) - args.context - 1, args.batch_size)
        batch = windows(train, starts, args.context)
        state, logs = step(state, batch)
        if i == 0 or (i + 1) % max(1, args.steps // 10) == 0:
            print(
                f"step {i + 1:5d}/{args.steps}: train loss "
                f"{float(logs['loss']) / math.log(2):.2f} bits/char, "
                f"{time.perf_counter() - start:.1f} s"
            )

    # Held-out loss over consecutive windows that cover the test text once.
    starts = np.arange(0, len(test) - args.context - 1, args.context)
    evaluate = jax.jit(lambda p, x, y: loss(model.apply(p, x), y))
    params = state.params
    test_bits = float(evaluate(params, *windows(test, starts, args.context))) / math.log(2)
    unigram_bits, bigram_bits = count_baseline_bits(train, test, len(alphabet))
    print(
        f"held-out bits per character: transformer {test_bits:.2f}, "
        f"bigram counts {bigram_bits:.2f}, unigram counts {unigram_bits:.2f}"
    )

    print(f"sampling {args.sample_length} characters with the KV cache (one compiled scan)")
    generate = make_generate(model)
    prompt = jnp.array([alphabet.index(c) for c in args.prompt], jnp.int32)
    tokens = generate(params, prompt, sample_key, args.temperature, steps=args.sample_length)
    sample = args.prompt + "".join(alphabet[int(t)] for t in tokens)
    print(f"sample (temperature {args.temperature}):\n{sample}")
    if not args.smoke and test_bits >= bigram_bits:
        sys.exit(1)
    return {
        "test_bits": test_bits,
        "bigram_bits": bigram_bits,
        "unigram_bits": unigram_bits,
        "sample": sample,
    }


if __name__ == "__main__":
    main()
