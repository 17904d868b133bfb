"""Training-loop benchmarks: ``jnn.fit`` in its two modes, beside the hand loop it replaces,
on a CNN (where a compiled loop can be the slower one), and on a population of runs.

Four sections, each timing its variants side by side in one process, in rounds of
rotating order; the tables give medians over rounds, the min-max spread, and ratios of
medians against the section's reference:

* ``modes``: MLP 64-64-64-10 on the digits (batch 32): ``fit`` one step per call (host
  mode) against a whole epoch per compiled call (device mode), ``"auto"`` (the default:
  device mode with adaptive chunks; also with its programs compiled by an earlier call)
  and ``"measure"`` (times both modes first), with the hand loop.
* ``hand``: logistic regression (one ``Dense(10)``) on the digits, many epochs of tiny
  steps: ``fit`` (host mode, and ``"auto"``) against the loop it replaces, a
  ``jnn.make_train_step`` called over a NumPy permutation's batches.
* ``cnn``: Conv(8, 3x3) -> relu -> max pool -> Dense(10) on the digits as 8x8x1 images:
  ``"auto"`` (host mode for a convolution on a CPU), ``"measure"``, host mode, device
  mode looping (``lax.fori_loop``) and unrolled.
* ``population``: 32 MLPs with different learning rates (``optax.inject_hyperparams``)
  trained as one ``fit(..., population=True)`` against 32 ``fit`` calls one after another
  (``--quick``: 4 members, 2 epochs).

Step times exclude compilation: a callback stamps the end of every epoch, and the steady
time per step is that of epochs 2..N. The time from calling ``fit`` to the end of its
first epoch is reported as the first call (tracing, compilation, ``"measure"``'s timing
of both modes, one epoch). ``fit`` keeps its compiled programs for later calls with the same
model, loss and optimizer object; every call here gets a new optimizer, so it compiles as
a process's first ``fit`` does, except where a row says otherwise. Run from the
repository root::

    python -m benchmarks.training            # all sections, 5 rounds (population: 3)
    python -m benchmarks.training --quick    # short runs, one round: checks it runs

Results go to ``benchmarks/results/training-<backend>.json`` and ``.md``
(``--quick``: ``quick.training.*``, which git ignores).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn

BATCH = 32
LEARNING_RATE = 1e-3
loss_fn = jnn.softmax_cross_entropy_with_integer_labels


def digits(images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1,797 examples), features scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x = x.reshape(-1, 8, 8, 1) if images else x
    return x, data.target.astype(np.int32)


class EpochClock(jnn.Callback):
    """Stamps ``time.perf_counter()`` after every epoch (``fit`` has fetched the epoch's
    logs by then, so the epoch's steps have run)."""

    def __init__(self):
        self.ends = []

    def on_epoch_end(self, epoch, logs, state):
        self.ends.append(time.perf_counter())


def record(start: float, ends: list[float], steps_per_epoch: int, **extra) -> dict:
    """One run's times from its epoch stamps: steady seconds per step (epochs 2..N), the
    time from the start to the end of the first epoch, and the whole run."""
    steady = (ends[-1] - ends[0]) / ((len(ends) - 1) * steps_per_epoch)
    return {"step_s": steady, "first_s": ends[0] - start, "total_s": ends[-1] - start, **extra}


def timed_fit(model, train_state, data, *, epochs: int, **kwargs) -> dict:
    """``jnn.fit`` with an epoch clock; the record also holds the mode ``fit`` chose.

    Without ``optimizer=`` every call gets a new ``optax.adam``, so that ``fit`` compiles
    its programs as on its first call in a process (it reuses them only for the same
    optimizer object)."""
    clock = EpochClock()
    optimizer = kwargs.pop("optimizer", optax.adam(LEARNING_RATE))
    start = time.perf_counter()
    result = jnn.fit(
        model,
        train_state,
        loss_fn,
        optimizer,
        data,
        epochs=epochs,
        batch_size=BATCH,
        callbacks=clock,
        progress=False,
        **kwargs,
    )
    steps = len(data[1]) // BATCH
    info = result.info
    return record(
        start,
        clock.ends,
        steps,
        mode=f"{info['mode']}, {info['steps_per_call']}/call",
        reason=info["reason"],
        loss=result.history["loss"][-1],
    )


def hand_loop(model, train_state, data, *, epochs: int, seed: int = 0) -> dict:
    """The loop ``fit`` replaces: a jitted step over each epoch's shuffled batches, and the
    epoch's last loss fetched at its end (as a loop that prints it does)."""
    x, y = data
    rng = np.random.default_rng(seed)
    steps = len(y) // BATCH
    start = time.perf_counter()
    step = jnn.make_train_step(model, loss_fn, optax.adam(LEARNING_RATE))
    state, ends = train_state, []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for i in range(steps):
            index = order[i * BATCH : (i + 1) * BATCH]
            state, logs = step(state, (x[index], y[index]))
        loss = float(logs["loss"])
        ends.append(time.perf_counter())
    return record(start, ends, steps, mode="make_train_step", reason="", loss=loss)


def rounds(variants: dict[str, Callable[[], dict]], count: int) -> dict[str, list[dict]]:
    """Run every variant ``count`` times, in a rotating order so that drift cancels."""
    names = list(variants)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(count):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out[name].append(variants[name]())
    return out


def summarize(runs: dict[str, list[dict]], reference: str) -> dict:
    """Medians, spreads and ratios of medians against ``reference``."""
    rows = {}
    for name, records in runs.items():
        step = [r["step_s"] for r in records]
        modes = collections.Counter(r["mode"] for r in records)
        rows[name] = {
            "mode": "; ".join(m if len(modes) == 1 else f"{m} ({c}x)" for m, c in modes.items()),
            "reasons": [r["reason"] for r in records],
            "step_us": statistics.median(step) * 1e6,
            "step_min_us": min(step) * 1e6,
            "step_max_us": max(step) * 1e6,
            "first_s": statistics.median(r["first_s"] for r in records),
            "total_s": statistics.median(r["total_s"] for r in records),
            "total_min_s": min(r["total_s"] for r in records),
            "total_max_s": max(r["total_s"] for r in records),
            "rounds": len(records),
            "step_us_each": [r["step_s"] * 1e6 for r in records],
            "first_s_each": [r["first_s"] for r in records],
            "total_s_each": [r["total_s"] for r in records],
        }
    for row in rows.values():
        row["step_ratio"] = row["step_us"] / rows[reference]["step_us"]
        row["total_ratio"] = row["total_s"] / rows[reference]["total_s"]
    return rows


def fresh(model, x) -> Callable[[], jnn.TrainState]:
    """A function returning a new train state each call (a donating loop consumes it)."""
    state = jnn.init_train_state(model, optax.adam(LEARNING_RATE), jax.random.key(0), x[:BATCH])
    return lambda: jax.tree.map(jnp.copy, state)


def section_modes(args) -> dict:
    x, y = digits()
    model = jnn.MLP([64, 64, 10])
    state = fresh(model, x)
    whole_epoch = len(y) // BATCH
    epochs = 5 if args.quick else 30

    def run(steps_per_call):
        return lambda: timed_fit(
            model, state(), (x, y), epochs=epochs, steps_per_call=steps_per_call
        )

    # fit keeps the compiled programs of a setup (model, loss, optimizer object, ...) for
    # the next call; this variant's optimizer is the same object every time, and one call
    # before the rounds compiles, so its first call shows what a repeated fit costs
    again = optax.adam(LEARNING_RATE)
    timed_fit(model, state(), (x, y), epochs=2, optimizer=again)
    variants = {
        "fit, steps_per_call=1 (host)": run(1),
        f"fit, steps_per_call={whole_epoch} (device)": run(whole_epoch),
        'fit, steps_per_call="auto"': run("auto"),
        'fit, steps_per_call="measure"': run("measure"),
        'fit, "auto", compiled before': lambda: timed_fit(
            model, state(), (x, y), epochs=epochs, optimizer=again
        ),
        "hand loop (make_train_step)": lambda: hand_loop(model, state(), (x, y), epochs=epochs),
    }
    rows = summarize(rounds(variants, args.rounds), "fit, steps_per_call=1 (host)")
    return {
        "title": f"MLP 64-64-64-10 on the digits, batch {BATCH}, {epochs} epochs "
        f"of {whole_epoch} steps",
        "reference": "fit, steps_per_call=1 (host)",
        "target": "device mode at most 0.5x the seconds per step of host mode, and fit's "
        "default at most 1.05x the hand loop's",
        "met": rows[f"fit, steps_per_call={whole_epoch} (device)"]["step_ratio"] <= 0.5
        and rows['fit, steps_per_call="auto"']["step_ratio"]
        <= 1.05 * rows["hand loop (make_train_step)"]["step_ratio"],
        "rows": rows,
    }


def section_hand(args) -> dict:
    x, y = digits()
    model = jnn.Dense(10)
    state = fresh(model, x)
    epochs = 15 if args.quick else 150
    variants = {
        "hand loop (make_train_step)": lambda: hand_loop(model, state(), (x, y), epochs=epochs),
        "fit, steps_per_call=1 (host)": lambda: timed_fit(
            model, state(), (x, y), epochs=epochs, steps_per_call=1
        ),
        'fit, steps_per_call="auto"': lambda: timed_fit(
            model, state(), (x, y), epochs=epochs, steps_per_call="auto"
        ),
    }
    rows = summarize(rounds(variants, args.rounds), "hand loop (make_train_step)")
    return {
        "title": f"Logistic regression (Dense(10)) on the digits, batch {BATCH}, {epochs} "
        f"epochs of {len(y) // BATCH} steps",
        "reference": "hand loop (make_train_step)",
        "target": "fit's default at most 1.05x the hand loop in total time, compilation "
        "included (host mode's ratio is shown, not a target)",
        "met": rows['fit, steps_per_call="auto"']["total_ratio"] <= 1.05,
        "rows": rows,
    }


def section_cnn(args) -> dict:
    x, y = digits(images=True)
    model = jnn.Sequential(
        [jnn.Conv(8, (3, 3)), jnn.relu, jnn.MaxPool((2, 2)), jnn.Flatten(), jnn.Dense(10)]
    )
    state = fresh(model, x)
    epochs = 3 if args.quick else 15
    chunk = 2 if args.quick else 8  # an unrolled call compiles in time that grows with it

    def run(**kwargs):
        return lambda: timed_fit(model, state(), (x, y), epochs=epochs, **kwargs)

    variants = {
        "fit, steps_per_call=1 (host)": run(steps_per_call=1),
        'fit, steps_per_call="auto"': run(steps_per_call="auto"),
        'fit, steps_per_call="measure"': run(steps_per_call="measure"),
        f"fit, steps_per_call={chunk} (device, loop)": run(steps_per_call=chunk),
        f"fit, steps_per_call={chunk}, unroll=True": run(steps_per_call=chunk, unroll=True),
    }
    rows = summarize(rounds(variants, args.rounds), "fit, steps_per_call=1 (host)")
    return {
        "title": f"CNN Conv(8, 3x3)-relu-MaxPool(2)-Dense(10) on 8x8x1 digits, batch {BATCH}, "
        f"{epochs} epochs of {len(y) // BATCH} steps",
        "reference": "fit, steps_per_call=1 (host)",
        "target": '"auto" no slower than host mode (ratio at most 1.0, within noise)',
        "met": rows['fit, steps_per_call="auto"']["step_ratio"] <= 1.0,
        "rows": rows,
    }


def section_population(args) -> dict:
    x, y = digits()
    model = jnn.MLP([64, 64, 10])
    members, epochs = (4, 2) if args.quick else (32, 20)
    steps = len(y) // BATCH

    def make_optimizer():
        return optax.inject_hyperparams(optax.adam)(learning_rate=LEARNING_RATE)

    optimizer = make_optimizer()
    keys = jax.random.split(jax.random.key(0), members)
    population = jax.vmap(lambda k: jnn.init_train_state(model, optimizer, k, x[:BATCH]))(keys)
    hyperparams = dict(population.opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.geomspace(1e-4, 1e-2, members, dtype=jnp.float32)
    population = population._replace(
        opt_state=population.opt_state._replace(hyperparams=hyperparams)
    )
    final_losses: dict[str, list] = {}
    # both in device mode, a whole epoch per call: "auto" would time both modes in each
    # of the runs one by one, a cost of the choice rather than of training
    same = dict(epochs=epochs, steps_per_call=steps)

    def together():
        state = jax.tree.map(jnp.copy, population)
        out = timed_fit(model, state, (x, y), population=True, optimizer=make_optimizer(), **same)
        final_losses["population"] = out.pop("loss")
        return out

    def one_by_one():
        # one optimizer for all members, as a loop over runs has: fit compiles for the
        # first and reuses its programs for the others
        start, runs, optimizer = time.perf_counter(), [], make_optimizer()
        for i in range(members):
            member = jax.tree.map(lambda a, i=i: a[i], population)
            runs.append(timed_fit(model, member, (x, y), optimizer=optimizer, **same))
        final_losses["sequential"] = [r.pop("loss") for r in runs]
        # the members' steps one after another: per step of all members, as one
        # population step trains every member
        return {
            "step_s": sum(r["step_s"] for r in runs),
            "first_s": runs[0]["first_s"],
            "total_s": time.perf_counter() - start,
            "mode": runs[0]["mode"],
            "reason": runs[0]["reason"],
        }

    variants = {f"{members} fit calls, one by one": one_by_one, "fit(population=True)": together}
    rows = summarize(rounds(variants, args.rounds_population), f"{members} fit calls, one by one")
    difference = float(
        np.max(np.abs(np.subtract(final_losses["population"], final_losses["sequential"])))
    )
    return {
        "title": f"{members} MLPs 64-64-64-10 (learning rates 1e-4..1e-2), batch {BATCH}, "
        f"{epochs} epochs of {steps} steps; step = one step of every member; "
        f"largest difference of a member's final loss: {difference:.2g}",
        "reference": f"{members} fit calls, one by one",
        "target": "population in less total time than the runs one by one",
        "met": rows["fit(population=True)"]["total_ratio"] < 1.0,
        "rows": rows,
        "final_loss_difference": difference,
    }


SECTIONS = {
    "modes": section_modes,
    "hand": section_hand,
    "cnn": section_cnn,
    "population": section_population,
}


def table(section: dict) -> str:
    lines = [
        f"**{section['title']}**",
        "",
        "| variant | mode | µs/step (median) | min-max µs | step ratio | first call s "
        "| total s (min-max) | total ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in section["rows"].items():
        cells = [
            name,
            r["mode"],
            f"{r['step_us']:.1f}",
            f"{r['step_min_us']:.1f}-{r['step_max_us']:.1f}",
            f"{r['step_ratio']:.3f}",
            f"{r['first_s']:.2f}",
            f"{r['total_s']:.2f} ({r['total_min_s']:.2f}-{r['total_max_s']:.2f})",
            f"{r['total_ratio']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    met = "met" if section["met"] else "NOT met"
    lines += ["", f"Target: {section['target']}: {met}. Ratios are against {section['reference']}."]
    return "\n".join(lines)


def commit() -> str | None:
    """The repository's commit, marked ``+changes`` when jnn/ differs from it."""
    root = Path(__file__).parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "jnn"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:  # no git
        return None
    return (head + ("+changes" if changed else "")) or None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rounds-population", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="short runs, one round")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.rounds_population = 1, 1

    from benchmarks.harness import matmul_gflops
    from benchmarks.run import machine

    info = machine()
    info["matmul_gflops"] = matmul_gflops(sizes=(512, 1024), repeats=10)  # the machine's load
    info["commit"] = commit()
    print(f"machine: {info}", flush=True)
    # one-time costs of a process's first use of JAX, kept out of the first variant
    x, y = digits()
    timed_fit(jnn.Dense(10), fresh(jnn.Dense(10), x)(), (x[:256], y[:256]), epochs=2)
    results = {"machine": info, "sections": {}}
    for name in args.sections:
        start = time.perf_counter()
        section = SECTIONS[name](args)
        section["seconds"] = time.perf_counter() - start
        results["sections"][name] = section
        print(f"\n{table(section)}\n({name}: {section['seconds']:.0f} s)", flush=True)

    args.output.mkdir(parents=True, exist_ok=True)
    stem = args.output / ("quick.training" if args.quick else f"training-{info['backend']}")
    Path(f"{stem}.json").write_text(json.dumps(results, indent=2))
    command = " ".join(["python -m benchmarks.training", *(argv or sys.argv[1:])])
    markdown = "\n\n".join(table(s) for s in results["sections"].values())
    Path(f"{stem}.md").write_text(f"Machine: {info}\n\nCommand: `{command}`\n\n{markdown}\n")
    print(f"\nwrote {stem}.json and {stem}.md")
    return results


if __name__ == "__main__":
    main()
