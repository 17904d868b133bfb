"""Which attention kernel a jnn language-model training step runs, per ``implementation``.

For each of ``implementation=None`` (JAX's choice), ``"xla"`` and, on an NVIDIA GPU,
``"cudnn"``, a ``jnn.TransformerLM`` under ``jnn.MixedPrecision(..., jnp.bfloat16)``
(a ``benchmarks.lm`` size with 2 blocks: the kernel does not depend on depth) is
compiled into the language-model workload's AdamW training step, and the optimized
HLO is read for the library calls XLA made: cuDNN's fused attention
(``__cudnn$fmha...``) forward and backward, cuBLAS GEMMs and any other custom calls.
Then a few steps are timed. Each implementation runs in its own subprocess with a time
limit, so one that hangs in compilation or autotuning (the issue saw a forced
``"cudnn"`` step unfinished after 95 s) is reported as such and the others still run.

Run from the repository root::

    python -m benchmarks.attention_kernels              # the sizes for the backend found
    python -m benchmarks.attention_kernels --size tiny --timeout 60

On a CPU there are no library kernels to find; the script checks that it runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import time

KERNEL_BLOCKS = 2  # the kernels do not depend on depth; fewer blocks compile faster


def _size(name: str):
    """``benchmarks.lm``'s size of that name, with ``KERNEL_BLOCKS`` blocks at most."""
    import dataclasses

    from benchmarks.lm import SIZES

    size = SIZES[name]
    return dataclasses.replace(size, layers=min(size.layers, KERNEL_BLOCKS))


def kernel_counts(hlo_text: str) -> dict[str, int]:
    """How many times each custom-call target appears in optimized HLO text."""
    return dict(collections.Counter(re.findall(r'custom_call_target="([^"]+)"', hlo_text)))


def attention_kernels(counts: dict[str, int]) -> dict[str, int]:
    """The fused-attention calls among ``counts`` (cuDNN's are named ``...fmha...``)."""
    return {k: n for k, n in counts.items() if "fmha" in k.lower() or "attention" in k.lower()}


def child(implementation: str | None, size: str, steps: int) -> dict:
    """Compile and time one training step; return what the HLO calls and how long it took."""
    import jax
    import jax.numpy as jnp
    import optax

    import jnn
    from benchmarks.lm import _optax_adamw, _tokens, jnn_model

    s = _size(size)
    model = jnn_model(s, implementation)
    tokens = jnp.asarray(_tokens(s.batch, s))
    optimizer = _optax_adamw()
    params = model.init(jax.random.key(0), tokens[:, :-1])
    opt_state = optimizer.init(params)

    def loss_fn(p):
        logits = model.apply(p, tokens[:, :-1])
        return jnn.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    def step(p, o):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
    compile_s = time.perf_counter() - start
    counts = kernel_counts(compiled.as_text())
    times = []
    for _ in range(steps + 1):  # the first run includes one-time set-up
        start = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    return {
        "implementation": implementation,
        "compile_s": compile_s,
        "step_ms": 1e3 * statistics.median(times[1:]),
        "loss": float(loss),
        "attention_kernels": attention_kernels(counts),
        "custom_calls": counts,
    }


def run_one(implementation: str | None, size: str, steps: int, timeout: float) -> dict:
    """``child`` in a fresh process, so that a hang or a crash is contained."""
    command = [sys.executable, "-m", "benchmarks.attention_kernels", "--child"]
    command += ["--implementation", str(implementation), "--size", size, "--steps", str(steps)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"implementation": implementation, "error": f"no result after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"implementation": implementation, "error": f"exit {done.returncode}: {last}"}
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| implementation | compile s | step ms | fused attention calls | other custom calls |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        name = repr(r["implementation"])
        if "error" in r:
            lines.append(f"| {name} | - | - | {r['error']} | - |")
            continue
        fused = ", ".join(f"{k} x{n}" for k, n in sorted(r["attention_kernels"].items())) or "none"
        others = {k: n for k, n in r["custom_calls"].items() if k not in r["attention_kernels"]}
        other = ", ".join(f"{k} x{n}" for k, n in sorted(others.items())) or "none"
        lines.append(f"| {name} | {r['compile_s']:.1f} | {r['step_ms']:.2f} | {fused} | {other} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["auto", "tiny", "gpt2-small"], default="auto")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per implementation")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--implementation", default="None", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        implementation = None if args.implementation == "None" else args.implementation
        print(json.dumps(child(implementation, args.size, args.steps)), flush=True)
        return []

    # The children share the device with this process: none may reserve most of it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    backend = jax.default_backend()
    size = args.size if args.size != "auto" else ("tiny" if backend == "cpu" else "gpt2-small")
    implementations = [None, "xla"] + (["cudnn"] if backend == "gpu" else [])
    print(f"backend {backend}, devices {jax.devices()}, size {size} {_size(size)}", flush=True)
    results = []
    for implementation in implementations:
        results.append(run_one(implementation, size, args.steps, args.timeout))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"backend": backend, "size": size, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
