"""Which pixels drove each prediction of the digits CNN, and a small MLP drawn as in a textbook.

Data: ``sklearn.datasets.load_digits`` (1,797 grey 8x8 images, shipped with
scikit-learn, no download), the 75/25 split of ``cnn_digits.py``, whose ``load_data`` and
``build_model`` this script imports (three 3x3 convolutions with batch norm, two max
pools, dropout, a dense head).

1. Train that CNN with ``jnn.fit`` (fewer epochs than ``cnn_digits.py``), then explain
   the logit of the predicted class of every test image three ways: ``jnn.saliency``
   (the gradient), ``jnn.integrated_gradients`` (from a black image, 32 trapezoid steps)
   and ``jnn.smooth_grad`` (32 noisy copies, noise of standard deviation 0.15).
   ``explain_digits.png`` shows one test image per digit with its three maps, red for
   pixels that raise the class's logit, blue for those that lower it.
2. Check the maps with a deletion test: erase (set to 0) the k inked pixels that a map
   ranks highest, and measure how much the probability of the predicted class falls;
   compare with erasing k inked pixels at random (the mean of 10 draws). A map that
   finds the pixels the network uses beats chance.
3. Train a 64-16-10 MLP on the same images and draw it with ``jnn.draw_network``
   (``explain_digits_network.png``): lines are weights (width: magnitude, red: positive,
   blue: negative), neuron fills are biases; of the 64 input pixels, the top and bottom
   rows are shown.

Both PNGs go to ``--output-dir``. The run exits with status 1 if the CNN's test accuracy
is below 98% or a map fails to beat chance at any k.

Run:  python examples/explain_digits.py   (99.3-100% test accuracy, seeds 0-2; erasing the
                                           4 pixels a map ranks highest costs the predicted
                                           class 4.6-6x the probability that 4 random inked
                                           pixels do; about a minute on a 2-core CPU)
      python examples/explain_digits.py --output-dir /tmp/explain
      python examples/explain_digits.py --smoke  (a few steps, for CI)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

TARGET = 0.98
OUTPUT_DIR = Path(__file__).resolve().parent / "outputs"
ERASED = (4, 8, 16)  # the k of the deletion test
CHUNK = 50  # test images per call of an attribution method


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="passes of the CNN's training")
    parser.add_argument("--width", type=int, default=32, help="channels of the first convolutions")
    parser.add_argument("--steps", type=int, default=32, help="integrated gradients' path steps")
    parser.add_argument("--samples", type=int, default=32, help="SmoothGrad's noisy copies")
    parser.add_argument("--stddev", type=float, default=0.15, help="SmoothGrad's noise (pixels)")
    parser.add_argument("--mlp-epochs", type=int, default=60, help="passes of the MLP's training")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inits, training, noise")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=OUTPUT_DIR,
        help="folder for explain_digits.png and explain_digits_network.png, created if "
        "missing; --smoke without it writes to smoke/ inside the default",
    )
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 256 images (CI)")
    return parser


def load_cnn_digits():
    """``examples/cnn_digits.py`` as a module (examples/ is not a package)."""
    path = Path(__file__).resolve().parent / "cnn_digits.py"
    spec = importlib.util.spec_from_file_location("cnn_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(model, x, y, x_test, y_test, *, epochs, learning_rate, seed):
    """``jnn.fit`` with AdamW on a cosine schedule; returns (train state, test accuracy)."""
    import jax
    import optax

    import jnn

    steps = epochs * (len(x) // 64)
    optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, max(steps, 1)), 1e-4)
    state = jnn.init_train_state(model, optimizer, jax.random.key(seed), x[:1])
    result = jnn.fit(
        model,
        state,
        jnn.softmax_cross_entropy_with_integer_labels,
        optimizer,
        (x, y),
        epochs=epochs,
        batch_size=64,
        eval_data=(x_test, y_test),
        metrics={"accuracy": jnn.accuracy},
    )
    return result.train_state, result.history["eval_accuracy"][-1]


def deletion_test(probability, images, classes, maps, erased, seed, draws=10):
    """Mean fall of the predicted class's probability when the ``k`` inked pixels a map
    ranks highest are erased (set to 0), for each map and ``k``; ``"random"`` erases
    ``k`` inked pixels at random (the mean of ``draws`` draws).

    ``probability(images) -> [n, classes]``; ``images [n, 8, 8, 1]``; ``classes [n]``;
    ``maps``: name -> attributions shaped like ``images``.
    """
    n = len(images)
    flat = images.reshape(n, -1)
    ink = flat > 0
    rows = np.arange(n)[:, None]
    before = probability(images)[np.arange(n), classes]

    def fall(scores, k):
        top = np.argsort(-np.where(ink, scores, -np.inf), axis=1)[:, :k]
        erased_images = flat.copy()
        erased_images[rows, top] = 0.0  # a non-inked pixel among the top k stays 0
        after = probability(erased_images.reshape(images.shape))[np.arange(n), classes]
        return float(np.mean(before - after))

    rng = np.random.default_rng(seed)
    falls = {name: {k: fall(m.reshape(n, -1), k) for k in erased} for name, m in maps.items()}
    falls["random"] = {
        k: float(np.mean([fall(rng.random(flat.shape), k) for _ in range(draws)])) for k in erased
    }
    return falls


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)  # --help exits here, before JAX loads
    import jax

    import jnn

    start = time.perf_counter()
    output_dir = args.output_dir
    if args.smoke and output_dir == OUTPUT_DIR:
        output_dir = OUTPUT_DIR / "smoke"  # leave the full run's pictures in place
    cnn_digits = load_cnn_digits()
    x_train, x_test, y_train, y_test = cnn_digits.load_data()
    if args.smoke:
        args.epochs = args.mlp_epochs = 2
        args.steps, args.samples = 4, 2
        x_train, y_train = x_train[:256], y_train[:256]
        x_test, y_test = x_test[:CHUNK], y_test[:CHUNK]
    print(f"{len(x_train)} training and {len(x_test)} test images")

    # 1. The CNN of cnn_digits.py, trained as there.
    print(f"training the CNN for {args.epochs} epochs (the first step compiles)")
    model = cnn_digits.build_model(args.width, 0.3)
    state, accuracy = train(
        model, x_train, y_train, x_test, y_test, epochs=args.epochs, learning_rate=2e-3,
        seed=args.seed,
    )  # fmt: skip
    print(f"CNN test accuracy: {accuracy:.4f} (target >= {TARGET})")

    # 2. Attributions of the predicted class's logit. The batch-norm statistics travel as
    #    model_state (the model runs in inference mode). Each method is jitted once and
    #    run on chunks of CHUNK images, with all of a chunk's path steps or noisy copies
    #    in one vmap (batch_size=None): no loop inside the compiled program, where XLA's
    #    CPU runs convolution gradients slowly.
    params, model_state = state.params, state.model_state
    logits = jax.jit(lambda x: model.apply(params, x, state=model_state)[0])
    predicted = np.asarray(logits(x_test).argmax(-1))
    methods = {
        "saliency": lambda p, s, x, t, key: jnn.saliency(model, p, x, t, model_state=s),
        "integrated gradients": lambda p, s, x, t, key: jnn.integrated_gradients(
            model, p, x, t, steps=args.steps, model_state=s
        ),
        "SmoothGrad": lambda p, s, x, t, key: jnn.smooth_grad(
            model, p, x, t, key=key, stddev=args.stddev, samples=args.samples, model_state=s
        ),
    }
    timer = time.perf_counter()
    key = jax.random.key(args.seed + 1)
    maps = {}
    for name, method in methods.items():
        method = jax.jit(method)
        chunks = [
            method(params, model_state, x_test[i : i + CHUNK], predicted[i : i + CHUNK],
                   jax.random.fold_in(key, i))
            for i in range(0, len(x_test), CHUNK)
        ]  # fmt: skip
        maps[name] = np.concatenate([np.asarray(c) for c in chunks])
    print(f"attributions of {len(x_test)} test images in {time.perf_counter() - timer:.1f} s")
    rows = np.arange(len(x_test))
    change = np.asarray(logits(x_test))[rows, predicted]
    change = change - np.asarray(logits(np.zeros_like(x_test)))[rows, predicted]
    gap = np.abs(maps["integrated gradients"].reshape(len(x_test), -1).sum(1) - change)
    print(
        f"integrated gradients' completeness: the attributions add up to f(x) - f(black "
        f"image) (mean {np.mean(np.abs(change)):.1f} logits) within {gap.max():.2f} "
        f"(mean {gap.mean():.3f})"
    )

    # 3. The deletion test.
    probability = jax.jit(lambda x: jax.nn.softmax(logits(x)))
    falls = deletion_test(
        lambda x: np.asarray(probability(x)), x_test, predicted, maps, ERASED, args.seed
    )
    print("deletion test: mean fall of the predicted class's probability, erasing k inked pixels")
    print(f"{'':22}" + "".join(f"{f'k={k}':>8}" for k in ERASED))
    for name, row in falls.items():
        print(f"{name:22}" + "".join(f"{row[k]:8.3f}" for k in ERASED))
    beaten = all(falls[name][k] > falls["random"][k] for name in maps for k in ERASED)
    print(f"every map beats random erasing at every k: {'yes' if beaten else 'NO'}")

    output_dir.mkdir(parents=True, exist_ok=True)
    picture = output_dir / "explain_digits.png"
    shown = [int(np.flatnonzero(y_test == digit)[0]) for digit in np.unique(y_test)][:10]
    probabilities = np.asarray(probability(x_test[shown]))
    chosen = {name: m[shown] for name, m in maps.items()}
    save_maps(x_test[shown], predicted[shown], probabilities, chosen, picture)
    print(f"saved {picture.resolve()}")

    # 4. A small MLP on the flattened images, drawn neuron by neuron.
    print(f"training a 64-16-10 MLP for {args.mlp_epochs} epochs")
    mlp = jnn.MLP([16, 10])
    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    mlp_state, mlp_accuracy = train(
        mlp, flat_train, y_train, flat_test, y_test, epochs=args.mlp_epochs,
        learning_rate=1e-2, seed=args.seed,
    )  # fmt: skip
    print(f"MLP test accuracy: {mlp_accuracy:.4f}")
    network = output_dir / "explain_digits_network.png"
    figure = jnn.draw_network(
        mlp,
        mlp_state.params,
        max_neurons=16,  # the 8 pixels of the top row and the 8 of the bottom row
        input_labels=[f"pixel ({r}, {c})" for r in range(8) for c in range(8)],
        output_labels=[f"digit {d}" for d in range(10)],
        title=f"a 64-16-10 MLP on the digits, test accuracy {mlp_accuracy:.1%}",
    )
    figure.savefig(network, dpi=90)
    print(f"saved {network.resolve()}")
    seconds = time.perf_counter() - start
    print(f"done in {seconds:.1f} s")
    if not args.smoke and (accuracy < TARGET or not beaten):
        sys.exit(1)
    return {
        "test_accuracy": accuracy,
        "completeness_gap": float(gap.max()),
        "deletion": falls,
        "beats_random": beaten,
        "predicted": predicted,
        "maps": maps,
        "mlp_test_accuracy": mlp_accuracy,
        "mlp_params": mlp_state.params,
        "seconds": seconds,
        "picture": picture,
        "network": network,
    }


def save_maps(images, predicted, probabilities, maps, path: Path) -> None:
    """A column per image: the image, then each map (red raises the class, blue lowers)."""
    from matplotlib.figure import Figure

    rows = 1 + len(maps)
    figure = Figure(figsize=(1.3 * len(images) + 0.8, 1.45 * rows), layout="constrained")
    axes = figure.subplots(rows, len(images), squeeze=False)
    for j, image in enumerate(images):
        c = predicted[j]
        axes[0, j].imshow(image[..., 0], cmap="gray_r", vmin=0, vmax=1)
        axes[0, j].set_title(f"{c} ({probabilities[j, c]:.0%})", fontsize=9)
        for i, attributions in enumerate(maps.values(), start=1):
            values = attributions[j, ..., 0]
            scale = float(np.abs(values).max()) or 1.0
            axes[i, j].imshow(values, cmap="RdBu_r", vmin=-scale, vmax=scale)
    for i, name in enumerate(["image", *maps]):
        axes[i, 0].set_ylabel(name.replace(" ", "\n"), fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("predicted digit (probability) and the pixels behind it", fontsize=10)
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
