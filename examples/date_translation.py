"""Translate dates written by people into ISO dates with an encoder-decoder transformer.

Data: generated here, offline and reproducibly (``--seed``): dates from 1900 to 2099
written in eleven ways ("March 5, 1987", "5 Mar 1987", "Thursday, March 5, 1987",
"the 5th of March 1987", "5.3.1987", "1987/03/05", ...; sometimes in lower or upper
case), each paired with its ISO form "1987-03-05". Every tenth day of the two centuries
is held out: the test dates are days the model never saw in any form.

The model is the transformer of "Attention is all you need" at a small size, built from
``jnn.TransformerBlock``: an encoder (character embeddings, sinusoidal positions,
self-attention blocks) reads the padded source, and a decoder (causal self-attention
blocks with cross-attention to the encoder's output) writes the 10 output characters.
The source padding reaches attention as lengths (``lengths=`` in the encoder,
``context_lengths=`` in the decoder's cross-attention), not as mask arrays.
``--post-norm`` builds the original post-norm blocks instead of pre-norm ones. Training
uses teacher forcing; the test translates greedily, one character at a time, in one
compiled loop.

It reports the held-out exact-match accuracy (every character right) and the accuracy
per character, against a baseline that writes the most common training character at
each position ("19..-..-.."-like guesses). It prints the loss every tenth of the run with
the elapsed time; the defaults take about a minute on a 2-core CPU and translate 99.8%
of the held-out dates exactly (post-norm: 100%), against 0.457 of the characters for
the baseline. It writes no files.

Run:  python examples/date_translation.py
      python examples/date_translation.py --post-norm
      python examples/date_translation.py --smoke   (5 steps on a small set, for CI)
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # JAX and jnn load inside the functions, so --help answers at once
    import jnn

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST, LAST = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)
TARGET_LENGTH = 10  # "YYYY-MM-DD"
PAD, START = 0, 1  # the first two ids; the characters follow


def ordinal(day: int) -> str:
    if day in (11, 12, 13):
        return f"{day}th"
    return f"{day}{({1: 'st', 2: 'nd', 3: 'rd'}).get(day % 10, 'th')}"


FORMATS = [
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",
    lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{WEEKDAYS[d.weekday()][:3]} {d.day} {MONTHS[d.month - 1][:3]} {d.year}",
    lambda d: f"the {ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1]} {ordinal(d.day)}, {d.year}",
    lambda d: f"{d.day}.{d.month}.{d.year}",
    lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    lambda d: f"{d.year}, {MONTHS[d.month - 1]} {d.day}",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="training steps")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per training step")
    parser.add_argument("--examples", type=int, default=40_000, help="training pairs to draw")
    parser.add_argument("--layers", type=int, default=2, help="blocks in the encoder and decoder")
    parser.add_argument("--features", type=int, default=64, help="width of the model")
    parser.add_argument("--heads", type=int, default=4, help="attention heads per block")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument(
        "--post-norm", action="store_true", help="post-norm blocks (the original transformer's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, init and batches")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a small set (CI)")
    return parser


def make_pairs(count: int, held_out: bool, rng: np.random.Generator) -> tuple[list, list]:
    """``count`` (source, target) strings; ``held_out`` picks from every tenth day only,
    the training pairs from the other days."""
    span = (LAST - FIRST).days + 1
    days = np.arange(span)
    days = days[(days % 10 == 0) == held_out]
    sources, targets = [], []
    for day, style, case in zip(
        rng.choice(days, count),
        rng.integers(0, len(FORMATS), count),
        rng.random(count),
        strict=True,
    ):
        date = FIRST + datetime.timedelta(days=int(day))
        text = FORMATS[style](date)
        text = text.lower() if case < 0.2 else text.upper() if case > 0.9 else text
        sources.append(text)
        targets.append(date.isoformat())
    return sources, targets


def make_vocabulary() -> list[str]:
    """Every character a source or target can hold, after the ids of PAD and START."""
    text = " ,./-0123456789" + "".join(MONTHS + WEEKDAYS) + "thesofndr"
    return sorted(set(text + text.lower() + text.upper()))


def encode(texts: list[str], vocabulary: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids ``[n, length]`` padded with ``PAD``, and each text's length."""
    index = {c: i + 2 for i, c in enumerate(vocabulary)}
    ids = np.full((len(texts), length), PAD, np.int32)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = [index[c] for c in text]
    return ids, np.array([len(t) for t in texts], np.int32)


def build_model(vocab_size: int, args: argparse.Namespace) -> tuple[jnn.Module, jnn.Module]:
    """The encoder ``(source, lengths) -> memory`` and the decoder ``(target_in, memory,
    lengths) -> logits``, two jnn composites."""
    import jnn

    features, heads, layers = args.features, args.heads, args.layers
    norm_first = not args.post_norm

    class Encoder(jnn.Module):
        def forward(self, scope, source, lengths):
            h = scope("embed", jnn.Embedding(vocab_size, features), source)
            h = scope("positions", jnn.SinusoidalPositions(), h * features**0.5)
            block = jnn.TransformerBlock(heads, 4 * features, norm_first=norm_first)
            for i in range(layers):
                h = scope(f"block_{i}", block, h, lengths=lengths)
            return scope("norm", jnn.LayerNorm(), h) if norm_first else h

    class Decoder(jnn.Module):
        def forward(self, scope, target_in, memory, lengths):
            h = scope("embed", jnn.Embedding(vocab_size, features), target_in)
            h = scope("positions", jnn.SinusoidalPositions(), h * features**0.5)
            block = jnn.TransformerBlock(
                heads, 4 * features, causal=True, cross_attention=True, norm_first=norm_first
            )
            for i in range(layers):
                h = scope(f"block_{i}", block, h, memory, context_lengths=lengths)
            if norm_first:
                h = scope("norm", jnn.LayerNorm(), h)
            return scope("head", jnn.Dense(vocab_size), h)

    return Encoder(), Decoder()


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)  # --help exits here, before JAX loads
    if args.smoke:
        args.steps, args.examples = 5, 512
    rng = np.random.default_rng(args.seed)
    train_sources, train_targets = make_pairs(args.examples, False, rng)
    test_sources, test_targets = make_pairs(2000 if not args.smoke else 256, True, rng)
    vocabulary = make_vocabulary()
    length = max(map(len, train_sources + test_sources))
    x_train, len_train = encode(train_sources, vocabulary, length)
    y_train, _ = encode(train_targets, vocabulary, TARGET_LENGTH)
    x_test, len_test = encode(test_sources, vocabulary, length)
    y_test, _ = encode(test_targets, vocabulary, TARGET_LENGTH)
    print(
        f"{len(x_train):,} training pairs, {len(x_test):,} held-out pairs of unseen days; "
        f"sources up to {length} characters, e.g. {test_sources[0]!r} -> {test_targets[0]!r}"
    )

    import jax
    import jax.numpy as jnp
    import optax

    import jnn

    vocab_size = len(vocabulary) + 2
    encoder, decoder = build_model(vocab_size, args)

    def shifted(targets):  # teacher forcing: START, then the target but its last character
        return jnp.concatenate([jnp.full((targets.shape[0], 1), START), targets[:, :-1]], 1)

    def logits_of(params, source, lengths, targets):
        memory = encoder.apply(params["encoder"], source, lengths)
        return decoder.apply(params["decoder"], shifted(targets), memory, lengths)

    key_encoder, key_decoder = jax.random.split(jax.random.key(args.seed))
    sample = jnp.asarray(x_train[:1]), jnp.asarray(len_train[:1])
    target, memory = jnp.zeros((1, TARGET_LENGTH), jnp.int32), jnp.zeros((1, length, args.features))
    params = {  # one pytree: optax and jax.tree see the two models as one
        "encoder": encoder.init(key_encoder, *sample),
        "decoder": decoder.init(key_decoder, target, memory, sample[1]),
    }
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, args.learning_rate, min(100, args.steps // 10 + 1), args.steps
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, source, lengths, targets):
        def loss_fn(p):
            logits = logits_of(p, source, lengths, targets)
            return jnn.softmax_cross_entropy_with_integer_labels(logits, targets)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def translate(params, source, lengths):
        """Greedy decoding: each step reruns the decoder on the prefix written so far
        (causal attention makes the positions after it irrelevant) and keeps one more
        character; the encoder runs once."""
        memory = encoder.apply(params["encoder"], source, lengths)
        written = jnp.zeros((source.shape[0], TARGET_LENGTH), jnp.int32)

        def one(t, written):
            logits = decoder.apply(params["decoder"], shifted(written), memory, lengths)
            return written.at[:, t].set(jnp.argmax(logits[:, t], -1).astype(jnp.int32))

        return jax.lax.fori_loop(0, TARGET_LENGTH, one, written)

    count = sum(p.size for p in jax.tree.leaves(params))
    blocks = "post-norm" if args.post_norm else "pre-norm"
    print(f"{count:,} parameters, {blocks} blocks; training {args.steps} steps")
    start = time.perf_counter()
    for i in range(args.steps):
        rows = rng.integers(0, len(x_train), args.batch_size)
        params, opt_state, loss = train_step(
            params, opt_state, x_train[rows], len_train[rows], y_train[rows]
        )
        if i == 0 or (i + 1) % max(1, args.steps // 10) == 0:
            print(
                f"step {i + 1:5d}/{args.steps}: train loss {float(loss):.4f}, "
                f"{time.perf_counter() - start:.1f} s"
            )

    written = np.asarray(translate(params, jnp.asarray(x_test), jnp.asarray(len_test)))
    exact = float((written == y_test).all(1).mean())
    per_character = float((written == y_test).mean())
    majority = np.array([np.bincount(column).argmax() for column in y_train.T])
    baseline = float((y_test == majority).mean())
    chars = ["", ""] + vocabulary
    for source, row in list(zip(test_sources, written, strict=True))[:4]:
        print(f"  {source!r:40} -> {''.join(chars[i] for i in row)!r}")
    print(
        f"held-out exact matches {exact:.3f}, characters right {per_character:.3f} "
        f"(most common character per position: {baseline:.3f})"
    )
    if not args.smoke and exact < 0.9:
        sys.exit(1)
    return {"exact": exact, "per_character": per_character, "baseline": baseline}


if __name__ == "__main__":
    main()
