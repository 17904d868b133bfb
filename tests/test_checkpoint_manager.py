"""CheckpointManager: rotation by step and by metric, crashed writes, argument checks."""

import math
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn


def train_state(key, step):
    """A TrainState whose params and step tell which step it was saved at."""
    state = jnn.init_train_state(jnn.MLP([4, 2]), optax.adam(1e-2), key, jnp.ones((2, 3)))
    params = jax.tree.map(lambda p: p + step, state.params)
    return state._replace(params=params, step=jnp.asarray(step, jnp.int32))


CRASH = """
import os, sys, jax.numpy as jnp
from jnn._checkpoint_manager import CheckpointManager
manager = CheckpointManager(sys.argv[1], keep_last=2)
manager.save(1, {"w": jnp.zeros(3)})
os.replace = lambda *args: os._exit(3)  # the process dies between the write and the rename
manager.save(2, {"w": jnp.ones(3)})
"""


def test_a_killed_write_leaves_the_last_checkpoint_intact(tmp_path):
    """A process killed mid-save leaves a temporary file; it is never read and the next
    save removes it."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASH), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    names = sorted(os.listdir(tmp_path))
    assert names[-1] == "step_00000001.safetensors" and len(names) == 2
    assert re.fullmatch(r"\.step_00000002\.safetensors\.[0-9a-f]{8}\.tmp", names[0])
    manager = jnn.CheckpointManager(tmp_path, keep_last=2)
    assert manager.steps() == [1] and manager.latest_step() == 1
    tree, _ = manager.restore({"w": jnp.ones(3)})
    np.testing.assert_array_equal(tree["w"], np.zeros(3))
    manager.save(2, {"w": jnp.ones(3)})
    assert sorted(os.listdir(tmp_path)) == [
        "step_00000001.safetensors",
        "step_00000002.safetensors",
    ]


def test_manager_keeps_the_last_checkpoints(tmp_path, key):
    manager = jnn.CheckpointManager(tmp_path / "run", keep_last=2)
    assert manager.steps() == [] and manager.latest_step() is None and manager.best_step() is None
    state = train_state(key, 0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("not a checkpoint")
    for step in (100, 200, 300, 400):
        path = manager.save(
            jnp.asarray(step),
            train_state(key, step),
            metadata={"epoch": step // 100},
        )
        assert path == tmp_path / "run" / f"step_{step:08d}.safetensors" and path.is_file()
    assert manager.steps() == [300, 400] and manager.latest_step() == 400
    assert sorted(os.listdir(tmp_path / "run")) == [
        "notes.txt",
        "step_00000300.safetensors",
        "step_00000400.safetensors",
    ]
    restored, metadata = manager.restore(jax.eval_shape(lambda: state))
    assert int(restored.step) == 400 and metadata == {"epoch": 4}
    restored, metadata = manager.restore(state, step=300)
    assert int(restored.step) == 300 and metadata == {"epoch": 3}
    expected = train_state(key, 300).params
    for got, want in zip(jax.tree.leaves(restored.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(got, want)
    assert manager.metadata(300) == {"epoch": 3} and manager.metrics(300) == {}
    with pytest.raises(
        FileNotFoundError,
        match=r"CheckpointManager.restore: no checkpoint of step 100 in '.*run'; the steps there are \[300, 400\]\.",
    ):
        manager.restore(state, step=100)
    with pytest.raises(
        FileNotFoundError, match=r"CheckpointManager.restore: no checkpoint in '.*empty'\."
    ):
        jnn.CheckpointManager(tmp_path / "empty").restore(state)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_manager_keeps_the_best_checkpoints(tmp_path, mode):
    manager = jnn.CheckpointManager(tmp_path, keep_last=1, keep_best=2, metric="loss", mode=mode)
    sign = 1 if mode == "min" else -1
    values = {1: 0.5, 2: math.nan, 3: 0.2, 4: -math.inf, 5: 0.9, 6: 0.2, 7: 0.7}
    for step, value in values.items():
        manager.save(
            step, {"w": jnp.full(2, step)}, metrics={"loss": sign * value, "accuracy": 0.5}
        )
    # Best two finite values: 0.2 at steps 3 and 6 (the later first); the last step is 7.
    assert manager.steps() == [3, 6, 7]
    assert manager.best_step() == 6
    assert manager.metrics(3) == {"loss": sign * 0.2, "accuracy": 0.5}
    # A damaged file never ranks as best, and rotation does not stop at it.
    (tmp_path / "step_00000000.safetensors").write_bytes(b"damaged")
    (tmp_path / "step_0.safetensors").write_text("not a name the manager writes")
    assert manager.steps() == [0, 3, 6, 7] and manager.best_step() == 6
    # A new manager over the directory sees the same (its state is on disk).
    again = jnn.CheckpointManager(tmp_path, keep_last=1, keep_best=2, metric="loss", mode=mode)
    assert again.best_step() == 6
    again.save(8, {"w": jnp.full(2, 8)}, metrics={"loss": sign * 0.1})
    assert again.steps() == [6, 8] and again.best_step() == 8
    assert sorted(os.listdir(tmp_path))[0] == "step_0.safetensors"  # left alone


def test_manager_argument_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"CheckpointManager: keep_last must be a positive int, got 0\."
    ):
        jnn.CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(
        TypeError, match=r"CheckpointManager: keep_last must be an int, got 2.5 \(float\)\."
    ):
        jnn.CheckpointManager(tmp_path, keep_last=2.5)
    with pytest.raises(
        ValueError, match=r"CheckpointManager: keep_best must be a non-negative int, got -1\."
    ):
        jnn.CheckpointManager(tmp_path, keep_best=-1)
    with pytest.raises(
        ValueError,
        match=r"CheckpointManager: expected mode 'min' \(lower is better\) or 'max', got 'lowest'\.",
    ):
        jnn.CheckpointManager(tmp_path, keep_best=1, metric="loss", mode="lowest")
    with pytest.raises(
        ValueError,
        match=r"CheckpointManager: keep_best=2 needs a metric to rank checkpoints by\. Hint: e.g. metric='val_loss', mode='min'\.",
    ):
        jnn.CheckpointManager(tmp_path, keep_best=2)
    with pytest.raises(
        ValueError,
        match=r"CheckpointManager: metric='loss' is used only to keep the best checkpoints, but keep_best is 0\.",
    ):
        jnn.CheckpointManager(tmp_path, metric="loss")
    with pytest.raises(TypeError, match=r"CheckpointManager: expected metric as a str, got int\."):
        jnn.CheckpointManager(tmp_path, keep_best=1, metric=3)
    with pytest.raises(
        TypeError, match=r"CheckpointManager: expected directory as a str or path, got NoneType\."
    ):
        jnn.CheckpointManager(None)
    manager = jnn.CheckpointManager(tmp_path, keep_best=1, metric="val_loss")
    tree = {"w": jnp.ones(2)}
    with pytest.raises(
        ValueError,
        match=r"CheckpointManager.save: metrics must hold 'val_loss', which ranks checkpoints for keep_best=1; got \['loss'\]\.",
    ):
        manager.save(1, tree, metrics={"loss": 0.3})
    with pytest.raises(
        ValueError, match=r"CheckpointManager.save: metrics must hold 'val_loss'.*got \[\]\."
    ):
        manager.save(1, tree)
    with pytest.raises(
        TypeError,
        match=r"CheckpointManager.save: expected metric 'val_loss' to be a number, got str\.",
    ):
        manager.save(1, tree, metrics={"val_loss": "low"})
    with pytest.raises(
        ValueError, match=r"CheckpointManager.save: step must be a non-negative int, got -1\."
    ):
        manager.save(-1, tree, metrics={"val_loss": 0.3})
    with pytest.raises(
        TypeError, match=r"CheckpointManager.save: expected step as an int, got float\."
    ):
        manager.save(1.0, tree, metrics={"val_loss": 0.3})
    assert os.listdir(tmp_path) == []  # nothing was written
