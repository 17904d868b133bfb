"""Training-step benchmarks: jnn beside hand-written JAX, PyTorch, Flax and Equinox.

Run from the repository root::

    pip install -e ".[benchmarks]"
    python -m benchmarks.run                     # everything installed, six workloads
    python -m benchmarks.run --impls jnn jax --quick
    python -m benchmarks.run --workloads lm      # the language model: jnn, jax, torch

Every implementation runs on the accelerator it finds: JAX's default device, and for
PyTorch the first CUDA GPU when it sees one (else the CPU). Implementations run in one
process, interleaved round by round so machine drift cancels; each figure is the median
over rounds, with the min-max spread. Step times come from timed blocks of steps, sized by
a calibration to last about ``--block-seconds``; first-call (trace + compile + one step)
times from fresh builds of each implementation, caches cleared before each. With a time
budget (``--budget-seconds``, on by default on an accelerator) the numbers of rounds and
of fresh builds are cut to fit it, never below three timed rounds. Results go to
``--output``/``<backend>.json`` and ``.md`` (``<backend>-lm`` for the language model
alone, ``quick`` with ``--quick``), rewritten after each workload.
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
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import bidirectional, cnn, lm, lstm, mlp, transformer
from benchmarks.harness import (
    calibrate,
    describe_torch_device,
    device_matmul_gflops,
    first_call_rounds,
    interleaved_rounds,
    plan_rounds,
)

# name -> (module, builder keyword arguments); every builder takes ``batch``. The
# language model's keyword arguments depend on --lm-size, so they are set in ``resolve``.
WORKLOADS = {
    "mlp-784-512-512-10-b256": (mlp, {"batch": 256, "sizes": (784, 512, 512, 10)}),
    "mlp-64-64-64-10-b32": (mlp, {"batch": 32, "sizes": (64, 64, 64, 10)}),
    "lenet-28x28x1-b128": (cnn, {"batch": 128}),
    "lstm-50x128-b64": (lstm, {"batch": 64}),
    "bigru-40x64-b128": (bidirectional, {"batch": 128}),
    "transformer-2x128-l64-b32": (transformer, {"batch": 32}),
    "lm": (lm, None),
}
DEFAULT_WORKLOADS = [name for name in WORKLOADS if name != "lm"]
LIBRARY_OF = {"flax.linen": "flax", "flax.nnx": "flax", "equinox": "equinox", "torch": "torch"}
# Defaults by backend. On an accelerator the six default workloads end in about two
# minutes: compilation is most of it, and the budget trims the rounds around it.
DEFAULTS = {
    "cpu": {"rounds": 9, "block_seconds": 0.25, "compile_rounds": 5, "budget_seconds": 0.0},
    "accelerator": {
        "rounds": 9,
        "block_seconds": 0.1,
        "compile_rounds": 3,
        "budget_seconds": 90.0,
    },
}
QUICK = {"rounds": 3, "block_seconds": 0.02, "compile_rounds": 1}


def mlp_flops(batch: int, sizes: tuple[int, ...]) -> float:
    """Forward 2*b*m*n per layer; backward twice that (input and weight gradients)."""
    return 6.0 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def resolve(name: str, lm_size: str) -> tuple[str, object, dict]:
    """``(display name, module, builder keyword arguments)`` of a workload."""
    module, config = WORKLOADS[name]
    if module is lm:
        size = lm.SIZES[lm_size]
        config = {"batch": size.batch, "size": lm_size}
        name = f"lm-{lm_size}-l{size.length}-b{size.batch}"
    return name, module, config


def workload_flops(module, config: dict) -> tuple[float | None, str]:
    """FLOPs of one step and the dtype of the matmul rate they are compared with."""
    if module is mlp:
        return mlp_flops(config["batch"], config["sizes"]), "float32"
    if module is lm:
        return lm.model_flops(**config), "bfloat16"
    return None, "float32"


def available(impl: str) -> bool:
    library = LIBRARY_OF.get(impl)
    return library is None or importlib.util.find_spec(library) is not None


def machine(impls: Sequence[str] = ()) -> dict:
    """Versions and devices; PyTorch's too when ``impls`` includes it."""
    import jax

    device = jax.devices()[0]
    info = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if "torch" in impls and available("torch"):
        import torch

        info["torch"] = torch.__version__
        info["torch_device"] = describe_torch_device()
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", nargs="*", default=DEFAULT_WORKLOADS, choices=list(WORKLOADS)
    )
    parser.add_argument(
        "--impls", nargs="*", default=["jnn", "jax", "flax.linen", "flax.nnx", "equinox", "torch"]
    )
    parser.add_argument("--rounds", type=int, help="timed rounds (default: 9)")
    parser.add_argument(
        "--block-seconds", type=float, help="length of a timed block (CPU 0.25, else 0.1)"
    )
    parser.add_argument(
        "--compile-rounds", type=int, help="fresh builds per implementation (CPU 5, else 3)"
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        help="time for the whole run, rounds and builds cut to fit; 0: none "
        "(default: none on a CPU, 90 on an accelerator)",
    )
    parser.add_argument(
        "--lm-size",
        default="auto",
        choices=["auto", *lm.SIZES],
        help="the language model's size (auto: gpt2-small on an accelerator, tiny on a CPU)",
    )
    parser.add_argument("--quick", action="store_true", help="3 short rounds: checks it runs")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if "torch" in args.impls:
        # JAX would otherwise reserve 75% of a GPU's memory at start, leaving PyTorch less.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    info = machine(args.impls)
    kind = "cpu" if info["backend"] == "cpu" else "accelerator"
    for field, value in {**DEFAULTS[kind], **(QUICK if args.quick else {})}.items():
        if getattr(args, field) is None:
            setattr(args, field, value)
    if args.lm_size == "auto":
        args.lm_size = "tiny" if kind == "cpu" else "gpt2-small"
    start = time.perf_counter()
    budget = args.budget_seconds or None
    info["matmul_gflops"] = device_matmul_gflops("float32")
    if "lm" in args.workloads:
        info["matmul_bf16_gflops"] = device_matmul_gflops("bfloat16")
    print(f"machine: {info}", flush=True)
    settings = {k: getattr(args, k) for k in ("rounds", "block_seconds", "compile_rounds")}
    settings |= {"budget_seconds": budget, "lm_size": args.lm_size}
    results = {"machine": info, "settings": settings, "workloads": {}}
    stem = "quick" if args.quick else info["backend"]
    if set(args.workloads) == {"lm"}:
        stem += "-lm"
    for i, key in enumerate(args.workloads):
        name, module, config = resolve(key, args.lm_size)
        impls = [impl for impl in args.impls if impl in module.IMPLEMENTATIONS and available(impl)]
        skipped = sorted(set(args.impls) - set(impls))
        print(f"\n{name}: {', '.join(impls)}" + (f" (skipped: {skipped})" if skipped else ""))
        if not impls:
            continue
        seconds = None
        if budget is not None:  # an even share of what is left
            seconds = (budget - (time.perf_counter() - start)) / (len(args.workloads) - i)
        result = run_workload(module, config, impls, args, seconds)
        results["workloads"][name] = result
        print(table(name, result, info), flush=True)
        write(results, args.output / stem, argv)
    write(results, args.output / stem, argv)
    print(f"\nwrote {args.output / stem}.json and .md ({time.perf_counter() - start:.0f} s)")
    return results


def run_workload(module, config: dict, impls: list[str], args, seconds: float | None) -> dict:
    """Build, calibrate, time and (as far as ``seconds`` allows) rebuild one workload."""
    start = time.perf_counter()
    if module is not lm:
        # JAX pays one-time costs on first use of each primitive in a process; a throwaway
        # build of the reference first keeps them out of whichever implementation is first.
        # (The language model's compilation dwarfs them.)
        module.IMPLEMENTATIONS["jax"](**config)
    builders = {impl: functools.partial(module.IMPLEMENTATIONS[impl], **config) for impl in impls}
    began = time.perf_counter()
    runners = {impl: build() for impl, build in builders.items()}
    build_seconds = time.perf_counter() - began
    counts = {impl: r.param_count for impl, r in runners.items()}
    print(f"  parameters: {counts}")
    if len(set(counts.values())) != 1:
        print(f"  note: parameter counts differ (see the workload's docstring): {counts}")
    reference = "jax" if "jax" in runners else impls[0]
    steps = calibrate(runners[reference], args.block_seconds)
    began = time.perf_counter()
    times = interleaved_rounds(runners, steps, 1)
    round_seconds = time.perf_counter() - began
    left = None if seconds is None else seconds - (time.perf_counter() - start)
    rounds, builds = plan_rounds(
        left, round_seconds, build_seconds, max(1, args.rounds), args.compile_rounds
    )
    print(
        f"  {rounds} rounds of {steps} steps, {builds} fresh builds per implementation"
        + ("" if left is None else f" ({left:.0f} s of its budget left after the builds)"),
        flush=True,
    )
    for impl, ts in interleaved_rounds(runners, steps, rounds - 1, start=1).items():
        times[impl] += ts
    initial = {impl: [r.first_call] for impl, r in runners.items()}
    del runners  # free their buffers before the fresh builds
    firsts = first_call_rounds(builders, builds) if builds else initial

    batch = config["batch"]
    flops, dtype = workload_flops(module, config)
    tokens = batch * lm.SIZES[config["size"]].length if module is lm else None
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
        if tokens is not None:
            rows[impl]["tokens_per_s"] = tokens / median
    ref = rows[reference]["step_ms"]
    ref_first = rows[reference]["first_call_s"]
    for row in rows.values():
        row["ratio_vs_jax"] = row["step_ms"] / ref
        row["first_call_ratio_vs_jax"] = row["first_call_s"] / ref_first
    return {
        "batch": batch,
        "steps_per_block": steps,
        "rounds": rounds,
        "fresh_builds": builds,
        "flops_per_step": flops,
        "matmul_dtype": dtype,
        "tokens_per_step": tokens,
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }


def write(results: dict, stem: Path, argv) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    markdown = "\n\n".join(
        table(name, w, results["machine"]) for name, w in results["workloads"].items()
    )
    command = " ".join(["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)])
    header = f"Machine: {results['machine']}\n\nCommand: `{command}`\n\n"
    stem.with_suffix(".md").write_text(header + markdown + "\n")


def table(name: str, workload: dict, info: dict) -> str:
    """The workload's Markdown table; FLOP rates against the matmul rate of their dtype."""
    lm_table = workload.get("tokens_per_step") is not None
    if workload.get("matmul_dtype") == "bfloat16":
        peak, scale, rate = info.get("matmul_bf16_gflops"), 1e-3, "model TFLOP/s (% of bf16 matmul)"
    else:
        peak, scale, rate = info["matmul_gflops"], 1.0, "GFLOP/s (% of matmul)"
    builds = workload.get("fresh_builds")
    lines = [
        f"**{name}** (batch {workload['batch']}, {workload['steps_per_block']} steps per block"
        + ("" if builds is None else f", {workload['rounds']} rounds, {builds} fresh builds")
        + ")",
        "",
        "| implementation | params | step ms (median) | min-max ms | vs jax "
        "| first call s (min-max) "
        f"| vs jax | {'tokens' if lm_table else 'samples'}/s | {rate} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for impl, r in workload["rows"].items():
        cell = "-"
        if r["gflops"] is not None:
            share = f" ({100 * r['gflops'] / peak:.0f}%)" if peak else ""
            value = r["gflops"] * scale
            cell = f"{value:.1f}{share}" if value >= 10 else f"{value:.3g}{share}"
        cells = [
            impl,
            f"{r['params']:,}",
            f"{r['step_ms']:.3f}",
            f"{r['min_ms']:.3f}-{r['max_ms']:.3f}",
            f"{r['ratio_vs_jax']:.3f}",
            f"{r['first_call_s']:.2f} ({r['first_call_min_s']:.2f}-{r['first_call_max_s']:.2f})",
            f"{r['first_call_ratio_vs_jax']:.2f}",
            f"{r['tokens_per_s' if lm_table else 'samples_per_s']:,.0f}",
            cell,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if builds == 0:
        lines += [
            "",
            "First calls from the one build of each implementation (caches not cleared "
            "between them): the budget left no time for fresh builds.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
