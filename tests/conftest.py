"""Shared fixtures: small inputs and keys, so every test stays fast on two CPU cores."""

import importlib.util
import os
import subprocess
import sys

# The tests run in several worker processes (pytest-xdist); on a GPU each would otherwise
# reserve most of its memory at start-up.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Most of the suite's time on a CPU is XLA compiling hundreds of small programs. These
# flags make CPU compilation 2-2.5x faster; the tests' tolerances hold either way (every
# test passes with and without them). XLA aborts on a flag it does not know, so a
# subprocess tries them first; the xdist workers inherit the decision from the controller.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")


def _use_fast_cpu_compilation() -> None:
    if "JNN_TESTS_XLA_FLAGS_CHOSEN" in os.environ:
        return
    os.environ["JNN_TESTS_XLA_FLAGS_CHOSEN"] = "1"
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms not in ("", "cpu") or (
        not platforms and any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS)
    ):
        return  # an accelerator: leave its compiler alone
    flags = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1.0)"],
        env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        timeout=300,
    )
    if probe.returncode == 0:
        os.environ["XLA_FLAGS"] = flags


_use_fast_cpu_compilation()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Precision. On a CPU, float32 matrix products and convolutions are computed in full
# float32. On NVIDIA GPUs JAX's default lets them use TF32 (a 10-bit mantissa, relative
# error about 1e-3), and on TPUs bfloat16 passes, so a check against NumPy written with
# float32 tolerances fails there although nothing is wrong. Every test therefore runs its
# reference comparisons at full float32 ("highest"), inside a context that ends with the
# test: nothing changes the defaults of code outside the suite. Tests of the default fast
# path itself are marked ``default_precision`` and compare with ``backend_tolerance``.
DEFAULT_PRECISION_TOLERANCE = {
    "cpu": {"rtol": 1e-5, "atol": 1e-5},  # full float32
    "gpu": {"rtol": 1e-2, "atol": 1e-2},  # TF32 products: 10-bit mantissa
    "tpu": {"rtol": 3e-2, "atol": 3e-2},  # bfloat16 passes: 8-bit mantissa
}


@pytest.fixture(autouse=True)
def _full_float32_precision(request):
    if request.node.get_closest_marker("default_precision"):
        yield
        return
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture
def backend_tolerance():
    """``rtol``/``atol`` for float32 results computed at the backend's default precision."""
    return DEFAULT_PRECISION_TOLERANCE.get(jax.default_backend(), {"rtol": 3e-2, "atol": 3e-2})


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def x_small(rng):
    """A batch of 4 examples with 3 features, float32."""
    return rng.standard_normal((4, 3)).astype(np.float32)


# Transformations a layer's apply must survive: none and jax.jit (the chex "variants"
# idea, as a lightweight parametrize).
TRANSFORMS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


@pytest.fixture(scope="module")
def two_class_data():
    """64 examples of 4 features, labelled by the sign of the first two's sum (fit tests)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    return x, y


def check_gradients(f, args, order=1):
    """``jax.test_util.check_grads`` in forward and reverse mode, with the tolerances that
    float32 finite differences at ``eps=1e-3`` support (about 1e-2)."""
    from jax.test_util import check_grads

    check_grads(f, args, order=order, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2, eps=1e-3)


# PyTorch layouts to jnn's. Array methods and jax.numpy only, so these take NumPy or JAX
# arrays alike and can be differentiated through (tests/test_torch_parity.py maps
# gradients back to PyTorch's names that way).


def torch_conv_weight_to_jnn(w):
    """Conv: PyTorch's ``[features, in // groups, *k]`` to ``[*k, in // groups, features]``."""
    n = w.ndim - 2
    return w.transpose((*range(2, 2 + n), 1, 0))


def torch_conv_transpose_weight_to_jnn(w, groups):
    """ConvTranspose: PyTorch's ``[in, features // groups, *k]`` to ``[*k, in // groups, features]``."""
    channels, f_per_group, *kernel = w.shape
    n = len(kernel)
    w = w.reshape(groups, channels // groups, f_per_group, *kernel)
    w = w.transpose((*range(3, 3 + n), 1, 0, 2))
    return w.reshape(*kernel, channels // groups, groups * f_per_group)


def torch_rnn_params_to_jnn(t, kind, suffix="_l0"):
    """One layer and direction (``suffix``) of ``torch.nn.RNN``/``LSTM``/``GRU``, given its
    named parameters ``t``, as params of ``SimpleRNNCell``/``LSTMCell``/``GRUCell``
    (``kind``: ``"rnn"``, ``"lstm"`` or ``"gru"``)."""
    w_ih, w_hh = t["weight_ih" + suffix], t["weight_hh" + suffix]
    b_ih, b_hh = t["bias_ih" + suffix], t["bias_hh" + suffix]
    params = {"input": {"weight": w_ih.T, "bias": b_ih + b_hh}, "hidden": {"weight": w_hh.T}}
    if kind == "gru":  # the candidate's hidden bias stays inside r * (h W_hn + b_hn)
        n = w_hh.shape[1]
        params["input"]["bias"] = jnp.concatenate([b_ih[: 2 * n] + b_hh[: 2 * n], b_ih[2 * n :]])
        params["hidden"]["bias"] = b_hh[2 * n :]
    return params


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """Run the test from an empty working directory, and check it is still empty after:
    examples are run from anywhere, and nothing they write may land there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd
    assert not list(cwd.iterdir()), "the example wrote into the working directory"


@pytest.fixture
def output_dir(tmp_path):
    """A folder for an example's --output-dir; missing, so the example must create it."""
    return tmp_path / "outputs" / "run"
