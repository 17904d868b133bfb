"""Checkpoint cost: jnn's safetensors files beside orbax-checkpoint, on one train state.

Saves and restores the ``TrainState`` of an MLP after an Adam update (params, both
Adam moments, step and key: three floats per parameter) with ``jnn.save_checkpoint`` /
``jnn.load_checkpoint`` and, when it is installed, with orbax-checkpoint's
``StandardCheckpointer``, interleaved round by round, and prints the median of each with
the min-max spread. Also prints each library's import time (in a fresh interpreter, after
``import jax``) and the installed size of what each adds to jnn's own dependencies.
Run from the repository root::

    pip install orbax-checkpoint               # optional: not a jnn dependency
    python -m benchmarks.checkpoint            # a 25M-parameter state, 5 rounds
    python -m benchmarks.checkpoint --quick    # a 1M-parameter state, 2 rounds

Each save writes to a new path, as a training run does. jnn's save returns only once the
file is on disk (written, ``fsync``-ed and renamed); orbax's ``save`` returns earlier and
finishes writing in background threads, so its table gives both the time until ``save``
returns ("blocking") and until ``wait_until_finished`` does ("total"). Restores return
arrays on the device and are waited for.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import jnn
from jnn._checkpoint import load_checkpoint, save_checkpoint


def trained_state(sizes: list[int]):
    """The state after one Adam update on random gradients: moments that are not zeros,
    which a compressing format would shrink to nothing."""
    optimizer = optax.adam(1e-3)
    model = jnn.MLP(sizes[1:])
    state = jnn.init_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, sizes[0])))
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noise = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    grads = jax.tree.unflatten(treedef, noise)
    updates, opt_state = jax.jit(optimizer.update)(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1)


def directory_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def jnn_runner(state, like, root: Path) -> dict:
    """Callables ``save(i) -> path`` and ``restore(path) -> tree`` for jnn."""

    def save(i):
        path = root / f"jnn_{i}.safetensors"
        save_checkpoint(path, state)
        return path

    def restore(path):
        return jax.block_until_ready(load_checkpoint(path, like))

    return {"save": save, "restore": restore}


def orbax_runner(state, root: Path) -> dict:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    like = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

    def save(i, times=None):
        path = root / f"orbax_{i}"
        start = time.perf_counter()
        checkpointer.save(path, state)
        if times is not None:
            times.append(time.perf_counter() - start)
        checkpointer.wait_until_finished()
        return path

    def restore(path):
        return jax.block_until_ready(checkpointer.restore(path, like))

    return {"save": save, "restore": restore}


def import_seconds(module: str, repeats: int) -> float:
    """The best time of ``import module`` in a fresh interpreter that has imported jax."""
    code = (
        "import time, jax; start = time.perf_counter(); "
        f"import {module}; print(time.perf_counter() - start)"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    best = float("inf")
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        best = min(best, float(out.stdout.strip().splitlines()[-1]))
    return best


def _closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` need, themselves included (extras left out)."""
    seen: set[str] = set()
    todo = [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            todo.append(re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower().replace("_", "-"))
    return seen


def added_weight(package: str) -> tuple[list[str], float]:
    """The distributions ``package`` adds to jnn's other dependencies, and their MB."""
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    base = [
        re.match(r"[A-Za-z0-9_.-]+", r).group()
        for r in pyproject["project"]["dependencies"]
        if not r.startswith("safetensors")
    ]
    added = sorted(_closure([package]) - _closure(base))
    size = 0
    for name in added:
        for file in importlib.metadata.distribution(name).files or []:
            size += file.size or 0
    return added, size / 1e6


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 4096, 1024])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="a 1M-parameter state, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds = [256, 1024, 512, 256], 2
    state = trained_state(args.sizes)
    count = sum(leaf.size for leaf in jax.tree.leaves(state.params))
    megabytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state) if hasattr(leaf, "nbytes"))
    like = jax.eval_shape(lambda: state)
    root = Path(tempfile.mkdtemp(prefix="jnn-checkpoint-bench-", dir=args.dir))
    runners = {"jnn (safetensors)": jnn_runner(state, like, root)}
    if importlib.util.find_spec("orbax") and importlib.util.find_spec("orbax.checkpoint"):
        runners["orbax-checkpoint"] = orbax_runner(state, root)
    names = list(runners)
    saves = {name: [] for name in names}
    blocking: list[float] = []
    restores = {name: [] for name in names}
    sizes = {}
    try:
        for name in names:  # warm-up: first-call costs (threads, compilation) aside
            path = runners[name]["save"](-1)
            runners[name]["restore"](path)
            sizes[name] = directory_size(path)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runner = runners[name]
                start = time.perf_counter()
                path = (
                    runner["save"](r, blocking) if name == "orbax-checkpoint" else runner["save"](r)
                )
                saves[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                runner["restore"](path)
                restores[name].append(time.perf_counter() - start)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def cell(times):
        return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"

    print(
        f"TrainState of MLP {args.sizes} under Adam: {count / 1e6:.1f}M params, "
        f"{megabytes / 1e6:.0f} MB in all; {args.rounds} rounds, seconds, median (min-max); "
        f"{jax.devices()[0].platform}, written under {root.parent}"
    )
    print("| library | save | restore | on disk | import | adds to jnn's dependencies |")
    print("|---|---|---|---|---|---|")
    result = {}
    for name in names:
        package = "safetensors" if name.startswith("jnn") else "orbax-checkpoint"
        module = "safetensors" if name.startswith("jnn") else "orbax.checkpoint"
        seconds = import_seconds(module, 3)
        added, weight = added_weight(package)
        save = cell(saves[name])
        if name == "orbax-checkpoint":
            save = f"{save} total, {cell(blocking)} blocking"
        print(
            f"| {name} | {save} | {cell(restores[name])} | {sizes[name] / 1e6:.0f} MB | "
            f"{seconds * 1e3:.0f} ms | {len(added)} package{'s' * (len(added) != 1)}, "
            f"{weight:.0f} MB |"
        )
        result[name] = {
            "save": statistics.median(saves[name]),
            "restore": statistics.median(restores[name]),
            "import": seconds,
            "added": added,
            "added_mb": weight,
        }
        if name == "orbax-checkpoint":
            result[name]["save_blocking"] = statistics.median(blocking)
    for name in names:
        print(f"{name} adds: {', '.join(result[name]['added'])}")
    return result


if __name__ == "__main__":
    main()
