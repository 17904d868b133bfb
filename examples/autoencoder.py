"""A dense autoencoder and a variational autoencoder (VAE) on scikit-learn's digits, against PCA.

Data: ``sklearn.datasets.load_digits`` (1,797 grey 8x8 images, shipped with
scikit-learn, no download), pixels scaled to [0, 1] and flattened to 64 values, split
75/25 with ``train_test_split(..., test_size=0.25, stratify=y, random_state=0)`` as in
``mlp_digits.py``. The labels are used only to colour the latent map.

Models (``--model ae|vae|both``), each squeezing an image through ``--latent`` numbers
(2 by default, so the codes can be drawn as they are):

* the autoencoder: an encoder MLP (64 -> 256 -> 128 -> latent) and a decoder MLP (latent
  -> 128 -> 256 -> 64, sigmoid) in one ``jnn.Module`` composite, trained by ``jnn.fit``
  on ``jnn.mean_squared_error`` with the images as their own targets;
* the VAE: the encoder gives the mean and log-variance of a diagonal Gaussian posterior
  ``q(z|x)``, and while training the model draws ``z = mean + exp(log_variance / 2) *
  noise`` (the reparameterisation trick). It is a ``jnn.Module`` composite whose
  ``forward`` takes its noise key from ``scope.key("noise")``: ``jnn.fit`` gives the
  model the key ``jnn.step_key(state.key, step)`` at every step, so no step is written by
  hand. In inference mode it decodes the mean. The loss is the negative evidence lower
  bound per image: the Bernoulli cross-entropy of the 64 pixels plus the closed-form
  KL divergence from ``q(z|x)`` to the prior ``N(0, I)``.

Baselines: for reconstruction, PCA with as many components as the latent size, fitted on
the training images; the score is the test reconstruction error, mean squared error per
pixel. For the VAE's likelihood, pixels that ignore one another: each a Bernoulli with
its training mean. Into ``--output-dir`` go ``autoencoder_latent.png`` (the test images'
codes, coloured by digit), ``autoencoder_reconstructions.png`` (test images against
their reconstructions) and, with the VAE, ``autoencoder_samples.png`` (images decoded
from prior samples, and from a grid over the latent plane).

With the defaults (seed 0; seeds 1 and 2 in brackets), test MSE per pixel: autoencoder
0.0296 (0.0304, 0.0338), VAE 0.0330 (0.0340, 0.0335), PCA with 2 components 0.0530. The
VAE's test negative ELBO is 24.2 nats per image (24.3, 24.3), of which 2.9 KL, against
27.2 for independent pixels. About 25 s of CPU time on a 2-core machine (a minute of
wall time while other jobs shared it). The script exits with status 1 if the
autoencoder's MSE is not below PCA's or the VAE's negative ELBO not below independent
pixels'. With ``--latent 8`` the autoencoder gets 0.0119 against PCA's 0.0246, while the
VAE ties PCA at 0.0245 (ELBO 24.0): it spends 3.5 nats of KL on 4 of its 8 dimensions
and leaves the other 4 at the prior (under 0.01 nats each), the posterior collapse usual
for a VAE whose decoder can explain the pixels well enough without them.

Run:  python examples/autoencoder.py              (both models, writes examples/outputs/)
      python examples/autoencoder.py --model vae --latent 8
      python examples/autoencoder.py --smoke      (2 epochs on 256 images, for CI)
"""

# No `from __future__ import annotations`: with string annotations, dataclasses (the
# models below) look their module up in sys.modules, where the tests, importing this
# file from its path, do not register it. Annotations naming JAX are quoted instead.

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
PIXELS = 64  # 8x8 images, flattened


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model", choices=("ae", "vae", "both"), default="both", help="which models to train"
    )
    parser.add_argument("--latent", type=int, default=2, help="size of the code (latent space)")
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[256, 128],
        help="widths of the encoder's hidden layers (the decoder's, reversed)",
    )
    parser.add_argument("--epochs", type=int, default=100, help="passes over the training set")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="images per training step")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every key: inits, shuffles, noise"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=OUTPUT_DIR,
        help="folder for autoencoder_latent.png, autoencoder_reconstructions.png and (with "
        "the VAE) autoencoder_samples.png, created if missing; --smoke without it writes to "
        "smoke/ inside the default",
    )
    parser.add_argument("--smoke", action="store_true", help="2 epochs on 256 images (CI)")
    return parser


def load_data():
    """Return ``x_train [1347, 64], x_test [450, 64]`` (float32 in [0, 1]) and the labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixels are integers 0..16
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def gaussian_kl(mean: "jax.Array", log_variance: "jax.Array") -> "jax.Array":
    r"""``KL(N(mean, diag(exp(log_variance))) || N(0, I))`` per example, in nats.

    .. math:: \tfrac12 \sum_j \big(\sigma_j^2 + \mu_j^2 - 1 - \log \sigma_j^2\big)

    Shapes: ``[batch, latent]`` for both, to ``[batch]``.
    """
    import jax.numpy as jnp

    return 0.5 * jnp.sum(jnp.exp(log_variance) + mean**2 - 1.0 - log_variance, axis=-1)


def build_models(latent: int, hidden: list[int]) -> tuple["jnn.Module", "jnn.Module"]:
    """The autoencoder and the VAE, ``jnn.Module`` composites over ``[batch, 64]`` pixels.

    The autoencoder returns reconstructions ``[batch, 64]`` in [0, 1]; the VAE a dict of
    ``logits [batch, 64]`` (of the decoder's Bernoulli pixels), ``mean`` and
    ``log_variance`` ``[batch, latent]``. Each has its parts as ``.encoder`` and
    ``.decoder``, whose params are ``params["encoder"]`` and ``params["decoder"]``. The
    classes are made inside this function so that ``--help`` loads no JAX.
    """
    import jax
    import jax.numpy as jnp

    import jnn

    class Autoencoder(jnn.Module):
        """Encoder MLP to ``latent`` numbers, decoder MLP back to pixels in [0, 1]."""

        latent: int
        hidden: tuple[int, ...]

        @property
        def encoder(self) -> jnn.Module:  # [batch, 64] -> [batch, latent]
            return jnn.MLP([*self.hidden, self.latent])

        @property
        def decoder(self) -> jnn.Module:  # [batch, latent] -> [batch, 64]
            return jnn.MLP([*self.hidden[::-1], PIXELS], final_activation=jnn.sigmoid)

        def forward(self, scope: jnn.Scope, x: jax.Array) -> jax.Array:
            return scope("decoder", self.decoder, scope("encoder", self.encoder, x))

    class VAE(jnn.Module):
        """Encoder to a diagonal Gaussian ``q(z|x)``, a sample ``z`` while training (its
        mean at inference), decoder to pixel logits."""

        latent: int
        hidden: tuple[int, ...]

        @property
        def encoder(self) -> jnn.Module:  # [batch, 64] -> [batch, 2 * latent]
            return jnn.MLP([*self.hidden, 2 * self.latent])

        @property
        def decoder(self) -> jnn.Module:  # [batch, latent] -> [batch, 64] logits
            return jnn.MLP([*self.hidden[::-1], PIXELS])

        def forward(self, scope: jnn.Scope, x: jax.Array) -> dict:
            mean, log_variance = jnp.split(scope("encoder", self.encoder, x), 2, axis=-1)
            z = mean
            if scope.is_training:  # the reparameterisation trick, with the step's own key
                noise = jax.random.normal(scope.key("noise"), mean.shape, mean.dtype)
                z = mean + jnp.exp(0.5 * log_variance) * noise
            logits = scope("decoder", self.decoder, z)
            return {"logits": logits, "mean": mean, "log_variance": log_variance}

    hidden = tuple(hidden)
    return Autoencoder(latent, hidden), VAE(latent, hidden)


# The VAE's loss and its two parts, as fit's loss_fn(outputs, targets) and metrics; the
# targets are the images themselves.
def reconstruction_nats(outputs: dict, images: "jax.Array") -> "jax.Array":
    """Bernoulli negative log-likelihood of the pixels, summed per image, batch mean."""
    import jnn

    per_pixel = jnn.sigmoid_binary_cross_entropy(outputs["logits"], images, reduction="none")
    return per_pixel.sum(axis=-1).mean()


def kl_nats(outputs: dict, images: "jax.Array") -> "jax.Array":
    del images
    return gaussian_kl(outputs["mean"], outputs["log_variance"]).mean()


def negative_elbo(outputs: dict, images: "jax.Array") -> "jax.Array":
    """The VAE's loss: reconstruction plus KL, in nats per image."""
    return reconstruction_nats(outputs, images) + kl_nats(outputs, images)


def independent_pixels_nats(x_train: np.ndarray, x_test: np.ndarray) -> float:
    """The VAE's baseline: each test pixel a Bernoulli with its training mean, no latent.

    Returns the cross-entropy in nats per image, the same quantity as the VAE's
    reconstruction term.
    """
    p = np.clip(x_train.mean(axis=0), 1e-4, 1 - 1e-4)  # pixels always 0 cost ~0, not NaN
    nats = -(x_test * np.log(p) + (1 - x_test) * np.log1p(-p))
    return float(nats.sum(axis=-1).mean())


def train(model, loss_fn, metrics, x_train, x_test, args, key):
    """``jnn.fit`` with Adam and a cosine-decayed learning rate; the images are the targets."""
    import optax

    import jnn

    steps = args.epochs * (len(x_train) // args.batch_size)
    optimizer = optax.adam(optax.cosine_decay_schedule(args.learning_rate, steps))
    state = jnn.init_train_state(model, optimizer, key, x_train[:1])
    return jnn.fit(
        model,
        state,
        loss_fn,
        optimizer,
        (x_train, x_train),  # an autoencoder's targets are its inputs
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_data=(x_test, x_test),
        metrics=metrics,
    )


def run_autoencoder(model, x_train, x_test, args, key) -> dict:
    """Train the autoencoder; its test codes ``[450, latent]`` and reconstructions."""
    import jnn

    print(f"autoencoder: training {args.epochs} epochs (the first step compiles)")
    fitted = train(model, jnn.mean_squared_error, None, x_train, x_test, args, key)
    params = fitted.params
    return {
        "code": np.asarray(model.encoder.apply(params["encoder"], x_test)),
        "reconstruction": np.asarray(model.apply(params, x_test)),
        "history": fitted.history,
    }


def run_vae(model, x_train, x_test, args, key, elbo_key, prior_key) -> dict:
    """Train the VAE; its test codes (posterior means), reconstructions (decoded means),
    test ELBO and KL, and images decoded from the prior."""
    import jax

    print(f"VAE: training {args.epochs} epochs (the first step compiles)")
    metrics = {"reconstruction": reconstruction_nats, "kl": kl_nats}
    fitted = train(model, negative_elbo, metrics, x_train, x_test, args, key)
    params = fitted.params
    outputs = model.apply(params, x_test)  # inference mode: z is the posterior mean
    # The ELBO averages over z ~ q(z|x): is_training=True draws z, from the key given.
    draws = [
        model.apply(params, x_test, key=k, is_training=True) for k in jax.random.split(elbo_key, 10)
    ]
    elbo = float(np.mean([negative_elbo(draw, x_test) for draw in draws]))
    decode = jax.jit(lambda z: jax.nn.sigmoid(model.decoder.apply(params["decoder"], z)))
    grid = None
    if args.latent == 2:  # a 12x12 grid over the latent plane, at the prior's quantiles
        quantiles = jax.scipy.stats.norm.ppf(np.linspace(0.05, 0.95, 12))
        grid = np.asarray(decode(np.stack(np.meshgrid(quantiles, -quantiles), -1).reshape(-1, 2)))
    return {
        "code": np.asarray(outputs["mean"]),
        "reconstruction": np.asarray(jax.nn.sigmoid(outputs["logits"])),
        "elbo": elbo,
        "kl": float(kl_nats(outputs, x_test)),
        "samples": np.asarray(decode(jax.random.normal(prior_key, (64, args.latent)))),
        "grid": grid,
        "history": fitted.history,
    }


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)  # --help exits here, before JAX loads
    import jax
    from sklearn.decomposition import PCA

    output_dir = args.output_dir
    if args.smoke and output_dir == OUTPUT_DIR:
        output_dir = OUTPUT_DIR / "smoke"  # leave the full run's pictures in place
    x_train, x_test, y_train, y_test = load_data()
    if args.smoke:
        args.epochs = 2
        x_train, y_train = x_train[:256], y_train[:256]
    print(f"{len(x_train)} training and {len(x_test)} test images, latent size {args.latent}")
    start = time.perf_counter()

    # The baseline: the best linear code of the same size.
    pca = PCA(args.latent).fit(x_train)
    runs = {"PCA": {"code": pca.transform(x_test)}}
    runs["PCA"]["reconstruction"] = pca.inverse_transform(runs["PCA"]["code"])

    # One key per purpose, split from the seed in the open: each model's init and training
    # (fit draws the shuffles and the VAE's noise from it), the VAE's test ELBO, the prior.
    ae_key, vae_key, elbo_key, prior_key = jax.random.split(jax.random.key(args.seed), 4)
    autoencoder, vae = build_models(args.latent, args.hidden)
    if args.model in ("ae", "both"):
        runs["autoencoder"] = run_autoencoder(autoencoder, x_train, x_test, args, ae_key)
    if args.model in ("vae", "both"):
        runs["VAE"] = run_vae(vae, x_train, x_test, args, vae_key, elbo_key, prior_key)
    mse = {
        name: float(np.mean((run["reconstruction"] - x_test) ** 2)) for name, run in runs.items()
    }
    seconds = time.perf_counter() - start

    print(f"test MSE per pixel, latent size {args.latent}:")
    for name, value in mse.items():
        print(f"  {name:<12} {value:.4f}")
    # Each model is held to what it optimises: the autoencoder's squared error against
    # PCA's, the VAE's ELBO against pixels that ignore one another.
    targets, missed = [], False
    if "autoencoder" in runs:
        targets.append("the autoencoder's MSE below PCA's")
        missed = mse["autoencoder"] >= mse["PCA"]
    if "VAE" in runs:
        baseline = independent_pixels_nats(x_train, x_test)
        print(
            f"VAE: test negative ELBO {runs['VAE']['elbo']:.2f} nats per image (10 draws of z), "
            f"of which KL {runs['VAE']['kl']:.2f}; independent pixels {baseline:.2f}"
        )
        targets.append("the VAE's negative ELBO below independent pixels'")
        missed = missed or runs["VAE"]["elbo"] >= baseline
    print(f"target: {', '.join(targets)}; {seconds:.1f} s")

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "autoencoder_latent.png", output_dir / "autoencoder_reconstructions.png"]
    save_latent_map({name: run["code"] for name, run in runs.items()}, y_test, mse, paths[0])
    reconstructions = {name: run["reconstruction"] for name, run in runs.items()}
    save_reconstructions(x_test, y_test, reconstructions, mse, paths[1])
    if "VAE" in runs:
        paths.append(output_dir / "autoencoder_samples.png")
        save_samples(runs["VAE"]["samples"], runs["VAE"]["grid"], paths[2])
    for path in paths:
        print(f"saved {path.resolve()}")
    if not args.smoke and missed:
        sys.exit(1)
    return {"mse": mse, "runs": runs, "seconds": seconds, "outputs": paths}


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """Images ``[n, 64]`` as one picture of ``n / columns`` rows of 8x8 tiles, 1 pixel apart."""
    rows = len(images) // columns
    sheet = np.ones((rows * 9 + 1, columns * 9 + 1))
    for i, image in enumerate(images[: rows * columns]):
        r, c = divmod(i, columns)
        sheet[1 + 9 * r : 9 * (r + 1), 1 + 9 * c : 9 * (c + 1)] = 1.0 - image.reshape(8, 8)
    return sheet


def save_latent_map(codes: dict, labels: np.ndarray, mse: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    fig, axes = plt.subplots(
        1, len(codes), figsize=(3.6 * len(codes) + 0.8, 3.9), squeeze=False, layout="constrained"
    )
    for axis, (name, code) in zip(axes[0], codes.items(), strict=True):
        projected = ""
        if code.shape[1] > 2:  # draw a larger code through its first two principal axes
            code, projected = PCA(2).fit_transform(code), ", PCA projection"
        points = axis.scatter(
            code[:, 0], code[:, 1], c=labels, cmap="tab10", s=8, vmin=-0.5, vmax=9.5
        )
        axis.set(title=f"{name} (test MSE {mse[name]:.4f}){projected}", xticks=[], yticks=[])
    fig.colorbar(points, ax=axes[0].tolist(), ticks=range(10), label="digit", aspect=30)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_reconstructions(x_test, labels, reconstructions: dict, mse: dict, path: Path) -> None:
    """The first test image of each digit (top row) and each model's reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]
    rows = {"original": x_test[picks]}
    for name, images in reconstructions.items():
        rows[f"{name} (test MSE per pixel {mse[name]:.4f})"] = images[picks]
    fig, axes = plt.subplots(len(rows), 1, figsize=(6.5, 0.8 * len(rows) + 0.3))
    for axis, (name, images) in zip(axes, rows.items(), strict=True):
        axis.imshow(tile(np.clip(images, 0, 1), 10), cmap="gray", vmin=0, vmax=1)
        axis.set_axis_off()
        axis.set_title(name, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_samples(samples: np.ndarray, grid: np.ndarray | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("decoded from z ~ N(0, I)", samples, 8)]
    if grid is not None:
        panels.append(("decoded over the latent plane", grid, 12))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.8), squeeze=False)
    for axis, (title, images, columns) in zip(axes[0], panels, strict=True):
        axis.imshow(tile(images, columns), cmap="gray", vmin=0, vmax=1)
        axis.set_axis_off()
        axis.set_title(f"VAE: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
