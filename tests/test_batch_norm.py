"""BatchNorm: running statistics in explicit state (train vs inference) against a NumPy
textbook form; precision (float64 and low-precision inputs), param_dtype, initializers,
axis_name, and every error message. The float64 comparison with torch.nn.BatchNorm1d/2d
is in test_batch_norm_torch.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TRANSFORMS
from jax.test_util import check_grads

import jnn


@pytest.fixture
def float64():
    """JAX's 64-bit mode for one test; the previous setting comes back afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def x():
    return np.random.default_rng(2).normal(3.0, 2.0, (6, 5, 4)).astype(np.float32)


def numpy_batch_norm(x, scale, offset, eps):
    mean = x.mean(axis=(0, 1), dtype=np.float64)
    var = x.var(axis=(0, 1), dtype=np.float64)
    return (x - mean) / np.sqrt(var + eps) * scale + offset, mean, var


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_training_matches_textbook_and_updates_running_stats(key, x, transform):
    bn = jnn.BatchNorm(momentum=0.9, epsilon=1e-3)
    params, state = bn.init_with_state(key, x)
    params = {"scale": jnp.array([1.0, 2.0, 0.5, 1.5]), "offset": jnp.array([0.0, 1.0, -1.0, 2.0])}
    apply = transform(lambda p, v, s: bn.apply(p, v, state=s, is_training=True))
    y, new_state = apply(params, x, state)
    expected, mean, var = numpy_batch_norm(
        x, np.asarray(params["scale"]), np.asarray(params["offset"]), 1e-3
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new_state["variance"], 0.9 + 0.1 * var, rtol=1e-5)
    unbiased = jnn.BatchNorm(momentum=0.9, epsilon=1e-3, running_variance="unbiased")
    _, new_state = unbiased.apply(params, x, state=state, is_training=True)
    n = x.shape[0] * x.shape[1]
    np.testing.assert_allclose(new_state["variance"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_inference_uses_running_stats_and_keeps_them(key, x):
    bn = jnn.BatchNorm(use_scale=False, use_offset=False)
    params, _ = bn.init_with_state(key, x)
    assert params == {}
    state = {"mean": jnp.full(4, 3.0), "variance": jnp.full(4, 4.0)}
    y, same = bn.apply(params, x, state=state)
    np.testing.assert_allclose(y, (x - 3.0) / np.sqrt(4.0 + 1e-5), rtol=1e-5)
    chex.assert_trees_all_equal(same, state)


def test_gradients(key, x):
    bn = jnn.BatchNorm()
    params, state = bn.init_with_state(key, x)
    check_grads(
        lambda p, v: (bn.apply(p, v, state=state, is_training=True)[0] ** 3).sum(),
        (params, x[:2, :3]),
        order=1,
        modes=("rev",),
        atol=5e-2,
        rtol=5e-2,
        eps=1e-2,
    )


def test_optimizer_never_touches_state(key, x):
    model = jnn.Sequential([jnn.Dense(4), jnn.BatchNorm(), jnn.Dense(1)])
    params, state = model.init_with_state(key, x)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    assert "batch_norm_0" not in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, dict))
    step = jnn.make_train_step(model, lambda o, t: jnp.mean((o - t) ** 2), optimizer)
    params, opt_state, new_state, logs = step(
        params, opt_state, (x, jnp.zeros((6, 5, 1))), None, state
    )
    assert set(new_state) == {"batch_norm_0"}
    assert not np.allclose(new_state["batch_norm_0"]["mean"], 0.0)  # moved by the data


@pytest.mark.parametrize("running_variance", ["biased", "unbiased"])
def test_axis_name_averages_across_a_mapped_axis(key, x, running_variance):
    bn = jnn.BatchNorm(axis_name="devices", running_variance=running_variance)
    params, state = bn.init_with_state(key, x[0])
    mapped = jax.vmap(
        lambda v: bn.apply(params, v, state=state, is_training=True), axis_name="devices"
    )
    y, new_state = mapped(x)
    whole, whole_state = jnn.BatchNorm(running_variance=running_variance).apply(
        params, x.reshape(-1, 4), state=state, is_training=True
    )
    np.testing.assert_allclose(y.reshape(-1, 4), whole, rtol=1e-4, atol=1e-4)
    for name in ("mean", "variance"):  # the count n is the whole batch's, 30
        np.testing.assert_allclose(new_state[name][0], whole_state[name], rtol=1e-5)


def test_batch_norm_statistics_survive_a_large_mean(key):
    """The batch statistics come from one shifted pass: a large mean does not cancel."""
    rng = np.random.default_rng(0)
    x = (1e4 + 0.1 * rng.standard_normal((16, 5, 3))).astype(np.float32)
    bn = jnn.BatchNorm(momentum=0.0)
    params, state = bn.init_with_state(key, x)
    y, state = bn.apply(params, x, state=state, is_training=True)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 1)), x64.var(axis=(0, 1))
    np.testing.assert_allclose(state["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(state["variance"], var, rtol=1e-2)
    # x - mean itself is rounded at 1e-3 (float32 near 1e4), 1% of the spread.
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + bn.epsilon), atol=1e-2)


# --------------------------------------------------------------------------- precision, dtypes


def test_float64_input_gets_float64_statistics(float64, key):
    """A large mean and a small spread: float32 statistics would be off by about 1e-3."""
    rng = np.random.default_rng(0)
    x = 1e4 + 0.1 * rng.standard_normal((16, 5, 3))
    bn = jnn.BatchNorm(momentum=0.0)  # param_dtype float32: the state stays float32
    params, state = bn.init_with_state(key, x)
    y, new_state = bn.apply(params, x, state=state, is_training=True)
    assert y.dtype == jnp.float64
    assert new_state["mean"].dtype == new_state["variance"].dtype == jnp.float32
    mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + bn.epsilon), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(new_state["variance"], var, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_input_keeps_float32_statistics(key, dtype):
    """float16 squares of deviations near 300 would overflow (max 65504); float32 do not."""
    x = np.random.default_rng(4).normal(1000.0, 100.0, (8, 6, 3)).astype(np.float32)
    low = jnp.asarray(x, dtype)
    bn = jnn.BatchNorm(momentum=0.0)
    params, state = bn.init_with_state(key, low)
    y, new_state = bn.apply(params, low, state=state, is_training=True)
    assert y.dtype == dtype and new_state["mean"].dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    rounded = np.asarray(low.astype(jnp.float32), np.float64)
    mean, var = rounded.mean(axis=(0, 1)), rounded.var(axis=(0, 1))
    np.testing.assert_allclose(new_state["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(new_state["variance"], var, rtol=1e-4)
    expected = (rounded - mean) / np.sqrt(var + bn.epsilon)
    np.testing.assert_allclose(y.astype(np.float32), expected, atol=3e-2)


def test_param_dtype_sets_params_and_running_statistics(key, x):
    bn = jnn.BatchNorm(param_dtype=jnp.bfloat16)
    params, state = bn.init_with_state(key, x)
    for leaf in jax.tree.leaves((params, state)):
        assert leaf.dtype == jnp.bfloat16
    y, new_state = jax.jit(lambda p, v, s: bn.apply(p, v, state=s, is_training=True))(
        params, x, state
    )
    assert y.dtype == jnp.float32  # the input's
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(new_state))
    assert jnn.BatchNorm(param_dtype=np.dtype("float32")) == jnn.BatchNorm()


def test_initializers_get_no_fan_in(key, x):
    calls = []

    def half(key, shape, dtype, **kwargs):
        calls.append(kwargs)
        return jnp.full(shape, 0.5, dtype)

    bn = jnn.BatchNorm(scale_init=half, offset_init=jnn.initializers.constant(2.0))
    params, state = bn.init_with_state(key, x)
    assert calls == [{}]  # a per-feature scale has no fan-in
    np.testing.assert_array_equal(params["scale"], np.full(4, 0.5))
    np.testing.assert_array_equal(params["offset"], np.full(4, 2.0))
    y, _ = bn.apply(params, x, state=state)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5) * 0.5 + 2.0, rtol=1e-6)


# --------------------------------------------------------------------------- errors


def test_hyperparameter_errors():
    for bad in [-0.1, 1.5, float("nan")]:
        with pytest.raises(
            ValueError, match=r"^BatchNorm: momentum must be in \[0, 1\], got .*PyTorch's"
        ):
            jnn.BatchNorm(momentum=bad)
    for bad in [-1e-5, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match=r"^BatchNorm: epsilon must be a finite number >= 0"):
            jnn.BatchNorm(epsilon=bad)
    with pytest.raises(TypeError, match=r"^BatchNorm: epsilon must be a float, got '1e-5'"):
        jnn.BatchNorm(epsilon="1e-5")
    with pytest.raises(TypeError, match=r"^BatchNorm: axis must be an int, got 1\.0 \(float\)"):
        jnn.BatchNorm(axis=1.0)
    with pytest.raises(TypeError, match=r"^BatchNorm: axis must be an int, got \(1, 1\)"):
        jnn.BatchNorm(axis=(1, 1))
    with pytest.raises(
        TypeError, match=r"^BatchNorm: running_variance must be one of 'biased', 'unbiased', got"
    ):
        jnn.BatchNorm(running_variance="unbias")
    for bad, shown in [(jnp.int32, "int32"), ("foo", "'foo'"), (None, "None")]:
        with pytest.raises(
            TypeError, match=rf"^BatchNorm: param_dtype must be a floating-point dtype .*{shown}"
        ):
            jnn.BatchNorm(param_dtype=bad)
    with pytest.raises(TypeError, match=r"^BatchNorm: use_scale must be a bool"):
        jnn.BatchNorm(use_scale=1)
    assert jnn.BatchNorm(axis=np.int64(1), momentum=np.float32(0.5)) == jnn.BatchNorm(0.5, axis=1)


def test_input_errors(key, x):
    with pytest.raises(
        jnn.ShapeError,
        match=r"^BatchNorm: expected input of rank at least 2 \(\[batch, \.\.\., features\]\), "
        r"got shape \(3,\)\. Hint: the first axis is the batch axis; add it, e.g\. x\[None\]",
    ):
        jnn.BatchNorm().init_with_state(key, jnp.ones(3))
    for axis in (2, -3):
        with pytest.raises(
            jnn.ShapeError,
            match=rf"^BatchNorm: axis={axis} is out of range for an input of shape \(4, 3\) "
            r"\(rank 2\); the feature axis must be in \[-2, 1\]\.$",
        ):
            jnn.BatchNorm(axis=axis).init_with_state(key, jnp.zeros((4, 3)))
    with pytest.raises(
        jnn.ShapeError, match=r"^BatchNorm: axis=-2 is the batch axis of an input of shape \(4, 3\)"
    ):
        jnn.BatchNorm(axis=-2).init_with_state(key, jnp.zeros((4, 3)))
    for dtype in (jnp.int32, jnp.complex64):
        with pytest.raises(
            jnn.DTypeError,
            match=rf"^BatchNorm: expected a floating-point input, got dtype {dtype.__name__}",
        ):
            jnn.BatchNorm().init_with_state(key, jnp.zeros((4, 3), dtype))
    bn = jnn.BatchNorm()
    params, state = bn.init_with_state(key, x)
    with pytest.raises(jnn.DTypeError, match=r"^BatchNorm: expected a floating-point input"):
        bn.apply(params, x.astype(np.int32), state=state)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^BatchNorm: expected input with 4 features on axis -1 \(set at init\), got shape "
        r"\(6, 5, 3\)\.$",
    ):
        bn.apply(params, x[..., :3], state=state)
    with pytest.raises(jnn.ShapeError, match=r"^BatchNorm: axis=2 is out of range .*\(5, 4\)"):
        jnn.BatchNorm(axis=2).apply({}, x[0], state=state)
    for batch in (x[:1, 0], x[:0, 0]):
        with pytest.raises(
            jnn.ShapeError,
            match=rf"^BatchNorm: training needs at least 2 values per feature for batch "
            rf"statistics, got {len(batch)} from input of shape \({len(batch)}, 4\)\. Hint: ",
        ):
            bn.apply(params, batch, state=state, is_training=True)
    y, _ = bn.apply(params, x[:1, 0], state=state)  # inference takes a batch of one
    assert y.shape == (1, 4)


def test_state_errors(key, x):
    bn = jnn.BatchNorm()
    params, state = bn.init_with_state(key, x)
    with pytest.raises(
        jnn.ParamsError,
        match=r"^BatchNorm: needs its running statistics\. Hint: params, state = "
        r"model\.init_with_state\(key, x\), then y, _ = model\.apply\(params, x, state=state\); "
        r"inference normalises with them\.$",
    ):
        bn.apply(params, x)
    with pytest.raises(
        jnn.ParamsError,
        match=r"^BatchNorm: needs its running statistics\. Hint: .* then y, state = "
        r"model\.apply\(params, x, state=state, is_training=True\), which returns them updated",
    ):
        bn.apply(params, x, is_training=True)
    model = jnn.Sequential([jnn.Dense(4), bn])
    model_params, _ = model.init_with_state(key, x)
    with pytest.raises(jnn.ParamsError, match=r"^BatchNorm at 'batch_norm_0': needs its running"):
        model.apply(model_params, x, is_training=True)
    other = {"mean": jnp.zeros(3), "variance": jnp.ones(3)}
    with pytest.raises(
        jnn.ParamsError,
        match=r"^BatchNorm: state 'mean' has shape \(3,\), but inputs of shape \(6, 5, 4\) need "
        r"\(4,\)\.",
    ):
        bn.apply(params, x, state=other, is_training=True)
    with pytest.raises(jnn.ParamsError, match=r"missing state \['mean', 'variance'\]"):
        bn.apply(params, x, state={"running_mean": state["mean"]})
    integer = {"mean": jnp.zeros(4, jnp.int32), "variance": state["variance"]}
    with pytest.raises(
        jnn.DTypeError,
        match=r"^BatchNorm: expected floating-point running statistics, got state 'mean' of "
        r"dtype int32\.",
    ):
        bn.apply(params, x, state=integer, is_training=True)
    for flag in (jnp.array(True), np.bool_(True), 1):
        with pytest.raises(jnn.DTypeError, match=r"^BatchNorm: is_training must be a Python bool"):
            bn.apply(params, x, state=state, is_training=flag)
    with pytest.raises(
        ValueError, match=r"^BatchNorm: axis_name='devices' is not a mapped axis here\. Hint:"
    ):
        jnn.BatchNorm(axis_name="devices").apply(params, x, state=state, is_training=True)


def test_initializer_errors(key, x):
    with pytest.raises(
        TypeError,
        match=r"^BatchNorm: scale_init: .*takes 2 positional arguments but 3 were given\. Hint: "
        r"it is called as init\(key, shape, dtype\)\.$",
    ):
        jnn.BatchNorm(scale_init=lambda k, s: jnp.ones(s)).init_with_state(key, x)
    with pytest.raises(
        TypeError, match=r"^BatchNorm: offset_init: initializer .* returned shape \(2,\), expected"
    ):
        jnn.BatchNorm(offset_init=lambda k, s, d: jnp.zeros(2, d)).init_with_state(key, x)
    with pytest.raises(TypeError, match=r"^BatchNorm: scale_init got the initializer factory"):
        jnn.BatchNorm(scale_init=jnn.initializers.normal)
