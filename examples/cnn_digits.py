"""A small CNN with batch norm and dropout on scikit-learn's handwritten digits.

Data: ``sklearn.datasets.load_digits`` (1,797 grey 8x8 images, shipped with
scikit-learn, no download), pixels scaled to [0, 1], split 75/25 with
``train_test_split(..., test_size=0.25, stratify=y, random_state=0)``, the same split as
``mlp_digits.py``.

Network: three 3x3 convolutions with batch norm and ReLU, two 2x2 max pools, dropout and
a dense classifier. Batch-norm statistics travel in ``state``; ``jnn.fit`` passes a new
dropout key to every step, and its progress bar shows the epoch, the elapsed time and
each epoch's losses. The training curve is saved as ``cnn_digits_curve.png`` in
``--output-dir``.

Run:  python examples/cnn_digits.py            (about 99.6% test accuracy)
      python examples/cnn_digits.py --output-dir /tmp/cnn
      python examples/cnn_digits.py --smoke    (a few steps, for CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # JAX and jnn load inside the functions, so --help answers at once
    import jnn

TARGET = 0.98
OUTPUT_DIR = Path(__file__).resolve().parent / "outputs"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=40, help="passes over the training set")
    parser.add_argument("--width", type=int, default=32, help="channels of the first convolutions")
    parser.add_argument("--dropout", type=float, default=0.3, help="dropout rate in the head")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="images per training step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and the training")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=OUTPUT_DIR,
        help="folder for cnn_digits_curve.png, created if missing; --smoke without it "
        "writes to smoke/ inside the default",
    )
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 256 images (CI)")
    return parser


def build_model(width: int, dropout: float) -> jnn.Module:
    import jnn

    def conv_block(features):
        return [jnn.Conv(features, (3, 3)), jnn.BatchNorm(momentum=0.9), jnn.relu]

    return jnn.Sequential(
        [
            *conv_block(width),  # [batch, 8, 8, width]
            *conv_block(width),
            jnn.MaxPool((2, 2)),  # [batch, 4, 4, width]
            *conv_block(2 * width),
            jnn.MaxPool((2, 2)),  # [batch, 2, 2, 2 * width]
            jnn.Flatten(),  # [batch, 8 * width]
            jnn.Dropout(dropout),
            jnn.Dense(128),
            jnn.relu,
            jnn.Dropout(dropout),
            jnn.Dense(10),
        ]
    )


def load_data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # [1797, 8, 8, 1]
    return train_test_split(
        images,
        digits.target.astype(np.int32),
        test_size=0.25,
        stratify=digits.target,
        random_state=0,
    )


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)  # --help exits here, before JAX loads
    import jax
    import optax

    import jnn

    output_dir = args.output_dir
    if args.smoke and output_dir == OUTPUT_DIR:
        output_dir = OUTPUT_DIR / "smoke"  # leave the full run's plot in place
    x_train, x_test, y_train, y_test = load_data()
    if args.smoke:
        args.epochs = 2
        x_train, y_train = x_train[:256], y_train[:256]
    print(f"{len(x_train)} training and {len(x_test)} test images")
    model = build_model(args.width, args.dropout)
    key = jax.random.key(args.seed)
    init_key, train_key = jax.random.split(key)
    params, state = model.init_with_state(init_key, x_train[:1])
    print(f"{sum(p.size for p in jax.tree.leaves(params)):,} parameters")
    print(f"training {args.epochs} epochs (the first step compiles)")

    steps = args.epochs * (len(x_train) // args.batch_size)
    schedule = optax.cosine_decay_schedule(args.learning_rate, max(steps, 1))
    start = time.perf_counter()
    result = jnn.fit(
        model,
        params,
        jnn.softmax_cross_entropy_with_integer_labels,
        optax.adamw(schedule, weight_decay=1e-4),
        (x_train, y_train),
        key=train_key,
        state=state,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_data=(x_test, y_test),
        metrics={"accuracy": jnn.accuracy},
    )
    seconds = time.perf_counter() - start
    history = result.history
    accuracy = history["eval_accuracy"][-1]
    print(f"trained {args.epochs} epochs in {seconds:.1f} s")
    print(f"test accuracy: {accuracy:.4f} (target >= {TARGET})")
    output_dir.mkdir(parents=True, exist_ok=True)
    plot = output_dir / "cnn_digits_curve.png"
    save_curve(history, plot)
    print(f"saved {plot.resolve()}")
    if not args.smoke and accuracy < TARGET:
        sys.exit(1)
    return {"test_accuracy": accuracy, "seconds": seconds, "history": history, "plot": plot}


def save_curve(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, history["loss"], label="train")
    left.plot(epochs, history["eval_loss"], label="test")
    left.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    right.plot(epochs, history["accuracy"], label="train (dropout on)")
    right.plot(epochs, history["eval_accuracy"], label="test")
    right.set(xlabel="epoch", ylabel="accuracy", ylim=(0.9, 1.0), title="accuracy")
    for axis in (left, right):
        axis.legend()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
