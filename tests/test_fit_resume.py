"""fit's checkpoints: resuming gives the run an uninterrupted fit gives, also after SIGKILL
at random points of a real training process (the checkpoint files: test_checkpoint.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import numpy as np
import optax
import pytest

import jnn

LOSS = jnn.softmax_cross_entropy_with_integer_labels


def run(data, epochs, directory=None, model=None, **kwargs):
    x, y = data
    model = model or jnn.Sequential([jnn.Dense(8), jnn.relu, jnn.Dropout(0.1), jnn.Dense(2)])
    optimizer = optax.adam(1e-2)
    state = jnn.init_train_state(model, optimizer, jax.random.key(0), x)
    kwargs = {"eval_data": (x, y)} | kwargs
    return jnn.fit(
        model, state, LOSS, optimizer, (x, y), epochs=epochs, batch_size=16,
        checkpoints=directory, steps_per_call=1, progress=False, **kwargs,
    )  # fmt: skip


def test_resume_continues_the_run_bit_for_bit(two_class_data, tmp_path):
    whole = run(two_class_data, 5)
    first = run(two_class_data, 2, tmp_path)
    assert first.info["initial_epoch"] == 0
    resumed = run(two_class_data, 5, tmp_path)
    assert resumed.info["initial_epoch"] == 2
    chex.assert_trees_all_equal(resumed.train_state, whole.train_state)
    assert resumed.history == whole.history
    again = run(two_class_data, 5, tmp_path)  # finished: nothing left to do
    assert again.info["mode"] is None and again.history == whole.history
    chex.assert_trees_all_equal(again.params, whole.params)


def test_resume_keeps_early_stopping_and_rotates(two_class_data, tmp_path):
    x, y = two_class_data
    stop = jnn.EarlyStopping("eval_loss", patience=3)
    flipped = {"eval_data": (x, 1 - y), "early_stopping": stop}
    whole = run(two_class_data, 12, **flipped)
    run(two_class_data, 2, tmp_path, **flipped)
    resumed = run(two_class_data, 12, tmp_path, **flipped)
    assert resumed.info["best_epoch"] == whole.info["best_epoch"]
    assert resumed.history == whole.history
    chex.assert_trees_all_equal(resumed.params, whole.params)
    manager = jnn.CheckpointManager(tmp_path)
    assert len(manager.steps()) == 3  # the default keep_last
    assert manager.metadata(manager.latest_step())["fit"]["stopped"]


def test_resume_refuses_another_model_or_run(two_class_data, tmp_path):
    run(two_class_data, 1, tmp_path)
    with pytest.raises(jnn.CheckpointError, match="dense_1"):
        run(
            two_class_data,
            2,
            tmp_path,
            model=jnn.Sequential([jnn.Dense(8), jnn.relu, jnn.Dense(3)]),
        )
    x, y = two_class_data
    with pytest.raises(jnn.CheckpointError, match=r"a run with .*batch_size.*Hint: resume"):
        run((x[:48], y[:48]), 2, tmp_path)
    fresh = run(two_class_data, 1, tmp_path, resume=False)
    assert fresh.info["initial_epoch"] == 0


TRAINER = """
import sys, jax, numpy as np, optax, jnn
directory, epochs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
x = rng.standard_normal((1024, 16)).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
model = jnn.Sequential([jnn.Dense(64), jnn.relu, jnn.Dropout(0.1), jnn.Dense(2)])
optimizer = optax.adam(1e-3)
state = jnn.init_train_state(model, optimizer, jax.random.key(0), x)
def report(epoch, logs, train_state):
    print("epoch", epoch, flush=True)
result = jnn.fit(model, state, jnn.softmax_cross_entropy_with_integer_labels, optimizer,
                 (x, y), epochs=epochs, batch_size=8, checkpoints=directory or None,
                 steps_per_call=4, callbacks=report, progress=False)
leaves = [np.asarray(a).tobytes().hex() for a in jax.tree.leaves(result.train_state.params)]
open(out, "w").write("\\n".join(leaves + [repr(result.history)]))
"""


def trainer(tmp_path, directory, epochs, out):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    script = tmp_path / "trainer.py"
    script.write_text(textwrap.dedent(TRAINER))
    command = [sys.executable, str(script), str(directory), str(epochs), str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_run(tmp_path):
    epochs = 8
    reference = trainer(tmp_path, "", epochs, tmp_path / "reference.txt")
    assert reference.wait(timeout=300) == 0
    rng = np.random.default_rng(0)
    directory, out = tmp_path / "run", tmp_path / "resumed.txt"
    kills = 0
    for _ in range(12):
        process = trainer(tmp_path, directory, epochs, out)
        wait_for = int(rng.integers(1, 3))
        seen = 0
        for line in process.stdout:  # kill some way into an epoch, or into a checkpoint write
            seen += line.startswith("epoch")
            if seen >= wait_for:
                time.sleep(float(rng.uniform(0, 0.15)))
                break
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=300)
        if out.exists():
            break
        if kills >= 4:
            break
    assert kills >= 3
    if not out.exists():
        final = trainer(tmp_path, directory, epochs, out)
        assert final.wait(timeout=300) == 0
    assert out.read_text() == (tmp_path / "reference.txt").read_text()
    assert not [p for p in os.listdir(directory) if not p.endswith(".safetensors")]
