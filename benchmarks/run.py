"""Training-step benchmarks: jnn beside hand-written JAX, PyTorch, Flax and Equinox.

Run from the repository root::

    pip install -e ".[benchmarks]"
    python -m benchmarks.run                     # everything installed, all workloads
    python -m benchmarks.run --impls jnn jax --quick

Implementations run in one process, interleaved round by round so machine drift
cancels; each figure is the median over rounds, with the min-max spread. Step times come
from ``--rounds`` timed blocks of steps; first-call (trace + compile + one step) times
from ``--compile-rounds`` fresh builds of each implementation, caches cleared before
each. Results go to
``benchmarks/results/<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from benchmarks import bidirectional, cnn, lstm, mlp, transformer
from benchmarks.harness import calibrate, first_call_rounds, interleaved_rounds, matmul_gflops

# name -> (module, builder keyword arguments); every builder takes ``batch``.
WORKLOADS = {
    "mlp-784-512-512-10-b256": (mlp, {"batch": 256, "sizes": (784, 512, 512, 10)}),
    "mlp-64-64-64-10-b32": (mlp, {"batch": 32, "sizes": (64, 64, 64, 10)}),
    "lenet-28x28x1-b128": (cnn, {"batch": 128}),
    "lstm-50x128-b64": (lstm, {"batch": 64}),
    "bigru-40x64-b128": (bidirectional, {"batch": 128}),
    "transformer-2x128-l64-b32": (transformer, {"batch": 32}),
}
LIBRARY_OF = {"flax.linen": "flax", "flax.nnx": "flax", "equinox": "equinox", "torch": "torch"}


def mlp_flops(batch: int, sizes: tuple[int, ...]) -> float:
    """Forward 2*b*m*n per layer; backward twice that (input and weight gradients)."""
    return 6.0 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def available(impl: str) -> bool:
    library = LIBRARY_OF.get(impl)
    return library is None or importlib.util.find_spec(library) is not None


def machine() -> dict:
    import jax

    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument(
        "--impls", nargs="*", default=["jnn", "jax", "flax.linen", "flax.nnx", "equinox", "torch"]
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--block-seconds", type=float, default=0.25)
    parser.add_argument(
        "--compile-rounds", type=int, default=5, help="fresh builds per implementation"
    )
    parser.add_argument("--quick", action="store_true", help="3 short rounds: checks it runs")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.block_seconds, args.compile_rounds = 3, 0.02, 1

    info = machine()
    info["matmul_gflops"] = matmul_gflops()
    print(f"machine: {info}", flush=True)
    results = {"machine": info, "workloads": {}}
    for workload in args.workloads:
        module, config = WORKLOADS[workload]
        batch = config["batch"]
        impls = [i for i in args.impls if i in module.IMPLEMENTATIONS and available(i)]
        skipped = sorted(set(args.impls) - set(impls))
        print(f"\n{workload}: {', '.join(impls)}" + (f" (skipped: {skipped})" if skipped else ""))
        # JAX pays one-time costs on first use of each primitive in a process; a throwaway
        # build of the reference first keeps them out of whichever implementation is first.
        module.IMPLEMENTATIONS["jax"](**config)
        runners = {impl: module.IMPLEMENTATIONS[impl](**config) for impl in impls}
        counts = {impl: r.param_count for impl, r in runners.items()}
        print(f"  parameters: {counts}")
        if len(set(counts.values())) != 1:
            print(f"  note: parameter counts differ (see the workload's docstring): {counts}")
        reference = "jax" if "jax" in runners else impls[0]
        steps = calibrate(runners[reference], args.block_seconds)
        times = interleaved_rounds(runners, steps, args.rounds)
        del runners  # free their buffers before the compile rounds
        builders = {
            impl: functools.partial(module.IMPLEMENTATIONS[impl], **config) for impl in impls
        }
        firsts = first_call_rounds(builders, args.compile_rounds)
        flops = mlp_flops(batch, config["sizes"]) if module is mlp else None
        rows = {}
        for impl, ts in times.items():
            median = statistics.median(ts)
            rows[impl] = {
                "step_ms": median * 1e3,
                "min_ms": min(ts) * 1e3,
                "max_ms": max(ts) * 1e3,
                "first_call_s": statistics.median(firsts[impl]),
                "first_call_min_s": min(firsts[impl]),
                "first_call_max_s": max(firsts[impl]),
                "samples_per_s": batch / median,
                "gflops": None if flops is None else flops / median / 1e9,
                "params": counts[impl],
            }
        ref = rows[reference]["step_ms"]
        ref_first = rows[reference]["first_call_s"]
        for row in rows.values():
            row["ratio_vs_jax"] = row["step_ms"] / ref
            row["first_call_ratio_vs_jax"] = row["first_call_s"] / ref_first
        results["workloads"][workload] = {"batch": batch, "steps_per_block": steps, "rows": rows}
        print(table(workload, results["workloads"][workload], info["matmul_gflops"]), flush=True)

    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / ("quick" if args.quick else info["backend"])
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    markdown = "\n\n".join(
        table(name, w, info["matmul_gflops"]) for name, w in results["workloads"].items()
    )
    command = " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])])
    header = f"Machine: {info}\n\nCommand: `{command}`\n\n"
    stem.with_suffix(".md").write_text(header + markdown + "\n")
    print(f"\nwrote {stem}.json and {stem}.md")
    return results


def table(name: str, workload: dict, peak: float) -> str:
    lines = [
        f"**{name}** (batch {workload['batch']}, {workload['steps_per_block']} steps per block)",
        "",
        "| implementation | params | step ms (median) | min-max ms | vs jax "
        "| first call s (min-max) "
        "| vs jax | samples/s | GFLOP/s (% of matmul) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for impl, r in workload["rows"].items():
        rate = (
            "-" if r["gflops"] is None else f"{r['gflops']:.1f} ({100 * r['gflops'] / peak:.0f}%)"
        )
        cells = [
            impl,
            f"{r['params']:,}",
            f"{r['step_ms']:.3f}",
            f"{r['min_ms']:.3f}-{r['max_ms']:.3f}",
            f"{r['ratio_vs_jax']:.3f}",
            f"{r['first_call_s']:.2f} ({r['first_call_min_s']:.2f}-{r['first_call_max_s']:.2f})",
            f"{r['first_call_ratio_vs_jax']:.2f}",
            f"{r['samples_per_s']:,.0f}",
            rate,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
