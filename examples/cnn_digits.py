"""A small CNN with batch norm and dropout on scikit-learn's handwritten digits.

Data: ``sklearn.datasets.load_digits`` (1,797 grey 8x8 images, shipped with
scikit-learn, no download), pixels scaled to [0, 1], split 75/25 with
``train_test_split(..., test_size=0.25, stratify=y, random_state=0)``, the same split as
``mlp_digits.py``.

Network: three 3x3 convolutions with batch norm and ReLU, two 2x2 max pools, dropout and
a dense classifier. ``jnn.init_train_state`` gathers the params, the batch-norm
statistics (``model_state``), the optimizer state and the run's key in one
``jnn.TrainState``; ``jnn.fit`` trains it, drawing each step's dropout key and each
epoch's shuffle from that key, and its progress bar shows the epoch, the elapsed time and
each epoch's losses. Into ``--output-dir`` go the training curve ``cnn_digits_curve.png``,
the per-epoch log ``cnn_digits_history.jsonl`` (``jnn.JSONLinesLogger``, one JSON line
written as each epoch ends) and ``cnn_digits_history.png``, that log read back and drawn
by ``jnn.plot_history``.

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
        help="folder for cnn_digits_curve.png, cnn_digits_history.jsonl and "
        "cnn_digits_history.png, created if missing; --smoke without it writes to smoke/ "
        "inside the default",
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
    steps = args.epochs * (len(x_train) // args.batch_size)
    schedule = optax.cosine_decay_schedule(args.learning_rate, max(steps, 1))
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    # The params, the batch-norm statistics (model_state), the optimizer state and the
    # run's key (dropout and shuffles), in one jnn.TrainState.
    state = jnn.init_train_state(model, optimizer, jax.random.key(args.seed), x_train[:1])
    print(f"{sum(p.size for p in jax.tree.leaves(state.params)):,} parameters")
    print(f"training {args.epochs} epochs (the first step compiles)")

    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "cnn_digits_history.jsonl"
    start = time.perf_counter()
    result = jnn.fit(
        model,
        state,
        jnn.softmax_cross_entropy_with_integer_labels,
        optimizer,
        (x_train, y_train),
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_data=(x_test, y_test),
        metrics={"accuracy": jnn.accuracy},
        callbacks=[jnn.JSONLinesLogger(log, append=False)],  # a line per epoch, as it ends
    )
    seconds = time.perf_counter() - start
    history = result.history
    accuracy = history["eval_accuracy"][-1]
    print(f"trained {args.epochs} epochs in {seconds:.1f} s")
    print(f"test accuracy: {accuracy:.4f} (target >= {TARGET})")
    print(f"saved {log.resolve()}")
    plot = output_dir / "cnn_digits_curve.png"
    save_curve(history, plot)
    print(f"saved {plot.resolve()}")
    # Every quantity of the log against the epoch, read back from the file.
    history_plot = output_dir / "cnn_digits_history.png"
    figure = jnn.plot_history(jnn.history_from_json_lines(log), title="cnn_digits.py")
    figure.axes[0].set_yscale("log")  # a matplotlib Figure: adjust it before saving
    figure.savefig(history_plot, dpi=100)
    print(f"saved {history_plot.resolve()}")
    if not args.smoke and accuracy < TARGET:
        sys.exit(1)
    return {
        "test_accuracy": accuracy,
        "seconds": seconds,
        "history": history,
        "plot": plot,
        "log": log,
        "history_plot": history_plot,
    }


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
