"""Data augmentation for a digits CNN: random shifts and rotations inside the jitted step.

Data: ``sklearn.datasets.load_digits`` (1,797 grey 8x8 images, shipped with
scikit-learn, no download), pixels scaled to [0, 1] (background 0), split 80/20 into
1,437 training and 360 test images with ``train_test_split(..., test_size=0.2,
stratify=y, random_state=0)``.

Augmentations: pure functions of an explicit key and a batch ``[batch, 8, 8, 1]``, each
image drawn its own way: ``random_shift`` moves it by whole pixels (up to ``--max-shift``
in each direction, zeros flowing in), ``random_rotation`` turns it about its centre by up
to ``--max-degrees`` (bilinear resampling with ``jax.scipy.ndimage.map_coordinates``).
They work under ``jit`` and ``vmap``. ``augmentation_layer`` wraps them as a layer with
no parameters that acts only while training, so it sits first in the model and draws
from the key ``jnn.make_train_step`` gives each step (``jnn.step_key(state.key, step)``):
the augmentation runs inside the compiled step, a new draw every step, and evaluation
sees the images as they are.

Network: a plain CNN with no batch norm, dropout or pooling (two 3x3 convolutions of 16
and 32 channels with ReLU, then one dense layer to the 10 classes), trained with Adam
and a cosine-decayed learning rate for 40 epochs by a loop over ``jnn.batches`` (as in
``mlp_digits.py``), so that one compiled step serves every seed of a setting.
``cnn_digits.py``'s network (batch norm, dropout, pooling) already reaches about 99.6%
without augmentation, which leaves little to add; this one overfits, so what
augmentation adds shows. Four settings (none, shifts, rotations, both), each for
``--seeds`` seeds; it prints each run's test accuracy, the mean and standard deviation
per setting, and writes ``augment_digits.png`` (augmented examples and the accuracies)
into ``--output-dir``. It exits with status 1 if shifts add less than one point
(``TARGET_GAIN``) to the mean test accuracy.

Run:  python examples/augment_digits.py       (about a minute; mean of 3 seeds: no
                                               augmentation 97.7%, shifts 99.5%)
      python examples/augment_digits.py --seeds 5 --output-dir /tmp/augment
      python examples/augment_digits.py --smoke  (one epoch on 256 images, for CI)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # JAX and jnn load inside the functions, so --help answers at once
    import jax

    import jnn

OUTPUT_DIR = Path(__file__).resolve().parent / "outputs"
TARGET_GAIN = 0.01  # shifts must add at least a point of mean test accuracy
SETTINGS = ("none", "shifts", "rotations", "shifts and rotations")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=40, help="passes over the training set")
    parser.add_argument("--width", type=int, default=16, help="channels of the first convolution")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="images per training step")
    parser.add_argument("--max-shift", type=int, default=1, help="largest shift, in pixels")
    parser.add_argument(
        "--max-degrees", type=float, default=10.0, help="largest rotation, in degrees"
    )
    parser.add_argument("--seeds", type=int, default=3, help="runs per setting")
    parser.add_argument("--seed", type=int, default=0, help="the first seed of each setting")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=OUTPUT_DIR,
        help="folder for augment_digits.png, created if missing; --smoke without it writes "
        "to smoke/ inside the default",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 epoch on 256 images, one seed, no augmentation and both (CI)",
    )
    return parser


# --------------------------------------------------------------------------- augmentations


def check_images(name: str, images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(
            f"{name}: expected images of shape [batch, height, width, channels], got shape "
            f"{tuple(images.shape)}. Hint: add a channel axis with x[..., None], or a batch "
            "axis with x[None]."
        )


def shift_images(images: jax.Array, shifts: jax.Array) -> jax.Array:
    """Move each image by whole pixels; what moves out is lost, zeros move in.

    Args:
      images: ``[batch, height, width, channels]``.
      shifts: Integers ``[batch, 2]``: rows down and columns right (negative: up, left).

    Returns:
      ``[batch, height, width, channels]``, the dtype of ``images``:
      ``out[b, y, x] = images[b, y - shifts[b, 0], x - shifts[b, 1]]`` where that pixel
      exists, else 0.
    """
    import jax
    import jax.numpy as jnp

    check_images("shift_images", images)

    def shift_one(image, shift):
        height, width = image.shape[:2]
        moved = jnp.roll(image, (shift[0], shift[1]), axis=(0, 1))
        rows, columns = jnp.arange(height) - shift[0], jnp.arange(width) - shift[1]
        rows_inside = (rows >= 0) & (rows < height)
        columns_inside = (columns >= 0) & (columns < width)
        inside = rows_inside[:, None] & columns_inside[None, :]
        return jnp.where(inside[..., None], moved, jnp.zeros((), image.dtype))

    return jax.vmap(shift_one)(images, jnp.asarray(shifts))


def rotate_images(images: jax.Array, degrees: jax.Array) -> jax.Array:
    """Turn each image about its centre, counter-clockwise as displayed (row 0 on top).

    Each output pixel reads the input at its own position turned back by the angle, with
    bilinear interpolation (``jax.scipy.ndimage.map_coordinates``, ``order=1``); outside
    the image reads 0. An angle of 0 returns the images exactly.

    Args:
      images: ``[batch, height, width, channels]``, floating point.
      degrees: ``[batch]``, one angle per image.

    Returns:
      ``[batch, height, width, channels]``, the dtype of ``images``.
    """
    import jax
    import jax.numpy as jnp
    from jax.scipy.ndimage import map_coordinates

    check_images("rotate_images", images)
    height, width = images.shape[1:3]
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    y, x = jnp.meshgrid(jnp.arange(height) - centre_y, jnp.arange(width) - centre_x, indexing="ij")

    def rotate_one(image, angle):
        cos, sin = jnp.cos(jnp.deg2rad(angle)), jnp.sin(jnp.deg2rad(angle))
        coordinates = [centre_y + cos * y + sin * x, centre_x - sin * y + cos * x]

        def resample(channel):  # [height, width]
            return map_coordinates(channel, coordinates, order=1, mode="constant", cval=0.0)

        return jax.vmap(resample, in_axes=-1, out_axes=-1)(image).astype(image.dtype)

    return jax.vmap(rotate_one)(images, jnp.asarray(degrees, images.dtype))


def random_shift(key: jax.Array, images: jax.Array, max_shift: int = 1) -> jax.Array:
    """Shift each image by its own random whole number of pixels in ``[-max_shift,
    max_shift]``, down and right independently (so 9 positions for ``max_shift=1``)."""
    import jax

    check_images("random_shift", images)
    shifts = jax.random.randint(key, (images.shape[0], 2), -max_shift, max_shift + 1)
    return shift_images(images, shifts)


def random_rotation(key: jax.Array, images: jax.Array, max_degrees: float = 10.0) -> jax.Array:
    """Rotate each image by its own angle, uniform in ``[-max_degrees, max_degrees]``."""
    import jax

    check_images("random_rotation", images)
    degrees = jax.random.uniform(key, (images.shape[0],), minval=-max_degrees, maxval=max_degrees)
    return rotate_images(images, degrees)


def augment(
    key: jax.Array, images: jax.Array, max_shift: int = 1, max_degrees: float = 10.0
) -> jax.Array:
    """A random rotation, then a random shift (either is skipped when its limit is 0)."""
    import jax

    rotation_key, shift_key = jax.random.split(key)
    if max_degrees > 0:
        images = random_rotation(rotation_key, images, max_degrees)
    if max_shift > 0:
        images = random_shift(shift_key, images, max_shift)
    return images


def augmentation_layer(max_shift: int, max_degrees: float) -> jnn.Module:
    """``augment`` as a layer with no parameters: active while training (it needs the
    step's key then), the identity at inference."""
    import jnn

    def apply(params, images, *, key=None, is_training=False):
        del params
        if not is_training or (max_shift == 0 and max_degrees == 0):
            return images
        if key is None:
            raise jnn.MissingKeyError(
                "augment", "is_training=True needs a PRNG key for the random augmentation."
            )
        return augment(key, images, max_shift, max_degrees)

    return jnn.from_functions(lambda key, images: {}, apply, name="augment")


# --------------------------------------------------------------------------- training


def load_data():
    """Return ``x_train [1437, 8, 8, 1], x_test [360, 8, 8, 1], y_train, y_test``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # pixels are 0..16
    labels = digits.target.astype(np.int32)
    return train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=0)


def build_model(width: int) -> jnn.Module:
    """A plain CNN: ``[batch, 8, 8, 1]`` to 10 logits, nothing that regularises."""
    import jnn

    return jnn.Sequential(
        [
            jnn.Conv(width, (3, 3)),  # [batch, 8, 8, width]
            jnn.relu,
            jnn.Conv(2 * width, (3, 3)),  # [batch, 8, 8, 2 * width]
            jnn.relu,
            jnn.Flatten(),  # [batch, 128 * width]
            jnn.Dense(10),
        ]
    )


def setting_limits(setting: str, max_shift: int, max_degrees: float) -> tuple[int, float]:
    """The ``(max_shift, max_degrees)`` of one of ``SETTINGS``."""
    return (max_shift if "shifts" in setting else 0, max_degrees if "rotations" in setting else 0.0)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)  # --help exits here, before JAX loads
    import jax
    import optax

    import jnn

    output_dir = args.output_dir
    if args.smoke and output_dir == OUTPUT_DIR:
        output_dir = OUTPUT_DIR / "smoke"  # leave the full run's plot in place
    start = time.perf_counter()
    x_train, x_test, y_train, y_test = load_data()
    settings = SETTINGS
    if args.smoke:  # one epoch of the two settings that cover every code path
        args.epochs, args.seeds, settings = 1, 1, (SETTINGS[0], SETTINGS[-1])
        x_train, y_train = x_train[:256], y_train[:256]
    print(f"{len(x_train)} training and {len(x_test)} test images")

    loss_fn = jnn.softmax_cross_entropy_with_integer_labels
    metrics = {"accuracy": jnn.accuracy}
    steps = args.epochs * (len(x_train) // args.batch_size)
    optimizer = optax.adam(optax.cosine_decay_schedule(args.learning_rate, steps))
    seeds = range(args.seed, args.seed + args.seeds)
    accuracy = {}
    for setting in settings:
        max_shift, max_degrees = setting_limits(setting, args.max_shift, args.max_degrees)
        # The augmentation is the model's first layer: the step's key reaches it, and
        # jnn.evaluate (inference mode) sees the test images unchanged.
        model = jnn.Sequential(
            {"augment": augmentation_layer(max_shift, max_degrees), "cnn": build_model(args.width)}
        )
        step = jnn.make_train_step(model, loss_fn, optimizer, metrics=metrics)  # one per setting
        accuracy[setting] = []
        for seed in seeds:
            state = jnn.init_train_state(model, optimizer, jax.random.key(seed), x_train[:1])
            for epoch in range(args.epochs):
                shuffle_key = jnn.epoch_key(state.key, epoch)
                for batch in jnn.batches(
                    (x_train, y_train), args.batch_size, key=shuffle_key, drop_last=True
                ):
                    state, logs = step(state, batch)
            scores = jnn.evaluate(
                model, state.params, (x_test, y_test), loss_fn=loss_fn, metrics=metrics
            )
            accuracy[setting].append(scores["accuracy"])
            print(
                f"{setting:20s} seed {seed}: test accuracy {scores['accuracy']:.4f} "
                f"(last batch: loss {float(logs['loss']):.4f}, accuracy "
                f"{float(logs['accuracy']):.3f}), {time.perf_counter() - start:.1f} s"
            )
    seconds = time.perf_counter() - start

    print(f"test accuracy over {args.seeds} seeds, {args.epochs} epochs each ({seconds:.1f} s):")
    summary = {}
    for setting, values in accuracy.items():
        mean, spread = float(np.mean(values)), float(np.std(values))
        summary[setting] = {"mean": mean, "std": spread, "values": values}
        runs = ", ".join(f"{v:.4f}" for v in values)
        print(f"  {setting:20s} {mean:.2%} +- {spread:.2%} (std; runs {runs})")
    gains = {s: summary[s]["mean"] - summary["none"]["mean"] for s in settings[1:]}
    for setting, gain in gains.items():
        target = f" (target >= {TARGET_GAIN:+.2%})" if setting == "shifts" else ""
        print(f"{setting} add {gain:+.2%} to the mean test accuracy{target}")

    output_dir.mkdir(parents=True, exist_ok=True)
    plot = output_dir / "augment_digits.png"
    examples = augmented_examples(x_test, y_test, args.max_shift, args.max_degrees, args.seed)
    save_plot(examples, summary, plot)
    print(f"saved {plot.resolve()}")
    if not args.smoke and gains["shifts"] < TARGET_GAIN:
        sys.exit(1)
    return {"accuracy": summary, "gains": gains, "seconds": seconds, "plot": plot}


def augmented_examples(images, labels, max_shift, max_degrees, seed, columns=10) -> dict:
    """One test image of each digit, and three random draws of each setting."""
    import jax

    picks = np.array([np.flatnonzero(labels == digit)[0] for digit in range(columns)])
    batch = images[picks]
    keys = jax.random.split(jax.random.key(seed), 3)
    rows = {"original": batch}
    for setting in SETTINGS[1:]:
        limits = setting_limits(setting, max_shift, max_degrees)
        for i, key in enumerate(keys):
            rows[f"{setting} ({i + 1})"] = np.asarray(augment(key, batch, *limits))
    return rows


def save_plot(examples: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.15, 1]}
    )
    names = list(examples)
    height, width = 8, 8
    grid = np.full((len(names) * (height + 1) - 1, 10 * (width + 1) - 1), np.nan)
    for r, name in enumerate(names):
        for c in range(10):
            grid[r * 9 : r * 9 + height, c * 9 : c * 9 + width] = examples[name][c, ..., 0]
    colormap = matplotlib.colormaps["gray_r"].with_extremes(bad="#9ab")  # between tiles
    left.imshow(grid, cmap=colormap, vmin=0, vmax=1)
    left.set_yticks([r * 9 + 3.5 for r in range(len(names))], names, fontsize=8)
    left.set_xticks([])
    left.set_title("test images and random augmentations of them")

    settings = list(summary)
    for i, setting in enumerate(settings):
        values = 100 * np.asarray(summary[setting]["values"])
        spread = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.zeros(1)
        right.scatter(i - 0.1 + spread, values, color=f"C{i}", alpha=0.6, zorder=3)
        mean, std = 100 * summary[setting]["mean"], 100 * summary[setting]["std"]
        right.errorbar(i + 0.15, mean, yerr=std, fmt="D", color="black", capsize=4, zorder=4)
        right.annotate(f"{mean:.2f}%", (i + 0.22, mean), va="center", fontsize=9)
    right.set_xticks(range(len(settings)), [s.replace(" and ", "\n+ ") for s in settings])
    right.set(ylabel="test accuracy (%)", xlim=(-0.5, len(settings) - 0.2))
    right.set_title(f"each run (dots), mean +- std over {len(values)} seeds")
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
