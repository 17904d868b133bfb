"""Train one transformer language model on every device there is, four ways, and compare.

Data: ``examples/data/jnn_text.txt`` (about 97,000 characters of this project's prose, as
in ``char_transformer.py``), cut into random windows; the last tenth is held out.

Devices: whatever JAX finds: the GPUs of a machine, a TPU's cores, or, on a CPU,
``--cpu-devices`` virtual devices (default 8), which this script asks XLA for before JAX
starts (``--xla_force_host_platform_device_count``). Virtual CPU devices share the CPU's
cores, so they show layouts, memory and equal results, not speed.

The same ``jnn.TransformerLM`` trains from the same train state with ``jnn.fit`` in each
layout:

* **one device**: no mesh, the reference;
* **data parallel**: ``mesh=jnn.make_mesh((n,), ("data",))``; the state replicated, each
  batch split n ways, gradients all-reduced by XLA;
* **fully sharded** (FSDP, ZeRO-3): the same mesh, the state placed with
  ``jnn.fully_sharded``, so each device holds 1/n of the params and of adam's moments;
* **data + tensor parallel**: an ``(n / m, m)`` mesh of ``("data", "model")`` axes, the
  state placed with ``jnn.shard(state, mesh, jnn.tensor_parallel_rules())``: attention
  heads and MLP hidden units split m ways, batches split n / m ways.

Each layout trains two epochs of ``--steps / 2`` steps; the second is timed, so
compilation is not counted. For each it prints the bytes of train state one device
holds, the milliseconds per step, the held-out loss, and the largest difference of the
final params from the one-device run. The layouts change only the order of
floating-point sums, so the losses agree to about 1e-6 (the run fails if any differs by
more than 1e-4, relatively). It writes no files.

Run:  python examples/data_parallel.py                   (8 virtual CPU devices on a CPU)
      python examples/data_parallel.py --cpu-devices 4 --model-axis 2
      python examples/data_parallel.py --smoke           (2 steps of a tiny model, for CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "jnn_text.txt"
TOLERANCE = 1e-4  # the largest relative difference of a held-out loss from one device's


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--steps", type=int, default=60, help="training steps in each layout (two epochs)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="windows per step")
    parser.add_argument("--context", type=int, default=64, help="characters per window")
    parser.add_argument("--features", type=int, default=128, help="width of the model")
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="adam's step size")
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=8,
        help="on a CPU, the virtual devices to split it into (ignored on GPUs and TPUs, "
        "and when JAX has already started)",
    )
    parser.add_argument(
        "--model-axis",
        type=int,
        default=None,
        help="devices along the 'model' axis of the data + tensor parallel mesh (default: "
        "the largest of 4, 2 that divides the device count and the heads)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and the data")
    parser.add_argument("--smoke", action="store_true", help="2 steps of a tiny model (CI)")
    return parser


def request_cpu_devices(count: int) -> None:
    """Ask XLA for ``count`` virtual CPU devices; only takes effect before JAX starts."""
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"


def load_windows(context: int, count: int, seed: int):
    """``count`` random training windows and the held-out windows, as (inputs, targets)."""
    text = DATA.read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    ids = np.array([alphabet.index(c) for c in text], np.int32)
    split = len(ids) * 9 // 10
    rng = np.random.default_rng(seed)

    def windows(part, starts):
        chunks = part[starts[:, None] + np.arange(context + 1)]
        return chunks[:, :-1], chunks[:, 1:]

    train = windows(ids[:split], rng.integers(0, split - context - 1, count))
    test_part = ids[split:]
    test = windows(test_part, np.arange(0, len(test_part) - context - 1, context))
    return train, test, len(alphabet)


def timed_epochs():
    """A ``fit`` callback that records the time each epoch ends."""
    times = [time.perf_counter()]

    def record(epoch, logs, train_state):
        del epoch, logs, train_state
        times.append(time.perf_counter())

    return record, times


def state_bytes_per_device(state) -> int:
    """Bytes of the train state that the first device holds."""
    import jax

    device = jax.devices()[0]
    total = 0
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            if shard.device == device:
                total += shard.data.nbytes
    return total


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)  # --help exits here, before JAX loads
    if args.smoke:
        args.steps, args.features, args.layers, args.heads = 2, 16, 1, 4
        args.batch_size, args.context = 8, 8
    request_cpu_devices(args.cpu_devices)
    import jax
    import optax

    import jnn

    n = jax.device_count()
    model_axis = args.model_axis or next(
        (m for m in (4, 2) if n % m == 0 and args.heads % m == 0 and n > m), 1
    )
    if args.batch_size % n or n % model_axis:
        sys.exit(f"--batch-size must be a multiple of the {n} devices, and --model-axis divide it")
    print(f"{n} {jax.devices()[0].platform.upper()} devices")
    steps = max(2, args.steps - args.steps % 2)
    train, test, vocab = load_windows(args.context, steps // 2 * args.batch_size, args.seed)
    if args.smoke:
        test = (test[0][:16], test[1][:16])
    model = jnn.TransformerLM(
        vocab_size=vocab,
        num_layers=args.layers,
        features=args.features,
        num_heads=args.heads,
        max_length=args.context,
    )
    optimizer = optax.adam(args.learning_rate)
    state = jnn.init_train_state(model, optimizer, jax.random.key(args.seed), train[0][:1])
    params = sum(p.size for p in jax.tree.leaves(state.params))
    print(f"{params:,} parameters; {steps} steps of {args.batch_size} windows")

    data = jnn.make_mesh((n,), ("data",))
    grid = jnn.make_mesh((n // model_axis, model_axis), ("data", "model"))
    layouts = {
        "one device": (state, None),
        "data parallel": (state, data),
        "fully sharded": (jnn.fully_sharded(state, data), data),
        f"data {n // model_axis} x tensor {model_axis}": (
            jnn.shard(state, grid, jnn.tensor_parallel_rules("model")),
            grid,
        ),
    }
    loss = jnn.softmax_cross_entropy_with_integer_labels
    results = {}
    header = f"{'layout':<24}{'state per device':>18}{'ms/step':>10}{'held-out loss':>15}"
    print(f"{header}  params vs one device")
    for label, (start, mesh) in layouts.items():
        record, times = timed_epochs()
        result = jnn.fit(
            model,
            start,
            loss,
            optimizer,
            train,
            epochs=2,
            batch_size=args.batch_size,
            progress=False,
            mesh=mesh,
            callbacks=record,
        )
        held_out = jnn.evaluate(model, result.params, test, loss_fn=loss)["loss"]
        reference = results.get("one device")
        difference = 0.0
        if reference is not None:
            differences = jax.tree.map(
                lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                result.params,
                reference["params"],
            )
            difference = max(jax.tree.leaves(differences))
        results[label] = {
            "bytes": state_bytes_per_device(result.train_state),
            "ms_per_step": 1e3 * (times[2] - times[1]) / (steps // 2),
            "eval_loss": held_out,
            "max_param_diff": difference,
            "params": result.params,
        }
        row = results[label]
        print(
            f"{label:<24}{row['bytes'] / 2**20:>14.2f} MiB{row['ms_per_step']:>10.0f}"
            f"{row['eval_loss']:>15.6f}  {difference:.1e}"
        )
    one = results["one device"]["eval_loss"]
    worst = max(abs(r["eval_loss"] / one - 1) for r in results.values())
    print(f"largest relative difference of a held-out loss from one device's: {worst:.1e}")
    if jax.devices()[0].platform == "cpu":
        print("(virtual CPU devices share the same cores: their times are not a speed-up)")
    if worst > TOLERANCE:
        sys.exit(1)
    for row in results.values():
        del row["params"]
    return {"devices": n, "model_axis": model_axis, "layouts": results, "worst": worst}


if __name__ == "__main__":
    main()
