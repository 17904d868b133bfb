"""An MLP classifier on scikit-learn's handwritten digits, with the whole training loop shown.

Data: ``sklearn.datasets.load_digits`` (1,797 grey 8x8 images of the digits 0-9, shipped
with scikit-learn, no download), pixels scaled to [0, 1], split 75/25 into 1,347 training
and 450 test images with ``train_test_split(..., test_size=0.25, stratify=y,
random_state=0)``.

The loop: model factory -> optax optimizer -> ``jnn.init_train_state`` (the params from
``model.init`` and the optimizer state, in one ``jnn.TrainState``) -> jitted step
``state, logs = step(state, batch)`` from ``jnn.make_train_step`` -> epochs over
``jnn.batches`` with a seeded shuffle -> ``jnn.evaluate`` on the test set. With the
defaults (two hidden layers of 512, Adam with a cosine-decayed learning rate, 30 epochs)
it reaches 97.8-98.4% test accuracy (seeds
0-19) in a few seconds on a 2-core CPU, and exits with status 1 below 97%. It prints the
losses every 5 epochs, and writes no files.

Run:  python examples/mlp_digits.py
      python examples/mlp_digits.py --width 128 --depth 1 --epochs 20
      python examples/mlp_digits.py --smoke        (two epochs on a subset, for CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # JAX and jnn load inside the functions, so --help answers at once
    import jnn

TARGET = 0.97


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    parser.add_argument("--width", type=int, default=512, help="units per hidden layer")
    parser.add_argument("--depth", type=int, default=2, help="number of hidden layers")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="images per training step")
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="compute dtype (params stay float32; float16 adds dynamic loss scaling)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and the shuffles")
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 256 examples (CI)")
    return parser


def load_data():
    """Return ``x_train [1347, 64], x_test [450, 64], y_train [1347], y_test [450]``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixels are integers 0..16
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def build_model(width: int, depth: int) -> jnn.Module:
    """``depth`` hidden ReLU layers of ``width`` units, then 10 logits."""
    import jnn

    return jnn.MLP([width] * depth + [10])


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)  # --help exits here, before JAX loads
    import jax
    import optax

    import jnn

    start = time.perf_counter()
    x_train, x_test, y_train, y_test = load_data()
    if args.smoke:
        args.epochs = 2
        x_train, y_train = x_train[:256], y_train[:256]
    print(f"{len(x_train)} training and {len(x_test)} test images")

    # 1. The model, the optimizer, and the train state: the params (a nested dict
    #    {"dense_0": {"weight", "bias"}, ...}), the optimizer state, the step count and the
    #    run's key, as one pytree.
    model = build_model(args.width, args.depth)
    if args.precision != "float32":  # float32 params, computation in the chosen dtype
        model = jnn.MixedPrecision(model, args.precision)
    loss_scale = jnn.DynamicLossScale() if args.precision == "float16" else None
    steps_per_epoch = len(x_train) // args.batch_size
    schedule = optax.cosine_decay_schedule(args.learning_rate, args.epochs * steps_per_epoch)
    optimizer = optax.adam(schedule)
    state = jnn.init_train_state(
        model, optimizer, jax.random.key(args.seed), x_train[:1], loss_scale=loss_scale
    )
    count = sum(p.size for p in jax.tree.leaves(state.params))
    print(f"model: {model}, {count:,} parameters")
    print(f"training {args.epochs} epochs (the first one compiles)")

    # 2. The jit-compiled training step. It donates the state it is given, so always
    #    rebind `state` to what it returns.
    loss_fn = jnn.softmax_cross_entropy_with_integer_labels
    metrics = {"accuracy": jnn.accuracy}
    step = jnn.make_train_step(model, loss_fn, optimizer, metrics=metrics)

    # 3. Epochs: a new, reproducible shuffle each epoch, drawn from the run's key as
    #    jnn.fit draws it. drop_last keeps every batch the same shape, so the step compiles
    #    once (and no step sees a tiny remainder batch).
    for epoch in range(args.epochs):
        shuffle_key = jnn.epoch_key(state.key, epoch)
        losses = []
        for batch in jnn.batches(
            (x_train, y_train), args.batch_size, key=shuffle_key, drop_last=True
        ):
            state, logs = step(state, batch)
            losses.append(logs["loss"])
        if (epoch + 1) % 5 == 0 or epoch in (0, args.epochs - 1):
            scores = jnn.evaluate(
                model, state.params, (x_test, y_test), loss_fn=loss_fn, metrics=metrics
            )
            print(
                f"epoch {epoch + 1:3d}/{args.epochs}: train loss {float(np.mean(losses)):.4f}, "
                f"test loss {scores['loss']:.4f}, test accuracy {scores['accuracy']:.4f}, "
                f"{time.perf_counter() - start:.1f} s"
            )

    # 4. The held-out test set, in inference mode.
    scores = jnn.evaluate(model, state.params, (x_test, y_test), loss_fn=loss_fn, metrics=metrics)
    seconds = time.perf_counter() - start
    print(f"test accuracy: {scores['accuracy']:.4f} (target >= {TARGET}), {seconds:.1f} s")
    if not args.smoke and scores["accuracy"] < TARGET:
        sys.exit(1)
    return {"test_accuracy": scores["accuracy"], "test_loss": scores["loss"], "seconds": seconds}


if __name__ == "__main__":
    main()
