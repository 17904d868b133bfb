"""examples/autoencoder.py: the smoke runs end to end (marked slow), and the VAE's pieces:
the closed-form KL against Monte Carlo and a NumPy formula, the keys of the
reparameterisation, the loss and the baseline."""

import math
import re

import numpy as np
import pytest
from example_scripts import EXAMPLES, load

FILES = ("autoencoder_latent.png", "autoencoder_reconstructions.png", "autoencoder_samples.png")


@pytest.fixture(scope="module")
def autoencoder():
    return load(EXAMPLES / "autoencoder.py")


@pytest.mark.slow
def test_autoencoder_smoke_trains_both_models(autoencoder, empty_cwd, output_dir, capsys):
    result = autoencoder.main(["--smoke", "--output-dir", str(output_dir)])
    assert list(result["mse"]) == ["PCA", "autoencoder", "VAE"]
    assert all(math.isfinite(value) and value > 0 for value in result["mse"].values())
    assert result["mse"]["PCA"] == pytest.approx(0.0530, abs=0.01)  # PCA on 256 images
    vae = result["runs"]["VAE"]
    assert math.isfinite(vae["elbo"]) and vae["kl"] >= 0
    assert vae["samples"].shape == (64, 64) and vae["grid"].shape == (144, 64)
    assert result["runs"]["autoencoder"]["code"].shape == (450, 2)
    assert sorted(vae["history"]) == [
        "eval_kl",
        "eval_loss",
        "eval_reconstruction",
        "kl",
        "loss",
        "reconstruction",
    ]
    captured = capsys.readouterr()
    assert re.search(r"epoch 2/2: .*\[\d\d:\d\d<.*loss=\d", captured.err)  # fit's progress bar
    assert "test MSE per pixel, latent size 2:" in captured.out
    assert "target: the autoencoder's MSE below PCA's, the VAE's negative ELBO below " in (
        captured.out
    )
    paths = sorted(output_dir / name for name in FILES)
    assert sorted(output_dir.iterdir()) == paths
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"saved {path.resolve()}\n" in captured.out


@pytest.mark.slow
def test_autoencoder_smoke_one_model_with_a_larger_code(autoencoder, empty_cwd, output_dir, capsys):
    result = autoencoder.main(
        [
            "--smoke",
            "--model",
            "ae",
            "--latent",
            "5",
            "--hidden",
            "16",
            "--output-dir",
            str(output_dir),
        ]
    )
    assert list(result["mse"]) == ["PCA", "autoencoder"]
    assert result["runs"]["autoencoder"]["code"].shape == (450, 5)  # drawn through PCA
    captured = capsys.readouterr()
    assert "target: the autoencoder's MSE below PCA's; " in captured.out
    assert sorted(p.name for p in output_dir.iterdir()) == sorted(FILES[:2])  # no VAE samples


def test_closed_form_kl_matches_numpy_and_monte_carlo(autoencoder):
    import jax
    import jax.numpy as jnp

    mean = np.array([[0.0, 0.0, 0.0], [0.5, -1.0, 2.0]], np.float32)
    log_variance = np.array([[0.0, 0.0, 0.0], [-1.0, 0.3, 0.8]], np.float32)
    kl = np.asarray(autoencoder.gaussian_kl(mean, log_variance))
    assert kl[0] == 0.0  # q equals the prior
    # NumPy: KL(N(m, S) || N(0, I)) = (tr S + m.m - k - log det S) / 2, S a covariance matrix.
    for row, (m, lv) in enumerate(zip(mean, log_variance, strict=True)):
        cov = np.diag(np.exp(lv.astype(np.float64)))
        expected = 0.5 * (np.trace(cov) + m @ m - len(m) - np.linalg.slogdet(cov)[1])
        assert kl[row] == pytest.approx(expected, rel=1e-5)
    # Monte Carlo: E_q[log q(z) - log p(z)] over z drawn from q.
    std = jnp.exp(0.5 * log_variance[1])
    z = mean[1] + std * jax.random.normal(jax.random.key(0), (200_000, 3))
    log_q = jax.scipy.stats.norm.logpdf(z, mean[1], std).sum(-1)
    log_p = jax.scipy.stats.norm.logpdf(z).sum(-1)
    assert float(jnp.mean(log_q - log_p)) == pytest.approx(kl[1], rel=0.02)


def test_vae_samples_with_the_key_it_is_given_and_decodes_the_mean_at_inference(autoencoder):
    import jax
    import jax.numpy as jnp

    import jnn

    ae, vae = autoencoder.build_models(3, [16])
    x = jax.random.uniform(jax.random.key(1), (5, 64))
    params = vae.init(jax.random.key(0), x)
    assert sorted(params) == ["decoder", "encoder"]
    assert params["encoder"]["dense_1"]["weight"].shape == (16, 6)  # mean and log-variance
    out = vae.apply(params, x)  # inference: no key needed, z is the mean
    assert out["logits"].shape == (5, 64) and out["mean"].shape == (5, 3)
    decoded = vae.decoder.apply(params["decoder"], out["mean"])
    np.testing.assert_allclose(out["logits"], decoded, rtol=1e-6)
    one, two = jax.random.key(2), jax.random.key(3)
    first = vae.apply(params, x, key=one, is_training=True)["logits"]
    assert not np.allclose(first, out["logits"])  # a sampled z
    np.testing.assert_array_equal(first, vae.apply(params, x, key=one, is_training=True)["logits"])
    assert not np.allclose(first, vae.apply(params, x, key=two, is_training=True)["logits"])
    with pytest.raises(jnn.MissingKeyError, match="noise"):
        vae.apply(params, x, is_training=True)
    # The autoencoder is deterministic and returns pixels in [0, 1].
    ae_params = ae.init(jax.random.key(0), x)
    y = ae.apply(ae_params, x, key=one, is_training=True)
    assert y.shape == (5, 64) and bool(jnp.all((y >= 0) & (y <= 1)))
    np.testing.assert_array_equal(y, ae.apply(ae_params, x))


def test_negative_elbo_is_reconstruction_plus_kl_and_trains(autoencoder):
    import jax
    import jax.numpy as jnp
    import optax

    import jnn

    _, vae = autoencoder.build_models(2, [16])
    x = jax.random.uniform(jax.random.key(1), (32, 64))
    outputs = {
        "logits": jnp.zeros((32, 64)),
        "mean": jnp.zeros((32, 2)),
        "log_variance": jnp.zeros((32, 2)),
    }
    # Logits 0 give every pixel probability 1/2: 64 log 2 nats, whatever the pixels.
    assert float(autoencoder.negative_elbo(outputs, x)) == pytest.approx(64 * math.log(2))
    optimizer = optax.adam(1e-2)
    state = jnn.init_train_state(vae, optimizer, jax.random.key(0), x)
    step = jnn.make_train_step(vae, autoencoder.negative_elbo, optimizer)
    losses = []
    for _ in range(20):
        state, logs = step(state, (x, x))  # each step draws z with jnn.step_key(key, step)
        losses.append(float(logs["loss"]))
    assert losses[-1] < losses[0]


def test_independent_pixels_baseline(autoencoder):
    x_train = np.full((4, 64), 0.5, np.float32)
    x_test = np.random.default_rng(0).uniform(size=(3, 64)).astype(np.float32)
    assert autoencoder.independent_pixels_nats(x_train, x_test) == pytest.approx(
        64 * math.log(2), rel=1e-6
    )
    blank = np.zeros((4, 64), np.float32)  # a pixel never on costs nothing on a blank image
    assert autoencoder.independent_pixels_nats(blank, blank) == pytest.approx(0.0, abs=0.01)


def test_tile_lays_images_out_in_rows(autoencoder):
    images = np.zeros((6, 64))
    images[4] = 1.0
    sheet = autoencoder.tile(images, 3)
    assert sheet.shape == (2 * 9 + 1, 3 * 9 + 1)
    assert sheet[10:18, 10:18].max() == 0.0  # image 4 (row 1, column 1) drawn dark
    assert sheet[1:9, 1:9].min() == 1.0  # image 0 is blank: white
