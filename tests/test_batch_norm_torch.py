"""BatchNorm against torch.nn.BatchNorm1d/2d in float64, weights and running statistics
copied: outputs, updated running statistics and gradients agree to 1e-9, channels first
(``axis=1``) and channels last, training and inference, and over several steps. Run with
``pytest -s`` to print the largest error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn

torch = pytest.importorskip("torch")

# The largest |jnn - torch| of each test, printed at the end with `pytest -s`.
MAX_ABS_ERRORS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def float64():
    """JAX's 64-bit mode for this module; the previous setting comes back afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
    if MAX_ABS_ERRORS:
        worst = max(MAX_ABS_ERRORS, key=MAX_ABS_ERRORS.get)
        print(f"\nBatchNorm vs torch: {len(MAX_ABS_ERRORS)} tests, largest error ", end="")
        print(f"{MAX_ABS_ERRORS[worst]:.1e} in {worst}")


# name: (torch class, input shape [batch, channels, *spatial], affine)
TORCH_CASES = {
    "1d-features": ("BatchNorm1d", (6, 3), True),
    "1d-sequence": ("BatchNorm1d", (3, 4, 5), True),
    "2d": ("BatchNorm2d", (2, 3, 4, 3), True),
    "2d-no-affine": ("BatchNorm2d", (2, 3, 4, 3), False),
}


def torch_batch_norm(case):
    """A float64 torch BatchNorm with random weights and running statistics, and an input."""
    name, shape, affine = TORCH_CASES[case]
    torch.manual_seed(0)
    module = getattr(torch.nn, name)(shape[1], eps=1e-3, momentum=0.1, affine=affine).double()
    with torch.no_grad():
        if affine:
            module.weight.normal_(1.0, 0.5)
            module.bias.normal_(0.0, 0.5)
        module.running_mean.normal_(0.0, 1.0)
        module.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(1).normal(3.0, 2.0, shape)
    return module, x


def torch_state(module):
    return {
        "mean": module.running_mean.detach().numpy().copy(),
        "variance": module.running_var.detach().numpy().copy(),
    }


def record(name, expected, actual):
    errors = [
        np.max(np.abs(np.asarray(a) - e), initial=0.0)
        for a, e in zip(actual, expected, strict=True)
    ]
    MAX_ABS_ERRORS[name] = float(max(errors))
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("axis", [1, -1], ids=["channels-first", "channels-last"])
@pytest.mark.parametrize("is_training", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_torch_in_float64(case, is_training, axis):
    """Outputs, the updated running statistics and the gradients with respect to the input,
    ``scale`` and ``offset`` of ``sum(y * r)``, all to 1e-9."""
    module, x = torch_batch_norm(case)
    _, _, affine = TORCH_CASES[case]
    state = torch_state(module)
    r = np.random.default_rng(3).standard_normal(x.shape)

    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = module.train(is_training)(x_torch)
    (y_torch * torch.from_numpy(r)).sum().backward()
    expected = [y_torch.detach().numpy(), x_torch.grad.numpy(), *torch_state(module).values()]
    if affine:
        expected += [module.weight.grad.numpy(), module.bias.grad.numpy()]

    bn = jnn.BatchNorm(
        momentum=0.9,
        epsilon=1e-3,
        use_scale=affine,
        use_offset=affine,
        axis=axis,
        running_variance="unbiased",
        param_dtype=jnp.float64,
    )
    to_jnn = (lambda v: v) if axis == 1 else (lambda v: jnp.moveaxis(v, 1, -1))
    from_jnn = (lambda v: v) if axis == 1 else (lambda v: jnp.moveaxis(v, -1, 1))
    params, init_state = bn.init_with_state(jax.random.key(0), to_jnn(x))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves((params, init_state)))
    if affine:
        params = {"scale": module.weight.detach().numpy(), "offset": module.bias.detach().numpy()}

    def loss(params, x):
        y, new_state = bn.apply(params, to_jnn(x), state=state, is_training=is_training)
        y = from_jnn(y)
        return jnp.sum(y * r), (y, new_state)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    (param_grads, x_grad), (y, new_state) = grad(params, jnp.asarray(x))
    assert y.dtype == new_state["mean"].dtype == jnp.float64
    actual = [y, x_grad, new_state["mean"], new_state["variance"]]
    if affine:
        actual += [param_grads["scale"], param_grads["offset"]]
    record(f"{case}-{'train' if is_training else 'inference'}-axis{axis}", expected, actual)


def test_running_statistics_match_torch_over_steps():
    """Three training steps, each starting from the statistics the last one returned."""
    module, x = torch_batch_norm("2d")
    bn = jnn.BatchNorm(0.9, 1e-3, axis=1, running_variance="unbiased", param_dtype=jnp.float64)
    params = {"scale": module.weight.detach().numpy(), "offset": module.bias.detach().numpy()}
    state = torch_state(module)

    @jax.jit
    def steps(state):
        for step in range(3):
            _, state = bn.apply(params, x * (step + 1) + step, state=state, is_training=True)
        return state

    state = steps(state)
    with torch.no_grad():
        for step in range(3):
            module.train()(torch.from_numpy(x * (step + 1) + step))
    want = torch_state(module)
    record("2d-three-steps", [want["mean"], want["variance"]], [state["mean"], state["variance"]])


def test_biased_running_variance_is_flax_rule_not_torch():
    """The default moves towards the biased batch variance (n), torch's towards the
    unbiased one (n - 1); only the running variance differs."""
    module, x = torch_batch_norm("1d-sequence")
    state = torch_state(module)
    params = {"scale": module.weight.detach().numpy(), "offset": module.bias.detach().numpy()}
    bn = jnn.BatchNorm(0.9, 1e-3, axis=1, param_dtype=jnp.float64)
    y, biased = bn.apply(params, x, state=state, is_training=True)
    with torch.no_grad():
        y_torch = module.train()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, y_torch, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(biased["mean"], module.running_mean.numpy(), rtol=1e-9)
    variance = x.var(axis=(0, 2))  # n = 3 * 5
    np.testing.assert_allclose(biased["variance"], 0.9 * state["variance"] + 0.1 * variance)
    assert not np.allclose(biased["variance"], module.running_var.numpy(), rtol=1e-6)
