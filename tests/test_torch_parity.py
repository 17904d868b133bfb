"""Parity with ``torch.nn`` in float64: outputs and gradients of jnn layers and losses.

Each case builds a PyTorch module, copies its parameters into a jnn params dict through a
small conversion written in ``jax.numpy``, and runs both on the same float64 input, given
in PyTorch's layout (channels first; jnn is channels last, so each jnn side transposes
explicitly). It compares the outputs and the gradients of ``sum(y * r)``, for a fixed
random ``r``, with respect to the inputs and to every parameter. The jnn gradients are
taken through the conversion, which maps them back to PyTorch's names and layouts.
Everything must agree to 1e-9.

A real mismatch is marked ``xfail(strict=True)`` with its cause, so the mark fails (and
must be removed) once jnn is fixed.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    torch_conv_transpose_weight_to_jnn,
    torch_conv_weight_to_jnn,
    torch_rnn_params_to_jnn,
)

import jnn

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOLERANCE = 1e-9


def xfail(reason):
    """A known mismatch: the test must fail, and fails once jnn is fixed (strict)."""
    return pytest.mark.xfail(strict=True, reason=reason)


# The largest |jnn - torch| of each test, outputs and gradients together, for reports:
# run the module with `pytest -s` to print them at its end.
MAX_ABS_ERRORS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _float64():
    """JAX's 64-bit mode for this module only; the previous setting comes back afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
    if MAX_ABS_ERRORS:
        worst = max(MAX_ABS_ERRORS, key=MAX_ABS_ERRORS.get)
        print(f"\ntorch parity: {len(MAX_ABS_ERRORS)} tests, largest error ", end="")
        print(f"{MAX_ABS_ERRORS[worst]:.1e} in {worst}")


@pytest.fixture(autouse=True)
def _seed():
    """The same PyTorch parameters in every run, whatever ran before."""
    torch.manual_seed(0)


# --------------------------------------------------------------------------- the comparison


def _leaves(tree):
    """The tensors of a PyTorch output, nested in tuples, in order."""
    if isinstance(tree, tuple | list):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


# Each function here runs once, so compiling it fast matters more than running it fast:
# without LLVM's optimisation and with XLA's older CPU emitters, the gradient of a 2-D
# convolution compiled in 0.1 s instead of 1.7 s, that of a bidirectional GRU in 0.4 s
# instead of 2.1 s. The results are the same to rounding.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def compile_fast(lowered):
    """``lowered.compile`` with ``COMPILER_OPTIONS``, or without where XLA lacks them."""
    try:
        return lowered.compile(COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError as error:
        if "No such compile option" not in str(error):
            raise
        return lowered.compile()


def torch_and_jnn(torch_fn, jnn_fn, inputs, module=None, differentiate=None):
    """Run both sides: ``(expected, actual)``, dicts of outputs and gradients by name.

    Args:
      torch_fn: Runs PyTorch on tensors made from ``inputs``; returns a tensor or a
        tuple (nested) of tensors.
      jnn_fn: Takes ``module``'s parameters under PyTorch's names (JAX arrays) and the
        inputs; returns the same structure of arrays.
      inputs: NumPy arrays, float64 or integer, in PyTorch's layout.
      module: The PyTorch module whose parameters ``jnn_fn`` converts, if any.
      differentiate: Indices of the inputs to differentiate; all floating ones by default.

    The gradients are those of ``sum(y * r)`` over the outputs ``y``, for fixed random
    ``r``, named ``"grad NAME"`` for PyTorch's parameter names and ``"grad input I"``.
    """
    if differentiate is None:
        differentiate = [i for i, x in enumerate(inputs) if x.dtype.kind == "f"]
    named = dict(module.named_parameters()) if module is not None else {}

    # PyTorch: outputs, and gradients from autograd.
    tensors = [torch.tensor(x, requires_grad=i in differentiate) for i, x in enumerate(inputs)]
    outputs = _leaves(torch_fn(*tensors))
    rng = np.random.default_rng(1)
    cotangents = [rng.standard_normal(tuple(y.shape)) for y in outputs]
    total = sum((y * torch.from_numpy(r)).sum() for y, r in zip(outputs, cotangents, strict=True))
    wrt = [*named.values(), *(tensors[i] for i in differentiate)]
    grads = torch.autograd.grad(total, wrt, allow_unused=True)
    expected = {f"output {k}": y.detach().numpy() for k, y in enumerate(outputs)}
    names = [*named, *(f"input {i}" for i in differentiate)]
    for name, g, w in zip(names, grads, wrt, strict=True):
        expected[f"grad {name}"] = np.zeros(tuple(w.shape)) if g is None else g.numpy()

    # jnn: the same scalar, differentiated through the conversion of the parameters.
    def scalar(params, varying, fixed):
        xs = dict(enumerate(fixed)) | dict(zip(differentiate, varying, strict=True))
        ys = jax.tree.leaves(jnn_fn(params, *(xs[i] for i in range(len(inputs)))))
        assert len(ys) == len(cotangents), f"jnn gave {len(ys)} outputs, torch {len(outputs)}"
        return sum(jnp.sum(y * r) for y, r in zip(ys, cotangents, strict=True)), ys

    params = {name: jnp.asarray(p.detach().numpy()) for name, p in named.items()}
    varying = [jnp.asarray(inputs[i]) for i in differentiate]
    fixed = [None if i in differentiate else jnp.asarray(x) for i, x in enumerate(inputs)]
    gradient = jax.jit(jax.grad(scalar, argnums=(0, 1), has_aux=True))
    compiled = compile_fast(gradient.lower(params, varying, fixed))
    (param_grads, input_grads), ys = compiled(params, varying, fixed)
    actual = {f"output {k}": y for k, y in enumerate(ys)}
    actual |= {f"grad {name}": g for name, g in param_grads.items()}
    actual |= {f"grad input {i}": g for i, g in zip(differentiate, input_grads, strict=True)}
    return expected, {name: np.asarray(a) for name, a in actual.items()}


def assert_close(expected, actual, tolerance=TOLERANCE):
    """Every array of ``actual`` equals the one of ``expected`` under its name, in float64."""
    assert set(actual) == set(expected), f"jnn gave {sorted(actual)}, torch {sorted(expected)}"
    errors, wrong = {}, []
    for name, want in expected.items():
        got, want = np.asarray(actual[name]), np.asarray(want)
        assert got.shape == want.shape, f"{name}: jnn shape {got.shape}, torch {want.shape}"
        assert got.dtype == want.dtype == np.float64, f"{name}: {got.dtype}, {want.dtype}"
        errors[name] = float(np.max(np.abs(got - want), initial=0.0))
        if not np.allclose(got, want, rtol=tolerance, atol=tolerance):
            wrong.append(f"{name} (max abs error {errors[name]:.1e})")
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
    MAX_ABS_ERRORS[test] = max(errors.values())
    assert not wrong, f"jnn differs from torch in {', '.join(wrong)}"


def assert_matches_torch(torch_fn, jnn_fn, inputs, module=None, differentiate=None):
    """``torch_and_jnn``, then ``assert_close`` at 1e-9."""
    assert_close(*torch_and_jnn(torch_fn, jnn_fn, inputs, module, differentiate))


def normal(*shape, scale=1.0):
    return np.random.default_rng(0).normal(0.0, scale, shape)


def randomize(module, scale=0.5):
    """Fill every parameter with normal values (not PyTorch's ones and zeros for norms)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, scale)
    return module.double()


def channels_last(x):
    """PyTorch's ``[batch, channels, *spatial]`` to jnn's ``[batch, *spatial, channels]``."""
    return jnp.moveaxis(x, 1, -1)


def channels_first(y):
    """jnn's ``[batch, *spatial, channels]`` to PyTorch's ``[batch, channels, *spatial]``."""
    return jnp.moveaxis(y, -1, 1)


def prefixed(params, prefix):
    """The entries of ``params`` under ``prefix`` (a PyTorch submodule), prefix removed."""
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- dense


def dense_params(p):
    """``nn.Linear``: ``weight`` ``[out, in]`` is jnn's ``[in, out]``; ``bias`` as it is."""
    return {"weight": p["weight"].T} | ({"bias": p["bias"]} if "bias" in p else {})


@pytest.mark.parametrize("bias", [True, False])
def test_dense(bias):
    module = torch.nn.Linear(5, 3, bias=bias).double()
    layer = jnn.Dense(3, use_bias=bias)
    x = normal(2, 4, 5)  # extra leading axes are batch axes in both
    assert_matches_torch(module, lambda p, x: layer.apply(dense_params(p), x), [x], module)


ACTIVATIONS = {
    "relu": (jnn.relu, torch.nn.ReLU),
    "tanh": (jnn.tanh, torch.nn.Tanh),
    "sigmoid": (jnn.sigmoid, torch.nn.Sigmoid),
    "gelu-tanh": (jnn.gelu, functools.partial(torch.nn.GELU, approximate="tanh")),
    "gelu-exact": (functools.partial(jnn.gelu, approximate=False), torch.nn.GELU),
    "silu": (jnn.silu, torch.nn.SiLU),
    "elu": (jnn.elu, torch.nn.ELU),
    "selu": (jnn.selu, torch.nn.SELU),
    "leaky-relu": (jnn.leaky_relu, torch.nn.LeakyReLU),
    "softplus": (jnn.softplus, torch.nn.Softplus),
    "softmax": (jnn.softmax, functools.partial(torch.nn.Softmax, dim=-1)),
    "log-softmax": (jnn.log_softmax, functools.partial(torch.nn.LogSoftmax, dim=-1)),
}


def test_activations():
    """Every activation at once: output ``K`` is the ``K``-th of ``ACTIVATIONS``."""

    def torch_activations(x):
        return tuple(make()(x) for _, make in ACTIVATIONS.values())

    def jnn_activations(_, x):
        return tuple(activation(x) for activation, _ in ACTIVATIONS.values())

    x = normal(3, 7, scale=3.0)
    assert_matches_torch(torch_activations, jnn_activations, [x])


@pytest.mark.parametrize("channels", [1, 4], ids=["shared", "per-channel"])
def test_prelu(channels):
    module = randomize(torch.nn.PReLU(channels), scale=0.3)
    layer = jnn.PReLU(per_channel=channels > 1)

    def jnn_prelu(p, x):  # PyTorch's slopes are on axis 1; jnn's on the last
        slope = p["weight"] if channels > 1 else p["weight"].reshape(())
        return channels_first(layer.apply({"negative_slope": slope}, channels_last(x)))

    assert_matches_torch(module, jnn_prelu, [normal(2, 4, 3, 5)], module)


@pytest.mark.parametrize("activation", ["relu", "gelu-exact"])
def test_mlp_matches_sequential(activation):
    jnn_activation, torch_activation = ACTIVATIONS[activation]
    widths = [5, 8, 6, 3]
    layers = []
    for i in range(len(widths) - 1):
        layers += [torch.nn.Linear(widths[i], widths[i + 1]), torch_activation()]
    module = torch.nn.Sequential(*layers[:-1]).double()  # no activation after the last
    mlp = jnn.MLP(widths[1:], activation=jnn_activation)

    def mlp_params(p):
        """``nn.Sequential`` children ``0, 2, 4`` (Linear) are ``dense_0, 1, 2``."""
        return {f"dense_{i}": dense_params(prefixed(p, f"{2 * i}.")) for i in range(3)}

    x = normal(4, 5, scale=2.0)
    assert_matches_torch(module, lambda p, x: mlp.apply(mlp_params(p), x), [x], module)


# --------------------------------------------------------------------------- convolutions


def conv_params(p):
    """``nn.ConvNd``: ``weight`` ``[F, C // G, *k]`` is jnn's ``[*k, C // G, F]``."""
    params = {"weight": torch_conv_weight_to_jnn(p["weight"])}
    return params | ({"bias": p["bias"]} if "bias" in p else {})


def jnn_padding(padding):
    """PyTorch's padding (an int, one int per axis, ``"same"``, ``"valid"``) for jnn."""
    return padding.upper() if isinstance(padding, str) else padding


# (spatial input shape, kernel_size, stride, padding, dilation, groups, bias); 4 input
# channels, 8 output channels.
CONV_CASES = {
    "1d-stride-pad": ((9,), (4,), 2, 1, 1, 1, True),
    "1d-same-dilated": ((9,), (3,), 1, "same", 2, 1, True),
    "1d-groups": ((8,), (3,), 2, 2, 1, 2, False),
    "2d-mixed": ((8, 7), (3, 2), (2, 1), (1, 0), (1, 2), 2, True),
    "2d-depthwise": ((6, 6), (3, 3), 1, "valid", 1, 4, False),
    "2d-same-even": ((6, 5), (2, 4), 1, "same", 1, 1, True),
    "3d": ((5, 6, 4), (2, 3, 2), (1, 2, 1), (1, 0, 1), 1, 1, True),
    "3d-groups-dilated": ((5, 5, 5), (2, 2, 2), 2, 1, (2, 1, 1), 2, True),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case):
    spatial, kernel, stride, padding, dilation, groups, bias = CONV_CASES[case]
    n = len(spatial)
    torch_conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[n - 1]
    options = {"stride": stride, "dilation": dilation, "groups": groups}
    module = torch_conv(4, 8, kernel, padding=padding, bias=bias, **options).double()
    conv = jnn.Conv(8, kernel, padding=jnn_padding(padding), use_bias=bias, **options)

    def jnn_conv(p, x):
        return channels_first(conv.apply(conv_params(p), channels_last(x)))

    assert_matches_torch(module, jnn_conv, [normal(2, 4, *spatial)], module)


def conv_transpose_params(p, groups):
    """``nn.ConvTransposeNd``: ``weight`` ``[C, F // G, *k]`` is jnn's ``[*k, C // G, F]``."""
    params = {"weight": torch_conv_transpose_weight_to_jnn(p["weight"], groups)}
    return params | ({"bias": p["bias"]} if "bias" in p else {})


# (spatial input shape, kernel_size, stride, padding, output_padding, dilation, groups,
# bias); 4 input channels, 6 output channels.
CONV_TRANSPOSE_CASES = {
    "1d": ((5,), (3,), 2, 1, 1, 1, 1, True),
    "1d-groups-dilated": ((5,), (4,), 1, 0, 0, 2, 2, True),
    "2d": ((4, 3), (2, 2), 2, 0, 0, 1, 1, True),
    "2d-mixed": ((4, 5), (3, 4), (2, 1), (1, 2), (1, 0), 1, 2, False),
    "3d": ((3, 4, 3), (3, 3, 3), 2, 1, (0, 1, 1), 1, 1, True),
    "3d-groups-dilated": ((3, 3, 4), (2, 3, 2), (1, 2, 2), (0, 1, 0), 0, (2, 1, 1), 2, True),
}


@pytest.mark.parametrize("case", list(CONV_TRANSPOSE_CASES))
def test_conv_transpose(case):
    spatial, kernel, stride, padding, extra, dilation, groups, bias = CONV_TRANSPOSE_CASES[case]
    n = len(spatial)
    torch_conv = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    options = {"stride": stride, "padding": padding, "output_padding": extra, "groups": groups}
    options |= {"dilation": dilation}
    module = torch_conv[n - 1](4, 6, kernel, bias=bias, **options).double()
    conv = jnn.ConvTranspose(6, kernel, use_bias=bias, **options)

    def jnn_conv(p, x):
        return channels_first(conv.apply(conv_transpose_params(p, groups), channels_last(x)))

    assert_matches_torch(module, jnn_conv, [normal(2, 4, *spatial)], module)


# --------------------------------------------------------------------------- pooling

# (spatial input shape, window, stride, padding, count_include_pad)
POOL_CASES = {
    "1d-padded": ((9,), 3, 2, 1, True),
    "1d-padded-exclude": ((9,), 3, 2, 1, False),
    "2d-tiled": ((6, 4), (2, 2), (2, 2), 0, True),  # jnn reshapes instead of reduce_window
    "2d-tiled-remainder": ((7, 5), (2, 2), (2, 2), 0, True),
    "2d-mixed": ((7, 6), (3, 2), (2, 1), (1, 0), True),
    "2d-mixed-exclude": ((7, 6), (3, 3), (2, 1), (1, 1), False),
    "3d": ((4, 5, 4), (2, 2, 3), (1, 2, 1), (1, 0, 1), True),
    "3d-exclude": ((4, 5, 4), (2, 2, 3), (1, 2, 1), (1, 0, 1), False),
}


@pytest.mark.parametrize(
    "kind, case",
    [("max", case) for case in ("1d-padded", "2d-tiled-remainder", "2d-mixed", "3d")]
    + [
        ("avg", case)
        for case in ("1d-padded-exclude", "2d-tiled", "2d-mixed", "2d-mixed-exclude", "3d-exclude")
    ],
)
def test_pool(kind, case):
    spatial, window, stride, padding, include = POOL_CASES[case]
    n = len(spatial)
    if kind == "max":
        module = (torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.MaxPool3d)[n - 1]
        module = module(window, stride, padding)
        pool = jnn.MaxPool(window, stride, padding)
    else:
        module = (torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d)[n - 1]
        module = module(window, stride, padding, count_include_pad=include)
        pool = jnn.AvgPool(window, stride, padding, count_include_pad=include)

    def jnn_pool(p, x):
        return channels_first(pool.apply(p, channels_last(x)))

    assert_matches_torch(module, jnn_pool, [normal(2, 3, *spatial)])


# (spatial input shape, scale_factor, mode)
UPSAMPLE_CASES = {
    "1d-nearest": ((5,), 3, "nearest"),
    "1d-linear": ((5,), 3, "linear"),
    "2d-nearest": ((3, 4), (2, 3), "nearest"),
    "2d-bilinear": ((3, 4), (2, 3), "bilinear"),
    "3d-trilinear": ((2, 3, 2), (2, 1, 3), "trilinear"),
}


@pytest.mark.parametrize("case", list(UPSAMPLE_CASES))
def test_upsample(case):
    spatial, factor, mode = UPSAMPLE_CASES[case]
    module = torch.nn.Upsample(
        scale_factor=factor, mode=mode, align_corners=None if mode == "nearest" else False
    )
    layer = jnn.Upsample(factor, method=mode)

    def jnn_upsample(p, x):
        return channels_first(layer.apply(p, channels_last(x)))

    assert_matches_torch(module, jnn_upsample, [normal(2, 3, *spatial)])


# --------------------------------------------------------------------------- normalization


def batch_norm_params(p):
    """``nn.BatchNormNd``: ``weight`` is jnn's ``scale`` and ``bias`` its ``offset``."""
    return {
        name: p[torch_name]
        for name, torch_name in (("scale", "weight"), ("offset", "bias"))
        if torch_name in p
    }


def batch_norm_state(module):
    """``running_mean`` and ``running_var`` buffers as jnn's ``mean`` and ``variance``."""
    return {
        "mean": jnp.asarray(module.running_mean.numpy()),
        "variance": jnp.asarray(module.running_var.numpy()),
    }


# (input shape [batch, channels, *spatial], affine, jnn's feature axis: -1 after a
# transpose to channels last, or 1 on PyTorch's layout as it is)
BATCH_NORM_CASES = {
    "1d-features": ((6, 3), True, -1),
    "1d-sequence": ((3, 4, 5), True, -1),
    "2d": ((2, 3, 4, 3), True, -1),
    "2d-no-affine": ((2, 3, 4, 3), False, -1),
    "2d-channels-first": ((2, 3, 4, 3), True, 1),
}


def make_batch_norm(case):
    """A PyTorch BatchNorm with random parameters and running statistics, its jnn twin
    (a jnn function of PyTorch's parameters, state and input), and an input."""
    shape, affine, axis = BATCH_NORM_CASES[case]
    torch_bn = (torch.nn.BatchNorm1d, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)[len(shape) - 2]
    module = randomize(torch_bn(shape[1], eps=1e-3, momentum=0.1, affine=affine))
    with torch.no_grad():
        module.running_mean.normal_(0.0, 1.0)
        module.running_var.uniform_(0.5, 2.0)
    # PyTorch's momentum weighs the new statistics, jnn's the old ones; PyTorch's
    # running_var follows the unbiased batch variance (jnn's default is the biased one).
    bn = jnn.BatchNorm(
        momentum=0.9,
        epsilon=1e-3,
        use_scale=affine,
        use_offset=affine,
        axis=axis,
        running_variance="unbiased",
    )
    to_jnn, from_jnn = (channels_last, channels_first) if axis == -1 else (jnp.asarray,) * 2

    def jnn_bn(p, state, x, is_training):
        y, state = bn.apply(batch_norm_params(p), to_jnn(x), state=state, is_training=is_training)
        return from_jnn(y), state

    return module, jnn_bn, normal(*shape, scale=2.0) + 3.0


@pytest.mark.parametrize("is_training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", list(BATCH_NORM_CASES))
def test_batch_norm(case, is_training):
    module, jnn_bn, x = make_batch_norm(case)
    state = batch_norm_state(module)
    module.train(is_training)
    assert_matches_torch(module, lambda p, x: jnn_bn(p, state, x, is_training)[0], [x], module)


@pytest.mark.parametrize("case", list(BATCH_NORM_CASES))
def test_batch_norm_running_statistics(case):
    module, jnn_bn, x = make_batch_norm(case)
    params = {k: jnp.asarray(v.detach().numpy()) for k, v in module.named_parameters()}
    batches = [x, 0.5 * x[::-1] - 1.0]  # the second update starts from updated statistics

    @jax.jit
    def train(state):
        for batch in batches:
            _, state = jnn_bn(params, state, batch, True)
        return state

    state = train(batch_norm_state(module))
    with torch.no_grad():
        for batch in batches:
            module.train()(torch.from_numpy(batch))
    assert_close(batch_norm_state(module), state)


def norm_params(p):
    """``nn.LayerNorm``/``GroupNorm``/``RMSNorm``: ``weight`` is ``scale``, ``bias`` ``offset``."""
    return batch_norm_params(p)


# (input shape, normalized_shape, eps, elementwise_affine, bias)
LAYER_NORM_CASES = {
    "last-axis": ((2, 3, 5), (5,), 1e-5, True, True),
    "last-two-axes": ((2, 3, 4), (3, 4), 1e-3, True, True),
    "no-bias": ((4, 6), (6,), 1e-5, True, False),
    "no-affine": ((2, 3, 4), (3, 4), 1e-5, False, False),
}


@pytest.mark.parametrize("case", list(LAYER_NORM_CASES))
def test_layer_norm(case):
    shape, normalized, eps, affine, bias = LAYER_NORM_CASES[case]
    module = randomize(torch.nn.LayerNorm(normalized, eps, affine, bias))
    axis = tuple(range(-len(normalized), 0))
    layer = jnn.LayerNorm(eps, use_scale=affine, use_offset=affine and bias, axis=axis)
    x = normal(*shape, scale=2.0) + 1.0
    assert_matches_torch(module, lambda p, x: layer.apply(norm_params(p), x), [x], module)


# (input shape [batch, channels, *spatial], num_groups, eps, affine)
GROUP_NORM_CASES = {
    "no-spatial": ((3, 6), 2, 1e-5, True),
    "2d": ((2, 6, 3, 4), 3, 1e-3, True),
    "3d-one-group": ((2, 4, 2, 2, 3), 1, 1e-5, True),
    "instance": ((2, 4, 5), 4, 1e-5, True),
    "no-affine": ((2, 6, 4), 3, 1e-5, False),
}


@pytest.mark.parametrize("case", list(GROUP_NORM_CASES))
def test_group_norm(case):
    shape, groups, eps, affine = GROUP_NORM_CASES[case]
    module = randomize(torch.nn.GroupNorm(groups, shape[1], eps, affine))
    layer = jnn.GroupNorm(num_groups=groups, epsilon=eps, use_scale=affine, use_offset=affine)

    def jnn_norm(p, x):
        return channels_first(layer.apply(norm_params(p), channels_last(x)))

    assert_matches_torch(module, jnn_norm, [normal(*shape, scale=2.0) + 1.0], module)


# (input shape, eps, affine)
INSTANCE_NORM_CASES = {
    "1d": ((2, 3, 7), 1e-5, True),
    "2d": ((2, 4, 3, 5), 1e-3, True),
    "3d-no-affine": ((2, 2, 3, 2, 4), 1e-5, False),  # PyTorch's default
}


@pytest.mark.parametrize("case", list(INSTANCE_NORM_CASES))
def test_instance_norm(case):
    shape, eps, affine = INSTANCE_NORM_CASES[case]
    kind = (torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)
    module = randomize(kind[len(shape) - 3](shape[1], eps, affine=affine))
    layer = jnn.InstanceNorm(epsilon=eps, use_scale=affine, use_offset=affine)

    def jnn_norm(p, x):
        return channels_first(layer.apply(norm_params(p), channels_last(x)))

    assert_matches_torch(module, jnn_norm, [normal(*shape, scale=2.0) + 1.0], module)


# (input shape, normalized_shape, eps (None: PyTorch's default, the dtype's eps), affine)
RMS_NORM_CASES = {
    "last-axis": ((2, 3, 5), (5,), 1e-6, True),
    "last-two-axes": ((2, 3, 4), (3, 4), 1e-3, True),
    "default-eps": ((4, 6), (6,), None, True),
    "no-affine": ((2, 3, 4), (4,), 1e-5, False),
}


@pytest.mark.parametrize("case", list(RMS_NORM_CASES))
def test_rms_norm(case):
    shape, normalized, eps, affine = RMS_NORM_CASES[case]
    module = randomize(torch.nn.RMSNorm(normalized, eps, affine))
    epsilon = np.finfo(np.float64).eps if eps is None else eps
    axis = tuple(range(-len(normalized), 0))
    layer = jnn.RMSNorm(epsilon, use_scale=affine, axis=axis)
    x = normal(*shape, scale=2.0) + 1.0
    assert_matches_torch(module, lambda p, x: layer.apply(norm_params(p), x), [x], module)


# --------------------------------------------------------------------------- embedding


def embedding_params(p):
    """``nn.Embedding``: ``weight`` ``[num_embeddings, features]`` is jnn's ``embedding``."""
    return {"embedding": p["weight"]}


def test_embedding_lookup():
    module = torch.nn.Embedding(7, 4).double()
    layer = jnn.Embedding(7, 4)
    ids = np.array([[0, 3, 6, 3], [5, 1, 1, 2]])  # repeats: their gradients add up
    assert_matches_torch(
        module, lambda p, ids: layer.apply(embedding_params(p), ids), [ids], module
    )


def test_embedding_attend_is_linear_with_the_table():
    module = torch.nn.Embedding(7, 4).double()
    layer = jnn.Embedding(7, 4)

    def torch_attend(x):
        return F.linear(x, module.weight)

    def jnn_attend(p, x):
        return layer.apply(embedding_params(p), x, attend=True)

    assert_matches_torch(torch_attend, jnn_attend, [normal(2, 3, 4)], module)


# --------------------------------------------------------------------------- recurrent

RNN_KINDS = {
    "rnn-tanh": (functools.partial(torch.nn.RNN, nonlinearity="tanh"), jnn.SimpleRNNCell, "rnn"),
    "rnn-relu": (
        functools.partial(torch.nn.RNN, nonlinearity="relu"),
        functools.partial(jnn.SimpleRNNCell, activation=jnn.relu),
        "rnn",
    ),
    "lstm": (torch.nn.LSTM, jnn.LSTMCell, "lstm"),
    "gru": (torch.nn.GRU, jnn.GRUCell, "gru"),
}


def torch_recurrent(module, lstm):
    """Run ``module`` (batch_first) as ``(outputs, *final states)``, h (and c) per direction.

    With ``lengths``, the batch is packed (unsorted) and the outputs padded back with zeros.
    """

    def run(x, lengths=None):
        inputs = x
        if lengths is not None:
            inputs = torch.nn.utils.rnn.pack_padded_sequence(
                x, lengths, batch_first=True, enforce_sorted=False
            )
        outputs, final = module(inputs)
        if lengths is not None:
            outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(
                outputs, batch_first=True, total_length=x.shape[1]
            )
        final = final if lstm else (final,)  # each [directions, batch, hidden]
        return (outputs, *(s[d] for d in range(final[0].shape[0]) for s in final))

    return run


def recurrent_case(kind, bidirectional, lengths):
    directions = "bidirectional" if bidirectional else "forward"
    return pytest.param(kind, bidirectional, lengths, id=f"{kind}-{directions}-{lengths}")


@pytest.mark.parametrize(
    "kind, bidirectional, lengths",
    # Each kind one way over full sequences; both ways over packed sequences of unequal
    # lengths (a masked scan each way), and once over full sequences.
    [recurrent_case(kind, False, "full") for kind in RNN_KINDS]
    + [recurrent_case(kind, True, "lengths") for kind in ("rnn-tanh", "lstm", "gru")]
    + [recurrent_case("gru", True, "full")],
)
def test_recurrent(kind, bidirectional, lengths):
    torch_rnn, make_cell, name = RNN_KINDS[kind]
    module = randomize(torch_rnn(3, 4, batch_first=True, bidirectional=bidirectional))
    rnn = jnn.RNN(make_cell(4), return_carry=True)
    layer = jnn.Bidirectional(rnn) if bidirectional else rnn

    def jnn_recurrent(p, x, lengths=None):
        if bidirectional:
            params = {
                "forward": torch_rnn_params_to_jnn(p, name, "_l0"),
                "backward": torch_rnn_params_to_jnn(p, name, "_l0_reverse"),
            }
        else:
            params = torch_rnn_params_to_jnn(p, name)
        carries, outputs = layer.apply(params, x, lengths=lengths)
        return (outputs, *jax.tree.leaves(carries))  # h (and c) per direction

    inputs = [normal(3, 5, 3)]
    if lengths == "lengths":
        inputs.append(np.array([5, 2, 4]))  # unsorted, one full
    assert_matches_torch(torch_recurrent(module, name == "lstm"), jnn_recurrent, inputs, module)


# --------------------------------------------------------------------------- attention


def attention_params(p, num_heads):
    """``nn.MultiheadAttention``: per-projection ``[out, in]`` weights (stacked q, k, v in
    ``in_proj_weight``, or ``q/k/v_proj_weight`` when ``kdim``/``vdim`` differ) are jnn's
    ``[in, heads, head_dim]``; ``out_proj.weight`` is ``[heads, head_dim, features]``."""
    if "in_proj_weight" in p:
        weights = jnp.split(p["in_proj_weight"], 3)
    else:
        weights = [p[f"{n}_proj_weight"] for n in "qkv"]
    features = weights[0].shape[0]
    head_dim = features // num_heads
    biases = jnp.split(p["in_proj_bias"], 3) if "in_proj_bias" in p else [None] * 3
    params = {}
    for name, w, b in zip(("query", "key", "value"), weights, biases, strict=True):
        params[name] = {"weight": w.T.reshape(w.shape[1], num_heads, head_dim)}
        if b is not None:
            params[name]["bias"] = b.reshape(num_heads, head_dim)
    params["output"] = {"weight": p["out_proj.weight"].T.reshape(num_heads, head_dim, features)}
    if "out_proj.bias" in p:
        params["output"]["bias"] = p["out_proj.bias"]
    return params


# (kv_features (None: self-attention), mask, bias, jnn implementation)
ATTENTION_CASES = {
    "self": (None, None, True, None),
    "self-causal": (None, "causal", True, None),
    "self-causal-padding": (None, "causal+padding", True, None),
    "self-causal-no-bias": (None, "causal", False, None),
    "self-causal-fused": (None, "causal", True, "xla"),  # jax.nn.dot_product_attention
    "cross": (5, None, True, None),
    "cross-padding": (5, "padding", True, None),
}


FLOAT32_SOFTMAX = (
    "with implementation='xla' (the default on GPUs and TPUs) jnn calls "
    "jax.nn.dot_product_attention, which always takes the softmax in float32 "
    "(padded_logits.astype(np.float32)), so float64 inputs get float32-accurate outputs "
    "and gradients (errors near 1e-6)"
)


@pytest.mark.parametrize(
    "case, tolerance",
    [pytest.param(case, TOLERANCE, id=case) for case in ATTENTION_CASES if "fused" not in case]
    + [
        pytest.param(
            "self-causal-fused",
            TOLERANCE,
            marks=xfail(FLOAT32_SOFTMAX),
            id="self-causal-fused-float64",
        ),
        pytest.param("self-causal-fused", 1e-5, id="self-causal-fused-float32-accurate"),
    ],
)
def test_multi_head_attention(case, tolerance):
    assert_close(*multi_head_attention(case), tolerance)


@functools.cache
def multi_head_attention(case):
    """Both sides' outputs and gradients, computed once for both tolerances."""
    kv_features, mask, bias, implementation = ATTENTION_CASES[case]
    batch, length, kv_length, features, heads = 3, 5, 4 if kv_features else 5, 8, 2
    module = randomize(
        torch.nn.MultiheadAttention(
            features, heads, bias=bias, batch_first=True, kdim=kv_features, vdim=kv_features
        )
    )
    layer = jnn.MultiHeadAttention(heads, use_bias=bias, implementation=implementation)
    lengths = np.array([kv_length, 2, 1])  # each query still sees key 0, as causal needs
    causal = "causal" in (mask or "")
    padding = "padding" in (mask or "")

    def torch_attention(query, key_value=None):
        key_value = query if key_value is None else key_value
        torch_mask = None
        if causal:  # True means *masked* in PyTorch, *attend* in jnn
            torch_mask = torch.ones(length, kv_length, dtype=torch.bool).triu(1)
        pad = torch.arange(kv_length)[None] >= torch.from_numpy(lengths)[:, None]
        out, _ = module(
            query,
            key_value,
            key_value,
            attn_mask=torch_mask,
            key_padding_mask=pad if padding else None,
            need_weights=False,
        )
        return out

    def jnn_attention(p, query, key_value=None):
        jnn_mask = jnn.combine_masks(
            jnn.causal_mask(length) if causal else None,
            jnn.padding_mask(jnp.asarray(lengths), kv_length) if padding else None,
        )
        return layer.apply(attention_params(p, heads), query, key_value, mask=jnn_mask)

    inputs = [normal(batch, length, features)]
    if kv_features:
        inputs.append(normal(batch, kv_length, kv_features, scale=1.5))
    return torch_and_jnn(torch_attention, jnn_attention, inputs, module)


# --------------------------------------------------------------------------- transformer blocks


def transformer_block_params(p, num_heads, cross_attention):
    """``nn.TransformerEncoderLayer``/``DecoderLayer``: ``self_attn`` is ``attention``,
    ``linear1``/``linear2`` the MLP's ``dense_0``/``dense_1``; the encoder's ``norm1``,
    ``norm2`` are ``norm_1``, ``norm_2``, the decoder's ``norm1``, ``norm2``, ``norm3``
    are ``norm_1``, ``norm_cross``, ``norm_2`` (``multihead_attn`` is ``cross_attention``)."""
    params = {
        "attention": attention_params(prefixed(p, "self_attn."), num_heads),
        "mlp": {
            "dense_0": dense_params(prefixed(p, "linear1.")),
            "dense_1": dense_params(prefixed(p, "linear2.")),
        },
        "norm_1": norm_params(prefixed(p, "norm1.")),
    }
    if not cross_attention:
        return params | {"norm_2": norm_params(prefixed(p, "norm2."))}
    return params | {
        "cross_attention": attention_params(prefixed(p, "multihead_attn."), num_heads),
        "norm_cross": norm_params(prefixed(p, "norm2.")),
        "norm_2": norm_params(prefixed(p, "norm3.")),
    }


# (decoder, norm_first, activation, causal): PyTorch's defaults first (post-norm, relu)
TRANSFORMER_CASES = {
    "encoder-post-norm-relu-padding": (False, False, "relu", False),
    "encoder-pre-norm-gelu-causal-padding": (False, True, "gelu", True),
    "decoder-post-norm-relu-causal-context-padding": (True, False, "relu", True),
    "decoder-pre-norm-gelu-causal-context-padding": (True, True, "gelu", True),
}


@pytest.mark.parametrize("case", list(TRANSFORMER_CASES))
def test_transformer_block(case):
    decoder, norm_first, activation, causal = TRANSFORMER_CASES[case]
    batch, length, context_length, features, heads, hidden = 3, 5, 4, 8, 2, 16
    kind = torch.nn.TransformerDecoderLayer if decoder else torch.nn.TransformerEncoderLayer
    module = randomize(
        kind(
            features,
            heads,
            hidden,
            dropout=0.0,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
        ),
        scale=0.3,
    )
    block = jnn.TransformerBlock(
        heads,
        hidden,
        causal=causal,
        cross_attention=decoder,
        norm_first=norm_first,
        # PyTorch's "gelu" is the exact one; JAX's default is the tanh approximation
        activation=jnn.relu
        if activation == "relu"
        else functools.partial(jnn.gelu, approximate=False),
    )
    lengths = np.array([length, 3, 1])  # self-attention padding (the encoder's)
    context_lengths = np.array([context_length, 2, 1])

    def padding(lengths, size):  # PyTorch's key_padding_mask: True = padding
        return torch.arange(size)[None] >= torch.from_numpy(lengths)[:, None]

    def torch_block(x, context=None):
        mask = torch.ones(length, length, dtype=torch.bool).triu(1) if causal else None
        if not decoder:
            return module(
                x, src_mask=mask, src_key_padding_mask=padding(lengths, length), is_causal=causal
            )
        return module(
            x,
            context,
            tgt_mask=mask,
            tgt_is_causal=causal,
            memory_key_padding_mask=padding(context_lengths, context_length),
        )

    def jnn_block(p, x, context=None):
        params = transformer_block_params(p, heads, decoder)
        if not decoder:
            return block.apply(params, x, lengths=jnp.asarray(lengths))
        return block.apply(params, x, context, context_lengths=jnp.asarray(context_lengths))

    inputs = [normal(batch, length, features)]
    if decoder:
        inputs.append(normal(batch, context_length, features, scale=1.5))
    assert_matches_torch(torch_block, jnn_block, inputs, module)


# --------------------------------------------------------------------------- losses


def probabilities(*shape):
    return np.random.default_rng(2).uniform(0.05, 0.95, shape)


def soft_labels(*shape):
    return np.array(jax.nn.softmax(normal(*shape, scale=1.5) + 0.3))


REDUCTIONS = ("mean", "sum", "none")  # each test checks all three (one compilation)
SMOOTHING = (0.0, 0.1)  # label smoothing, as for reductions

# name: (torch loss(predictions, targets, reduction), jnn loss, its inputs)
ELEMENTWISE_LOSSES = {
    "mse": (F.mse_loss, jnn.mean_squared_error, lambda: [normal(3, 4), probabilities(3, 4)]),
    "l1": (F.l1_loss, jnn.mean_absolute_error, lambda: [normal(3, 4), probabilities(3, 4)]),
    "huber": (F.huber_loss, jnn.huber, lambda: [normal(3, 4, scale=2.0), probabilities(3, 4)]),
    "huber-delta-0.5": (
        functools.partial(F.huber_loss, delta=0.5),
        functools.partial(jnn.huber, delta=0.5),
        lambda: [normal(3, 4), probabilities(3, 4)],
    ),
    "huber-delta-2": (
        functools.partial(F.huber_loss, delta=2.0),
        functools.partial(jnn.huber, delta=2.0),
        lambda: [normal(3, 4, scale=3.0), probabilities(3, 4)],
    ),
    "smooth-l1": (  # SmoothL1Loss with beta=1 is HuberLoss with delta=1
        F.smooth_l1_loss,
        jnn.huber,
        lambda: [normal(3, 4, scale=2.0), probabilities(3, 4)],
    ),
    "bce": (
        F.binary_cross_entropy,
        jnn.binary_cross_entropy,
        lambda: [probabilities(3, 4), probabilities(4, 3).T.copy()],
    ),
    "bce-hard-targets": (
        F.binary_cross_entropy,
        jnn.binary_cross_entropy,
        lambda: [probabilities(3, 4), (normal(3, 4) > 0).astype(np.float64)],
    ),
    "bce-with-logits": (
        F.binary_cross_entropy_with_logits,
        jnn.sigmoid_binary_cross_entropy,
        lambda: [normal(3, 4, scale=3.0), probabilities(4, 3).T.copy()],
    ),
}


@pytest.mark.parametrize("loss", list(ELEMENTWISE_LOSSES))
def test_elementwise_loss(loss):
    torch_loss, jnn_loss, make_inputs = ELEMENTWISE_LOSSES[loss]
    assert_matches_torch(
        lambda p, t: tuple(torch_loss(p, t, reduction=r) for r in REDUCTIONS),
        lambda _, p, t: tuple(jnn_loss(p, t, reduction=r) for r in REDUCTIONS),
        make_inputs(),
    )


@pytest.mark.parametrize("labels", ["integer", "soft"])
@pytest.mark.parametrize("class_axis", ["last", "second"], ids=["[N,C]", "[N,C,T]"])
def test_cross_entropy(class_axis, labels):
    if class_axis == "last":  # logits [N, C] in both
        logits, ids, move = normal(4, 5, scale=2.0), np.array([0, 4, 2, 2]), lambda z: z
    else:  # PyTorch's [N, C, T] is jnn's [N, T, C]
        logits, ids = normal(2, 5, 3, scale=2.0), np.array([[0, 4, 1], [2, 2, 3]])
        move = channels_last
    if labels == "integer":
        targets, jnn_loss = ids, jnn.softmax_cross_entropy_with_integer_labels
    else:
        targets = np.moveaxis(soft_labels(*np.moveaxis(logits, 1, -1).shape), -1, 1)
        jnn_loss = jnn.softmax_cross_entropy

    options = [(a, r) for a in SMOOTHING for r in REDUCTIONS]

    def torch_ce(z, t):
        return tuple(F.cross_entropy(z, t, reduction=r, label_smoothing=a) for a, r in options)

    def jnn_ce(_, z, t):
        z, t = move(z), t if labels == "integer" else move(t)
        return tuple(jnn_loss(z, t, label_smoothing=a, reduction=r) for a, r in options)

    assert_matches_torch(torch_ce, jnn_ce, [logits, targets])


@pytest.mark.parametrize("zero_targets", [False, True], ids=["positive", "with-zeros"])
def test_kl_divergence(zero_targets):
    log_p = np.asarray(jax.nn.log_softmax(normal(4, 5, scale=2.0)))
    targets = soft_labels(4, 5)
    differentiate = None
    if zero_targets:  # a zero target contributes 0; d/dt of t log t is -inf there
        targets[1, 2] = 0.0
        targets /= targets.sum(-1, keepdims=True)
        differentiate = [0]

    def torch_kl(log_p, t):
        # jnn's "mean" averages over distributions, PyTorch's "batchmean"; jnn's "none"
        # gives one value per distribution, PyTorch's one per element.
        return (
            F.kl_div(log_p, t, reduction="batchmean"),
            F.kl_div(log_p, t, reduction="sum"),
            F.kl_div(log_p, t, reduction="none").sum(-1),
        )

    def jnn_kl(_, log_p, t):
        return tuple(jnn.kl_divergence(log_p, t, reduction=r) for r in REDUCTIONS)

    assert_matches_torch(torch_kl, jnn_kl, [log_p, targets], differentiate=differentiate)
