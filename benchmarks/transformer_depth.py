"""Depth without compile-time growth: a deep TransformerLM unrolled, scanned, and remat.

Builds one ``jnn.TransformerLM`` (12 blocks of width 64 by default) in each layout:
the blocks unrolled (``block_0 ... block_11``), stacked in one ``jax.lax.scan``
(``scan_blocks=True``), and scanned with each block under ``jax.checkpoint``
(``remat=True``, and with the policy ``dots_with_no_batch_dims_saveable``). All start
from the same weights (``stack_blocks`` converts them). For each it measures the time
to trace and lower a jitted training step (next-token cross-entropy, gradients, Adam)
and, apart, for XLA to compile it, the step's median run time over interleaved rounds,
and the scratch memory XLA plans for the step, and prints them with their ratios to the
unrolled model. Run from the repository root::

    python -m benchmarks.transformer_depth              # 12 blocks, width 64, 5 rounds
    python -m benchmarks.transformer_depth --layers 48  # deeper
    python -m benchmarks.transformer_depth --quick      # 2 blocks of width 32, 3 layouts

Each layout's step is compiled once, in a fresh jit. Compile time on a CPU has a large
part that does not depend on depth (XLA compiles each distinct fused kernel once, and
the unrolled blocks share theirs), so tracing is where unrolling costs most there.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax

import jnn

LAYOUTS = {
    "unrolled": dict(),
    "scanned": dict(scan_blocks=True),
    "scanned + remat": dict(scan_blocks=True, remat=True),
    "scanned + remat(dots)": dict(
        scan_blocks=True, remat=jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=64, help="features of the model")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument(
        "--quick", action="store_true", help="2 blocks of width 32, 3 layouts, 1 round"
    )
    return parser


def make_step(model, optimizer):
    def loss(params, tokens):
        logits = model.apply(params, tokens[:, :-1])
        return jnn.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    def step(params, opt_state, tokens):
        value, grads = jax.value_and_grad(loss)(params, tokens)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    layouts = dict(LAYOUTS)
    if args.quick:
        args.layers, args.width, args.length, args.batch = 2, 32, 16, 4
        args.rounds, args.steps = 1, 2
        del layouts["scanned + remat(dots)"]
    key = jax.random.key(0)
    tokens = jax.random.randint(key, (args.batch, args.length + 1), 0, args.vocab)
    optimizer = optax.adam(1e-3)
    unrolled = jnn.TransformerLM(args.vocab, args.layers, args.width, args.heads)
    params = unrolled.init(key, tokens[:, :-1])
    count = sum(leaf.size for leaf in jax.tree.leaves(params))

    runs, compiled, losses = {}, {}, {}
    for name, options in layouts.items():
        model = jnn.TransformerLM(args.vocab, args.layers, args.width, args.heads, **options)
        p = unrolled.stack_blocks(params) if model.scan_blocks else params
        opt_state = optimizer.init(p)
        start = time.perf_counter()
        lowered = jax.jit(make_step(model, optimizer)).lower(p, opt_state, tokens)
        traced = time.perf_counter()
        step = lowered.compile()
        done = time.perf_counter()
        memory = step.memory_analysis()
        scratch = None if memory is None else memory.temp_size_in_bytes
        compiled[name] = {"trace_s": traced - start, "compile_s": done - traced}
        compiled[name]["scratch_bytes"] = scratch
        _, _, loss = step(p, opt_state, tokens)  # warm-up
        losses[name] = float(loss)
        runs[name] = (step, p, opt_state)

    names = list(layouts)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step, p, opt_state = runs[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                p, opt_state, loss = step(p, opt_state, tokens)
            jax.block_until_ready((p, loss))
            times[name].append((time.perf_counter() - start) / args.steps)

    base = {**compiled["unrolled"], "step_s": statistics.median(times["unrolled"])}

    def cell(value, what, scale, digits):
        if value is None:
            return "n/a | n/a"
        ratio = f"{value / base[what]:.2f}" if base[what] else "n/a"
        return f"{value * scale:.{digits}f} | {ratio}"

    print(
        f"TransformerLM: {args.layers} blocks, width {args.width}, {args.heads} heads, "
        f"{count:,} params; batch {args.batch} x {args.length} tokens; Adam training step; "
        f"{args.rounds} rounds of {args.steps} steps; {jax.devices()[0].platform}"
    )
    print(
        "| layout | trace s | vs unrolled | compile s | vs unrolled | step ms | vs unrolled "
        "| scratch MB | vs unrolled |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    result = {}
    for name in names:
        result[name] = {
            **compiled[name],
            "step_s": statistics.median(times[name]),
            "step_min_s": min(times[name]),
            "step_max_s": max(times[name]),
            "first_loss": losses[name],
        }
        r = result[name]
        cells = [
            cell(r["trace_s"], "trace_s", 1, 2),
            cell(r["compile_s"], "compile_s", 1, 2),
            cell(r["step_s"], "step_s", 1e3, 1),
            cell(r["scratch_bytes"], "scratch_bytes", 1e-6, 1),
        ]
        print(f"| {name} | {' | '.join(cells)} |")
    first = [r["first_loss"] for r in result.values()]
    print(f"first-step losses agree to {max(first) - min(first):.1e} (the same weights)")
    return result


if __name__ == "__main__":
    main()
