"""Attribution: saliency, integrated gradients and SmoothGrad against closed forms (a
linear model), the completeness of integrated gradients, keys, jit, vmap and messages."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS

import jnn
from jnn._integrated_gradients import METHODS

FUNCTIONS = [jnn.saliency, jnn.integrated_gradients, jnn.smooth_grad]


def explain(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, with a key for smooth_grad."""
    if fn is jnn.smooth_grad:
        kwargs.setdefault("key", jax.random.key(0))
    return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def linear():
    """A 3-class linear model on 4 features with known weights, and 5 inputs."""
    rng = np.random.default_rng(0)
    params = {
        "weight": rng.standard_normal((4, 3)).astype(np.float32),
        "bias": rng.standard_normal(3).astype(np.float32),
    }
    x = rng.standard_normal((5, 4)).astype(np.float32)
    return jnn.Dense(3), params, x


@pytest.fixture(scope="module")
def mlp():
    """A smooth (tanh) MLP with 3 outputs on 5 features, and 4 inputs."""
    model = jnn.MLP([16, 16, 3], activation=jnn.tanh)
    params = model.init(jax.random.key(0), jnp.zeros((1, 5)))
    x = jax.random.normal(jax.random.key(1), (4, 5))
    return model, params, x


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_saliency_of_a_linear_model_is_its_weight_column(linear, transform):
    model, params, x = linear
    run = transform(functools.partial(jnn.saliency, model))
    expected = np.broadcast_to(params["weight"][:, 2], x.shape)
    chex.assert_trees_all_close(run(params, x, 2), expected)
    targets = np.array([0, 1, 2, 1, 0])  # one class per example
    chex.assert_trees_all_close(run(params, x, targets), params["weight"][:, targets].T)
    inputs = transform(functools.partial(jnn.saliency, model, multiply_by_inputs=True))
    chex.assert_trees_all_close(inputs(params, x, 2), x * expected, rtol=1e-6)


def test_a_scalar_output_needs_no_target():
    params = {"weight": jnp.array([[2.0], [-1.0]]), "bias": jnp.array([0.5])}
    x = jnp.ones((3, 2))
    for apply_fn in (jnn.Dense(1).apply, lambda p, x: jnn.Dense(1).apply(p, x)[:, 0]):
        grads = jnn.saliency(apply_fn, params, x)  # a plain function works too
        np.testing.assert_allclose(grads, [[2.0, -1.0]] * 3)


@pytest.mark.parametrize("method", METHODS)
def test_integrated_gradients_of_a_linear_model_are_the_path_times_the_weight(linear, method):
    model, params, x = linear
    w = params["weight"][:, 1]
    attributions = jnn.integrated_gradients(model, params, x, 1, steps=3, method=method)
    np.testing.assert_allclose(attributions, x * w, rtol=1e-5, atol=1e-6)
    baseline = np.array([0.5, -1.0, 0.0, 2.0], np.float32)  # one for every example
    attributions = jnn.integrated_gradients(
        model, params, x, 1, baseline=baseline, steps=3, method=method
    )
    np.testing.assert_allclose(attributions, (x - baseline) * w, rtol=1e-5, atol=1e-6)


def test_smooth_grad_of_a_linear_model_is_its_weight_column(linear):
    model, params, x = linear
    grads = jnn.smooth_grad(model, params, x, 0, key=jax.random.key(3), stddev=1.0, samples=4)
    np.testing.assert_allclose(grads, np.broadcast_to(params["weight"][:, 0], x.shape), rtol=1e-5)


# --------------------------------------------------------------------------- completeness


def test_integrated_gradients_add_up_to_the_change_of_the_output(mlp):
    model, params, x = mlp
    baseline = jnp.full(x.shape[1:], 0.3)

    def error(steps, method):
        attributions = jnn.integrated_gradients(
            model, params, x, 2, baseline=baseline, steps=steps, method=method
        )
        change = model.apply(params, x)[:, 2] - model.apply(params, baseline[None])[:, 2]
        assert attributions.shape == x.shape
        return float(jnp.abs(attributions.sum(axis=1) - change).max())

    trapezoid = [error(steps, "riemann_trapezoid") for steps in (4, 16, 64)]
    assert trapezoid[0] > 4 * trapezoid[1] > 16 * trapezoid[2]  # second order: 1 / steps**2
    assert trapezoid[2] < 1e-4
    left = [error(steps, "riemann_left") for steps in (4, 16, 64)]
    assert left[0] > 2 * left[1] > 4 * left[2]  # first order: 1 / steps
    assert error(16, "gausslegendre") < 1e-5


def test_integrated_gradients_do_not_depend_on_batch_size(mlp):
    model, params, x = mlp
    targets = jnp.array([0, 1, 2, 0])
    together = jnn.integrated_gradients(model, params, x, targets, steps=7)
    for batch_size in (1, 3, 7, 100):  # 3 leaves a padded last chunk
        chunked = jnn.integrated_gradients(
            model, params, x, targets, steps=7, batch_size=batch_size
        )
        np.testing.assert_allclose(chunked, together, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(  # chunks in a lax.scan rather than a Python loop
        lambda p, x: jnn.integrated_gradients(model, p, x, targets, steps=7, batch_size=3)
    )
    np.testing.assert_allclose(jitted(params, x), together, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- SmoothGrad


def test_smooth_grad_is_reproducible_by_key(mlp):
    model, params, x = mlp
    run = functools.partial(jnn.smooth_grad, model, params, x, 1, samples=6)
    first = run(key=jax.random.key(7))
    np.testing.assert_array_equal(run(key=jax.random.key(7)), first)
    assert not np.allclose(run(key=jax.random.key(8)), first)
    np.testing.assert_allclose(run(key=jax.random.key(7), batch_size=4), first, rtol=1e-5)
    jitted = jax.jit(lambda k: run(key=k, batch_size=4))  # a lax.scan over the chunks
    np.testing.assert_allclose(jitted(jax.random.key(7)), first, rtol=1e-5, atol=1e-6)
    legacy = run(key=jax.random.PRNGKey(7))  # a uint32[2] key is wrapped, not refused
    np.testing.assert_array_equal(legacy, first)


@pytest.mark.parametrize("multiply_by_inputs", [False, True])
def test_smooth_grad_without_noise_is_saliency(mlp, multiply_by_inputs):
    model, params, x = mlp
    options = {"multiply_by_inputs": multiply_by_inputs}
    smooth = jnn.smooth_grad(
        model, params, x, 2, key=jax.random.key(0), stddev=0.0, samples=3, **options
    )
    np.testing.assert_allclose(smooth, jnn.saliency(model, params, x, 2, **options), rtol=1e-5)


def test_smooth_grad_averages_the_gradients_of_noisy_inputs(mlp):
    model, params, x = mlp
    key = jax.random.key(5)
    smooth = jnn.smooth_grad(model, params, x, 0, key=key, stddev=0.2, samples=3)
    noisy = [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for k in jax.random.split(key, 3)]
    by_hand = sum(jnn.saliency(model, params, n, 0) for n in noisy) / 3
    np.testing.assert_allclose(smooth, by_hand, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- jit, vmap, state


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_jit_gives_the_eager_result(mlp, fn):
    model, params, x = mlp
    options = {} if fn is jnn.saliency else {"steps": 5} if fn is jnn.integrated_gradients else {}
    eager = explain(fn, model, params, x, jnp.array([0, 1, 2, 0]), **options)
    jitted = jax.jit(functools.partial(explain, fn, model, **options))
    np.testing.assert_allclose(
        jitted(params, x, jnp.array([0, 1, 2, 0])), eager, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_vmap_over_single_examples_gives_the_batched_result(mlp, fn):
    model, params, x = mlp
    targets = jnp.array([2, 0, 1, 1])
    if fn is jnn.smooth_grad:  # with a stddev of 0, every example's noise is nothing
        batched = fn(model, params, x, targets, key=jax.random.key(0), stddev=0.0)
        one = functools.partial(fn, key=jax.random.key(0), stddev=0.0)
    else:
        batched = fn(model, params, x, targets)
        one = fn
    mapped = jax.vmap(lambda xi, ti: one(model, params, xi[None], ti)[0])(x, targets)
    np.testing.assert_allclose(mapped, batched, rtol=1e-5, atol=1e-6)


def test_vmap_over_keys_and_params(mlp):
    model, params, x = mlp
    keys = jax.random.split(jax.random.key(0), 3)
    run = functools.partial(jnn.smooth_grad, model, params, x, 0, samples=2)
    maps = jax.vmap(lambda k: run(key=k))(keys)
    assert maps.shape == (3, *x.shape)
    np.testing.assert_allclose(maps[1], run(key=keys[1]), rtol=1e-5, atol=1e-6)
    population = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
    grads = jax.vmap(lambda p: jnn.saliency(model, p, x, 1))(population)
    np.testing.assert_allclose(
        grads[1], jnn.saliency(model, population_member(population, 1), x, 1)
    )


def population_member(population, i):
    return jax.tree.map(lambda p: p[i], population)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_a_model_with_batch_norm_takes_its_state(fn):
    model = jnn.Sequential([jnn.Dense(6), jnn.BatchNorm(), jnn.relu, jnn.Dense(3)])
    x = jax.random.normal(jax.random.key(0), (4, 5))
    params, state = model.init_with_state(jax.random.key(1), x)
    state = jax.tree.map(lambda s: s + 0.5, state)  # running statistics that matter
    got = explain(fn, model, params, x, 1, model_state=state)
    closed = lambda p, xs: model.apply(p, xs, state=state)[0]  # noqa: E731
    np.testing.assert_allclose(got, explain(fn, closed, params, x, 1), rtol=1e-6)


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_messages_name_the_function_and_what_was_expected(linear, fn):
    model, params, x = linear
    name = fn.__name__
    with pytest.raises(
        jnn.ShapeError,
        match=rf"^{name}: target=None explains a scalar output.*returns \(5, 3\). Hint: .*argmax",
    ):
        explain(fn, model, params, x)
    with pytest.raises(ValueError, match=rf"^{name}: expected target in \[0, 3\) .*got 3\.$"):
        explain(fn, model, params, x, 3)
    with pytest.raises(ValueError, match=rf"{name}: expected every target in \[0, 3\)"):
        explain(fn, model, params, x, np.array([0, 1, 2, 3, 0]))
    with pytest.raises(
        jnn.ShapeError,
        match=rf"^{name}: expected target as an int or an array of shape \(5,\) .*got shape \(5, 1\)\.$",
    ):
        explain(fn, model, params, x, np.zeros((5, 1), np.int32))
    with pytest.raises(
        jnn.DTypeError,
        match=rf"^{name}: expected target as integer class indices, got dtype float32",
    ):
        explain(fn, model, params, x, np.zeros(5, np.float32))
    with pytest.raises(
        jnn.DTypeError, match=rf"^{name}: expected a floating-point input x .*got dtype int32"
    ):
        explain(fn, model, params, x.astype(np.int32), 0)
    with pytest.raises(
        jnn.ShapeError,
        match=rf"^{name}: expected inputs x of shape \[batch, \.\.\.\], got a scalar",
    ):
        explain(fn, lambda p, x: x, params, 1.0)
    with pytest.raises(
        jnn.ShapeError,
        match=rf"^{name}: expected the model's output of shape \[batch\] or \[batch, classes\] with batch 1 \(the first axis of x \(1, 4\)\), got \(1, 2, 3\)",
    ):
        explain(fn, lambda p, x: jnp.zeros((1, 2, 3)), params, x[:1], 0)
    with pytest.raises(
        TypeError,
        match=rf"^{name}: expected a jnn.Module or a function .*got the class Dense\. Hint: instantiate",
    ):
        explain(fn, jnn.Dense, params, x, 0)
    with pytest.raises(
        TypeError,
        match=rf"^{name}: expected a jnn.Module or a function .*got dict\. Hint: the arguments are \(model, params, x, target\)",
    ):
        explain(fn, params, model, x, 0)
    with pytest.raises(TypeError, match=rf"^{name}: model_state is passed to a jnn.Module's apply"):
        explain(fn, model.apply, params, x, 0, model_state={})
    with pytest.raises(
        TypeError, match=rf"^{name}: expected the model to return one array, got tuple"
    ):
        explain(fn, lambda p, x: (x, x), params, x)
    state = jnn.TrainState.create(params, jnn_optimizer(), key=jax.random.key(0))
    with pytest.raises(
        TypeError, match=rf"^{name}: expected params, got a jnn.TrainState. Hint: pass state.params"
    ):
        explain(fn, model, state, x, 0)
    with pytest.raises(
        jnn.ShapeError, match=rf"^{name}: expected the model's output .* got \(3,\)"
    ):
        explain(fn, model.apply, params, x[0], 0)  # no batch axis: the output is [classes]


def jnn_optimizer():
    import optax

    return optax.sgd(0.1)


def test_messages_of_the_options(linear):
    model, params, x = linear
    ig = functools.partial(jnn.integrated_gradients, model, params, x, 0)
    with pytest.raises(
        ValueError,
        match=r"^integrated_gradients: expected method in \('riemann_trapezoid', .*got 'simpson'\.$",
    ):
        ig(method="simpson")
    with pytest.raises(
        ValueError, match=r"^integrated_gradients: steps must be a positive int, got 0"
    ):
        ig(steps=0, method="riemann_left")
    with pytest.raises(
        ValueError,
        match=r"^integrated_gradients: the trapezoid rule needs steps >= 2 \(both ends of the path\), got 1\. Hint: method='riemann_middle'",
    ):
        ig(steps=1)
    with pytest.raises(
        TypeError,
        match=r"^integrated_gradients: steps must be an int, got 2.5 \(float\)\. Hint: under jax.jit mark it static\.$",
    ):
        ig(steps=2.5)
    with pytest.raises(TypeError, match=r"^integrated_gradients: batch_size must be an int"):
        ig(batch_size="all")
    with pytest.raises(
        jnn.ShapeError,
        match=r"^integrated_gradients: expected a baseline that broadcasts to x's shape \(5, 4\), got shape \(3,\)\.$",
    ):
        ig(baseline=jnp.zeros(3))
    sg = functools.partial(jnn.smooth_grad, model, params, x, 0)
    with pytest.raises(
        TypeError,
        match=r"^smooth_grad: expected key to be a PRNG key such as jax.random.key\(0\), got int",
    ):
        sg(key=0)
    with pytest.raises(
        jnn.ShapeError, match=r"^smooth_grad: expected one PRNG key, got keys of shape \(2,\)"
    ):
        sg(key=jax.random.split(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"^smooth_grad: expected stddev >= 0, got -0.1\.$"):
        sg(key=jax.random.key(0), stddev=-0.1)
    with pytest.raises(ValueError, match=r"^smooth_grad: samples must be a positive int, got 0"):
        sg(key=jax.random.key(0), samples=0)
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: 'key'"):
        sg()
