"""Timing machinery shared by every workload: runners, interleaved rounds, the matmul rate."""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Runner:
    """One implementation of one workload, ready to run training steps."""

    run: Callable[[int], None]
    """Run ``n`` training steps and wait until they are finished."""
    param_count: int
    first_call: float
    """Seconds of the first step: tracing, compilation and one execution."""


def jax_runner(call: Callable, state, params) -> Runner:
    """Wrap ``call(state) -> (state, loss)``, a jitted JAX step that may donate ``state``."""
    import jax

    count = int(sum(leaf.size for leaf in jax.tree.leaves(params)))
    holder = [state]
    start = time.perf_counter()
    holder[0], loss = call(holder[0])
    jax.block_until_ready(loss)
    first = time.perf_counter() - start

    def run(n: int) -> None:
        state = holder[0]
        loss = None
        for _ in range(n):
            state, loss = call(state)
        jax.block_until_ready((state, loss))
        holder[0] = state

    return Runner(run, count, first)


@functools.cache
def torch_device():
    """The device every PyTorch implementation runs on: the first CUDA GPU when PyTorch
    sees one, else the CPU.

    On a GPU, float32 matmuls are allowed TF32 (``set_float32_matmul_precision("high")``),
    which is JAX's default there, so float32 workloads compare like with like; and a first
    small matmul creates the CUDA context and cuBLAS's handle outside any measurement.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda")
    torch.set_float32_matmul_precision("high")
    a = torch.ones((256, 256), device=device)
    (a @ a).sum().item()
    return device


def torch_sync() -> None:
    """Wait for the GPU's queued work (PyTorch launches kernels asynchronously)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def describe_torch_device() -> str:
    """``"cuda (<GPU name>)"`` or ``"cpu"``: where the PyTorch implementations ran."""
    import torch

    device = torch_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def torch_timed(one: Callable[[], None], count: int) -> Runner:
    """A runner of ``one()``, one PyTorch training step; the GPU is synchronized before
    every clock reading, so queued kernels are counted where they run."""
    start = time.perf_counter()
    one()
    torch_sync()
    first = time.perf_counter() - start

    def run(n: int) -> None:
        for _ in range(n):
            one()
        torch_sync()

    return Runner(run, count, first)


def torch_runner(model, x, y, learning_rate: float) -> Runner:
    """A PyTorch training step: forward, cross-entropy, backward, Adam; the model and
    the batch moved to ``torch_device()`` first."""
    import torch

    device = torch_device()
    model, x, y = model.to(device), x.to(device), y.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()

    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    return torch_timed(one, sum(p.numel() for p in model.parameters()))


def matmul_gflops(
    sizes=(512, 1024, 2048), repeats: int = 20, dtype: str = "float32", calls: int = 1
) -> float:
    """The machine's square-matmul rate under XLA: the best over sizes and repeats.

    Each repeat times ``calls`` matmuls queued back to back and waited for once, so on
    an accelerator the dispatch and the wait are spread over several kernels.
    """
    import jax
    import jax.numpy as jnp

    rates = []
    for size in sizes:
        a = jnp.ones((size, size), dtype)
        matmul = jax.jit(lambda a: a @ a)
        jax.block_until_ready(matmul(a))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            out = [matmul(a) for _ in range(calls)]
            jax.block_until_ready(out)
            best = min(best, (time.perf_counter() - start) / calls)
        rates.append(2 * size**3 / best / 1e9)
    return max(rates)


def device_matmul_gflops(dtype: str) -> float:
    """``matmul_gflops`` sized for the backend: squares up to 8192 on an accelerator
    (large enough to reach its peak), the former CPU sizes on a CPU (smaller ones in
    bfloat16, which XLA's CPU code runs far slower than float32)."""
    import jax

    if jax.default_backend() != "cpu":
        return matmul_gflops((2048, 4096, 8192), repeats=10, dtype=dtype, calls=10)
    if dtype == "float32":
        return matmul_gflops()
    return matmul_gflops((256, 512), repeats=5, dtype=dtype)


def calibrate(runner: Runner, target_seconds: float) -> int:
    """Steps per timed block so that one block takes about ``target_seconds``."""
    n = 1
    while True:
        start = time.perf_counter()
        runner.run(n)
        elapsed = time.perf_counter() - start
        if elapsed >= target_seconds / 4 or n >= 4096:
            return max(1, int(n * target_seconds / max(elapsed, 1e-9)))
        n *= 4


def interleaved_rounds(
    runners: dict[str, Runner], steps: int, rounds: int, start: int = 0
) -> dict[str, list]:
    """Seconds per step of each runner, over ``rounds`` rounds in rotating order; ``start``
    continues the rotation of an earlier call that ran ``start`` rounds."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(start, start + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            begin = time.perf_counter()
            runners[name].run(steps)
            times[name].append((time.perf_counter() - begin) / steps)
    return times


def plan_rounds(
    seconds_left: float | None,
    round_seconds: float,
    build_seconds: float,
    max_rounds: int,
    max_builds: int,
    min_rounds: int = 3,
) -> tuple[int, int]:
    """How many timed rounds and fresh-build (first-call) rounds fit in ``seconds_left``.

    ``round_seconds`` is the measured length of one timed round (every implementation's
    block), ``build_seconds`` that of one build of every implementation. Without a budget
    (``None``) the maxima are returned. Otherwise: ``min_rounds`` timed rounds always;
    then builds, with at most half of what is left; then more timed rounds, and builds
    again with whatever those leave. Step times are the main result, so they come first.
    """
    if seconds_left is None:
        return max_rounds, max_builds
    rounds = min(max_rounds, min_rounds)
    left = seconds_left - rounds * round_seconds
    builds = min(max_builds, max(0, math.floor(left / 2 / max(build_seconds, 1e-9))))
    left -= builds * build_seconds
    more = min(max_rounds - rounds, max(0, math.floor(left / max(round_seconds, 1e-9))))
    rounds, left = rounds + more, left - more * round_seconds
    builds += min(max_builds - builds, max(0, math.floor(left / max(build_seconds, 1e-9))))
    return rounds, builds


def clear_caches() -> None:
    """Forget every compiled and traced function, so the next build starts from scratch."""
    import jax

    jax.clear_caches()
    if "jnn" in sys.modules:
        # jnn's record of the param shapes each layer expects (filled on a layer's first
        # trace): without clearing it, jnn would trace faster on every build but the first.
        from jnn import _params_check

        _params_check._expected_cached.cache_clear()


def first_call_rounds(builders: dict[str, Callable[[], Runner]], rounds: int) -> dict:
    """Seconds of the first step (trace, compile, one run) of each implementation, each
    built afresh ``rounds`` times in rotating order with the caches cleared before every
    build, so that one slow build or machine drift does not decide the ratio."""
    names = list(builders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            clear_caches()
            times[name].append(builders[name]().first_call)
    return times


def cross_entropy(logits, labels):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def on_device(x, y):
    """The batch as device arrays, for every JAX implementation alike: a NumPy batch is
    copied to the device on every call, a cost of the input pipeline (2-4% of the MLP
    and LSTM steps on this CPU) rather than of the library's step."""
    import jax.numpy as jnp

    return jnp.asarray(x), jnp.asarray(y)


def jax_train(forward, params, x, y, learning_rate: float) -> Runner:
    """A jitted, donating Adam step of ``forward(params, x) -> logits``: the plain-JAX way
    (used by the hand-written reference and by Flax linen, whose params are a dict too)."""
    import jax
    import optax

    x, y = on_device(x, y)
    optimizer = optax.adam(learning_rate)

    def _step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(forward(p, x), y))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(_step, donate_argnums=(0, 1))

    def call(state):
        params, opt_state, loss = step(*state, x, y)
        return (params, opt_state), loss

    return jax_runner(call, (params, optimizer.init(params)), params)


def jnn_train(model, x, y, learning_rate: float) -> Runner:
    """jnn's own training step for ``model`` on one batch."""
    import jax
    import optax

    import jnn

    x, y = on_device(x, y)
    params = model.init(jax.random.key(0), x)
    optimizer = optax.adam(learning_rate)
    step = jnn.make_train_step(model, jnn.softmax_cross_entropy_with_integer_labels, optimizer)

    def call(state):
        params, opt_state, logs = step(*state, (x, y))
        return (params, opt_state), logs["loss"]

    return jax_runner(call, (params, optimizer.init(params)), params)


def equinox_train(model, x, y, learning_rate: float) -> Runner:
    """Equinox's documented step: a per-example model vmapped over the batch, filter_jit."""
    import equinox as eqx
    import jax
    import optax

    x, y = on_device(x, y)
    optimizer = optax.adam(learning_rate)

    @eqx.filter_jit(donate="all")
    def step(model, opt_state, x, y):
        def loss_fn(model):
            return cross_entropy(jax.vmap(model)(x), y)

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    def call(state):
        model, opt_state, loss = step(*state, x, y)
        return (model, opt_state), loss

    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    return jax_runner(call, (model, opt_state), eqx.filter(model, eqx.is_array))


def nnx_train(model, x, y, learning_rate: float) -> Runner:
    """Flax NNX's documented step: nnx.Optimizer updated in place under nnx.jit."""
    import optax
    from flax import nnx

    x, y = on_device(x, y)
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    def call(state):
        return state, step(model, optimizer, x, y)

    return jax_runner(call, (), nnx.state(model, nnx.Param))
