"""Timing machinery shared by every workload: runners, interleaved rounds, the matmul rate."""

from __future__ import annotations

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


def torch_runner(model, x, y, learning_rate: float) -> Runner:
    """A PyTorch training step: forward, cross-entropy, backward, Adam."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()

    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    count = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    one()
    first = time.perf_counter() - start

    def run(n: int) -> None:
        for _ in range(n):
            one()

    return Runner(run, count, first)


def matmul_gflops(sizes=(512, 1024, 2048), repeats: int = 20, dtype: str = "float32") -> float:
    """The machine's square-matmul rate under XLA: the best over sizes and repeats."""
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
            jax.block_until_ready(matmul(a))
            best = min(best, time.perf_counter() - start)
        rates.append(2 * size**3 / best / 1e9)
    return max(rates)


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


def interleaved_rounds(runners: dict[str, Runner], steps: int, rounds: int) -> dict[str, list]:
    """Seconds per step of each runner, over ``rounds`` rounds in rotating order."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            runners[name].run(steps)
            times[name].append((time.perf_counter() - start) / steps)
    return times


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
