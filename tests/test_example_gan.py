"""examples/gan_digits.py: the jitted two-network step, the judge's numbers, and a smoke run."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from example_scripts import load

gan = load("gan_digits")


@pytest.fixture(scope="module")
def small_gan():
    """A small GAN, its two halves of a step, and a state with a batch of 'real' images."""
    generator, discriminator = gan.build_generator(16), gan.build_discriminator(16, 0.3)
    g_optimizer, d_optimizer = optax.adam(1e-2, b1=0.5), optax.adam(1e-2, b1=0.5)
    updates = gan.make_updates(generator, discriminator, g_optimizer, d_optimizer, 4)
    real = jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1, maxval=1)
    state = gan.init_gan(
        generator, discriminator, g_optimizer, d_optimizer, jax.random.key(0), 4, real[:1]
    )
    return generator, discriminator, updates, state, real


def copy(tree):
    return jax.tree.map(jnp.copy, tree)


def changed(before, after):
    """Whether every leaf of ``after`` differs from the same leaf of ``before``."""
    return all(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )


def assert_trees_close(a, b):
    """Leaf by leaf, PRNG keys compared by their data."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_the_jitted_step_updates_both_networks_and_counts_their_steps(small_gan):
    _, _, updates, state, real = small_gan
    step = gan.make_gan_step(*updates)
    new, logs = step(copy(state), real)
    assert changed(state.generator.params, new.generator.params)
    assert changed(state.discriminator.params, new.discriminator.params)
    assert int(new.generator.step) == int(new.discriminator.step) == 1
    assert sorted(logs) == ["d_fake", "d_loss", "d_real", "g_loss"]
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert 0 < float(logs["d_real"]) < 1 and 0 < float(logs["d_fake"]) < 1
    # The keys stay: each step's noise comes from jnn.step_key(key, step).
    assert jnp.array_equal(
        jax.random.key_data(new.generator.key), jax.random.key_data(state.generator.key)
    )


def test_the_step_is_the_discriminator_update_then_the_generator_update(small_gan):
    _, _, updates, state, real = small_gan
    new, _ = gan.make_gan_step(*updates)(copy(state), real)
    update_discriminator = jax.jit(updates[0])
    update_generator = jax.jit(updates[1], static_argnums=2)  # the batch size
    # The discriminator's half alone gives the step's discriminator: the generator's
    # update that follows leaves it as it was.
    d_state, _ = update_discriminator(state.discriminator, state.generator.params, real)
    assert_trees_close(d_state, new.discriminator)
    # The generator's half trains against the *updated* discriminator.
    g_state, _ = update_generator(state.generator, d_state.params, real.shape[0])
    assert_trees_close(g_state, new.generator)
    stale, _ = update_generator(state.generator, state.discriminator.params, real.shape[0])
    assert changed(stale.params, new.generator.params)


def test_the_generator_update_has_no_gradient_path_into_the_discriminator(small_gan):
    _, _, (_, update_generator), state, _ = small_gan
    d_params = state.discriminator.params
    # update_generator returns the generator's state only; the discriminator's params
    # are an input it cannot change, and its loss does depend on them.
    g_state, logs = update_generator(state.generator, d_params, 8)
    assert jax.tree.structure(g_state) == jax.tree.structure(state.generator)

    def loss_of_d(params):
        return update_generator(state.generator, params, 8)[1]["g_loss"]

    grads = jax.jit(jax.grad(loss_of_d))(d_params)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_the_step_donates_the_state_it_is_given(small_gan):
    _, _, updates, state, real = small_gan
    given = copy(state)
    gan.make_gan_step(*updates)(given, real)
    with pytest.raises(RuntimeError, match="deleted"):
        given.generator.params["dense_0"]["weight"] + 1
    kept = copy(state)
    gan.make_gan_step(*updates, donate=False)(kept, real)
    kept.generator.params["dense_0"]["weight"] + 1  # still usable


def test_the_generator_draws_images_in_the_pixel_range(small_gan):
    generator, discriminator, _, state, _ = small_gan
    noise = jax.random.normal(jax.random.key(2), (5, 4))
    images = generator.apply(state.generator.params, noise)
    assert images.shape == (5, 8, 8, 1) and images.dtype == jnp.float32
    assert float(jnp.abs(images).max()) <= 1.0
    assert discriminator.apply(state.discriminator.params, images).shape == (5, 1)


def test_class_spread_counts_shares_entropy_and_classes():
    even = gan.class_spread(np.arange(1000) % 10)
    assert even["entropy_bits"] == pytest.approx(np.log2(10))
    assert even["largest_class"] == pytest.approx(0.1) and even["classes_present"] == 10
    collapsed = gan.class_spread(np.array([3] * 9 + [7]))
    np.testing.assert_allclose(collapsed["shares"], np.eye(10)[3] * 0.9 + np.eye(10)[7] * 0.1)
    assert collapsed["classes_present"] == 2 and collapsed["largest_class"] == pytest.approx(0.9)
    assert collapsed["entropy_bits"] == pytest.approx(-(0.9 * np.log2(0.9) + 0.1 * np.log2(0.1)))


def test_snapshot_epochs_start_at_one_and_end_at_the_last():
    assert gan.snapshot_epochs(300) == [1, 2, 4, 7, 13, 24, 45, 84, 159, 300]
    assert gan.snapshot_epochs(2) == [1, 2]


def test_mosaic_tiles_images_with_gaps():
    images = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8, 1)
    grid = gan.mosaic(images)
    assert grid.shape == (2 * 9 - 1, 3 * 9 - 1)
    np.testing.assert_array_equal(grid[9:17, 18:26], images[1, 2, ..., 0])
    assert np.isnan(grid[8]).all() and np.isnan(grid[:, 8]).all()


@pytest.mark.slow
def test_gan_digits_smoke(empty_cwd, output_dir, capsys):
    result = gan.main(["--smoke", "--samples", "200", "--output-dir", str(output_dir)])
    scores = result["scores"]
    assert list(scores) == ["GAN", "real held-out", "independent pixels", "uniform noise"]
    for score in scores.values():
        assert 0.1 <= score["confidence"] <= 1.0
        assert score["shares"].sum() == pytest.approx(1.0)
    assert len(result["history"]["d_loss"]) == 2
    captured = capsys.readouterr()
    assert re.search(r"epoch +2/2: D loss \d+\.\d+, G loss \d+\.\d+, .* \d+\.\d s\n", captured.out)
    assert "target: confidence >= 0.85, all 10 classes, none above 20%" in captured.out
    files = sorted(output_dir.iterdir())
    assert [f.name for f in files] == ["gan_digits_quality.png", "gan_digits_samples.png"]
    for path in files:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"saved {path.resolve()}\n" in captured.out
