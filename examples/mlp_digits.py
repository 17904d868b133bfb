"""An MLP classifier on scikit-learn's handwritten digits, with the whole training loop shown.

Data: ``sklearn.datasets.load_digits`` (1,797 grey 8x8 images of the digits 0-9, shipped
with scikit-learn, no download), pixels scaled to [0, 1], split 75/25 with
``train_test_split(..., test_size=0.25, stratify=y, random_state=0)``.

The loop: model -> init -> optax optimizer -> jitted step from ``jnn.make_train_step`` ->
epochs over ``jnn.batches`` with a seeded shuffle -> ``jnn.evaluate`` on the test set.
It reaches about 98% test accuracy in a few seconds on a 2-core CPU.

Run:  python examples/mlp_digits.py
      python examples/mlp_digits.py --width 128 --depth 1 --epochs 20
      python examples/mlp_digits.py --smoke        (two epochs on a subset, for CI)
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jnn

TARGET = 0.97


def load_data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # [1797, 64]
    y = digits.target.astype(np.int32)  # [1797]
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--width", type=int, default=256, help="units per hidden layer")
    parser.add_argument("--depth", type=int, default=2, help="number of hidden layers")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 256 examples (CI)")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    x_train, x_test, y_train, y_test = load_data()
    if args.smoke:
        args.epochs = 2
        x_train, y_train = x_train[:256], y_train[:256]

    # 1. The model: hidden Dense layers with ReLU, then 10 logits.
    model = jnn.MLP([args.width] * args.depth + [10])
    key = jax.random.key(args.seed)
    init_key, shuffle_key = jax.random.split(key)
    params = model.init(init_key, x_train[:1])
    count = sum(p.size for p in jax.tree.leaves(params))
    print(f"model: {model}, {count:,} parameters")

    # 2. The optimizer and the jit-compiled training step (it donates params/opt_state).
    optimizer = optax.adam(args.learning_rate)
    opt_state = optimizer.init(params)
    loss_fn = jnn.softmax_cross_entropy_with_integer_labels
    metrics = {"accuracy": jnn.accuracy}
    step = jnn.make_train_step(model, loss_fn, optimizer, metrics=metrics)

    # 3. Epochs: a new, reproducible shuffle each epoch.
    for epoch in range(args.epochs):
        epoch_key = jax.random.fold_in(shuffle_key, epoch)
        losses = []
        for batch in jnn.batches((x_train, y_train), args.batch_size, key=epoch_key):
            params, opt_state, logs = step(params, opt_state, batch)
            losses.append(logs["loss"])
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            scores = jnn.evaluate(model, params, (x_test, y_test), loss_fn=loss_fn, metrics=metrics)
            print(
                f"epoch {epoch + 1:3d}: train loss {float(np.mean(losses)):.4f}, "
                f"test loss {scores['loss']:.4f}, test accuracy {scores['accuracy']:.4f}"
            )

    # 4. Evaluate on the held-out test set.
    scores = jnn.evaluate(model, params, (x_test, y_test), loss_fn=loss_fn, metrics=metrics)
    seconds = time.perf_counter() - start
    print(f"test accuracy: {scores['accuracy']:.4f} (target >= {TARGET}), {seconds:.1f} s")
    if not args.smoke and scores["accuracy"] < TARGET:
        sys.exit(1)
    return {"test_accuracy": scores["accuracy"], "test_loss": scores["loss"], "seconds": seconds}


if __name__ == "__main__":
    main()
