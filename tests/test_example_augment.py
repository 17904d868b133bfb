"""examples/augment_digits.py: the augmentations, pixel by pixel, under jit and vmap, and a
smoke run."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from example_scripts import load

import jnn

augment = load("augment_digits")
IMAGES = jnp.arange(1, 2 * 8 * 8 * 3 + 1, dtype=jnp.float32).reshape(2, 8, 8, 3) / 400


def shifted(image, dy, dx):
    """NumPy reference: ``out[y, x] = image[y - dy, x - dx]`` inside the image, else 0."""
    image = np.asarray(image)
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    for y in range(height):
        for x in range(width):
            if 0 <= y - dy < height and 0 <= x - dx < width:
                out[y, x] = image[y - dy, x - dx]
    return out


def test_a_shift_by_one_pixel_moves_every_pixel_exactly_one_place():
    out = augment.shift_images(IMAGES, jnp.array([[1, 0], [0, -1]]))
    np.testing.assert_array_equal(out[0, 1:], IMAGES[0, :-1])  # one row down
    np.testing.assert_array_equal(out[0, 0], 0)  # zeros move in at the top
    np.testing.assert_array_equal(out[1, :, :-1], IMAGES[1, :, 1:])  # one column left
    np.testing.assert_array_equal(out[1, :, -1], 0)


@pytest.mark.parametrize("dy", [-3, -1, 0, 1, 2])
@pytest.mark.parametrize("dx", [-2, 0, 1, 8])
def test_shift_images_matches_the_numpy_reference(dy, dx):
    out = augment.shift_images(IMAGES, jnp.array([[dy, dx], [dx, dy]]))
    np.testing.assert_array_equal(out[0], shifted(IMAGES[0], dy, dx))
    np.testing.assert_array_equal(out[1], shifted(IMAGES[1], dx, dy))


def test_a_zero_rotation_is_the_identity_exactly():
    np.testing.assert_array_equal(augment.rotate_images(IMAGES, jnp.zeros(2)), IMAGES)
    rotated = augment.random_rotation(jax.random.key(0), IMAGES, max_degrees=0.0)
    np.testing.assert_array_equal(rotated, IMAGES)


def test_a_quarter_turn_is_counter_clockwise_as_displayed():
    out = augment.rotate_images(IMAGES, jnp.array([90.0, -90.0]))
    np.testing.assert_allclose(out[0], np.rot90(IMAGES[0]), atol=1e-5)
    np.testing.assert_allclose(out[1], np.rot90(IMAGES[1], k=-1), atol=1e-5)


def test_a_small_rotation_moves_a_corner_and_keeps_the_centre():
    image = jnp.zeros((1, 9, 9, 1)).at[0, 4, 4, 0].set(1.0).at[0, 0, 8, 0].set(1.0)
    out = augment.rotate_images(image, jnp.array([10.0]))[0, ..., 0]
    assert float(out[4, 4]) == pytest.approx(1.0, abs=1e-6)  # the centre stays
    assert float(out[0, 8]) < 0.6  # the corner's ink spreads to its neighbours
    assert 0 <= float(out.min()) and float(out.max()) <= 1.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "fn",
    [augment.random_shift, augment.random_rotation, augment.augment],
    ids=["shift", "rotation", "both"],
)
def test_shapes_and_dtypes_are_preserved(fn, dtype):
    images = IMAGES[..., :1].astype(dtype)  # [2, 8, 8, 1], the digits' layout
    out = fn(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == dtype


def test_random_shift_moves_each_image_its_own_way_by_at_most_max_shift():
    images = jax.random.uniform(jax.random.key(1), (64, 8, 8, 1)) + 0.1  # no zero pixels
    out = np.asarray(augment.random_shift(jax.random.key(2), images, max_shift=1))
    found = set()
    for image, result in zip(np.asarray(images), out, strict=True):
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if np.array_equal(result, shifted(image, dy, dx))
        ]
        assert len(matches) == 1
        found.add(matches[0])
    assert len(found) == 9  # every one of the 9 positions occurs in 64 draws


def test_random_rotation_angles_stay_within_the_limit():
    image = jnp.zeros((1, 8, 8, 1)).at[0, 1:7, 3:5].set(1.0)  # a vertical bar
    images = jnp.repeat(image, 32, axis=0)
    out = augment.random_rotation(jax.random.key(3), images, max_degrees=10.0)
    assert len({np.asarray(o).tobytes() for o in out}) == 32  # each image its own angle
    extremes = augment.rotate_images(image.repeat(2, 0), jnp.array([-10.0, 10.0]))
    distance = np.abs(np.asarray(out) - np.asarray(image)).sum(axis=(1, 2, 3))
    limit = np.abs(np.asarray(extremes) - np.asarray(image)).sum(axis=(1, 2, 3)).max()
    assert distance.max() <= limit + 1e-4


@pytest.mark.parametrize(
    "fn",
    [augment.random_shift, augment.random_rotation, augment.augment],
    ids=["shift", "rotation", "both"],
)
def test_the_augmentations_work_under_jit_and_vmap(fn):
    key = jax.random.key(4)
    images = jax.random.uniform(jax.random.key(5), (3, 6, 8, 8, 1))  # 3 batches of 6
    eager = fn(key, images[0])
    np.testing.assert_allclose(jax.jit(fn)(key, images[0]), eager, atol=1e-6)
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(fn))(keys, images)
    for i in range(3):
        np.testing.assert_allclose(batched[i], fn(keys[i], images[i]), atol=1e-6)
    assert not np.array_equal(batched[0], batched[1])  # different keys, different draws


def test_the_augmentations_refuse_images_without_a_batch_or_channel_axis():
    with pytest.raises(ValueError, match=r"random_shift: expected images of shape .* \(8, 8\)"):
        augment.random_shift(jax.random.key(0), jnp.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"rotate_images: .*x\[\.\.\., None\]"):
        augment.rotate_images(jnp.zeros((4, 8, 8)), jnp.zeros(4))


def test_the_augmentation_layer_acts_only_while_training():
    layer = augment.augmentation_layer(max_shift=1, max_degrees=10.0)
    images = IMAGES[..., :1]
    assert layer.init(jax.random.key(0), images) == {}
    np.testing.assert_array_equal(layer.apply({}, images), images)
    key = jax.random.key(6)
    out = layer.apply({}, images, key=key, is_training=True)
    np.testing.assert_array_equal(out, augment.augment(key, images, 1, 10.0))
    with pytest.raises(jnn.MissingKeyError, match="needs a PRNG key"):
        layer.apply({}, images, is_training=True)
    off = augment.augmentation_layer(max_shift=0, max_degrees=0.0)
    np.testing.assert_array_equal(off.apply({}, images, key=key, is_training=True), images)


def test_the_train_step_feeds_the_cnn_images_augmented_with_the_steps_key():
    import optax

    cnn = augment.build_model(4)
    model = jnn.Sequential({"augment": augment.augmentation_layer(1, 10.0), "cnn": cnn})
    optimizer = optax.sgd(0.1)
    loss_fn = jnn.softmax_cross_entropy_with_integer_labels
    x, y = IMAGES[..., :1], jnp.array([3, 7])
    state = jnn.init_train_state(model, optimizer, jax.random.key(0), x)
    assert sorted(state.params) == ["cnn"]  # the augmentation has no parameters
    step = jnn.make_train_step(model, loss_fn, optimizer, donate=False)
    _, logs = step(state, (x, y))
    # Step 0's key, passed down to the child named "augment" as every child's key is.
    key = jnn.extend.child_key(jnn.step_key(state.key, 0), "augment")
    expected = loss_fn(cnn.apply(state.params["cnn"], augment.augment(key, x, 1, 10.0)), y)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    plain = loss_fn(cnn.apply(state.params["cnn"], x), y)
    assert abs(float(plain) - float(expected)) > 1e-4  # the augmentation did change the inputs
    scores = jnn.evaluate(model, state.params, (x, y), loss_fn=loss_fn)
    assert scores["loss"] == pytest.approx(float(plain), rel=1e-5)  # evaluation: no augmentation


def test_setting_limits():
    assert augment.setting_limits("none", 2, 15.0) == (0, 0.0)
    assert augment.setting_limits("shifts", 2, 15.0) == (2, 0.0)
    assert augment.setting_limits("rotations", 2, 15.0) == (0, 15.0)
    assert augment.setting_limits("shifts and rotations", 2, 15.0) == (2, 15.0)


@pytest.mark.slow
def test_augment_digits_smoke(empty_cwd, output_dir, capsys):
    result = augment.main(["--smoke", "--width", "4", "--output-dir", str(output_dir)])
    assert list(result["accuracy"]) == ["none", "shifts and rotations"]
    for summary in result["accuracy"].values():
        assert len(summary["values"]) == 1 and 0.0 <= summary["mean"] <= 1.0
    captured = capsys.readouterr()
    assert re.search(
        r"shifts and rotations +seed 0: test accuracy \d\.\d+ .*, \d+\.\d s\n", captured.out
    )
    assert "shifts and rotations add" in captured.out
    path = output_dir / "augment_digits.png"
    assert sorted(output_dir.iterdir()) == [path]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved {path.resolve()}\n" in captured.out
