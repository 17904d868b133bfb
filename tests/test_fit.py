"""The train state, its step, and fit's modes, non-finite guard, early stopping, callbacks
and populations (the argument checks of fit: test_training.py; checkpoints and resume:
test_fit_resume.py)."""

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn

LOSS = jnn.softmax_cross_entropy_with_integer_labels


def mlp_state(x, optimizer=None, seed=0, model=None):
    model = model or jnn.MLP([8, 2])
    optimizer = optimizer or optax.adam(1e-2)
    return model, optimizer, jnn.init_train_state(model, optimizer, jax.random.key(seed), x)


def same(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda p, q: bool(jnp.array_equal(p, q)), a, b)))


# ------------------------------------------------------------------------ the train state


def test_train_state_step_matches_a_hand_written_update(two_class_data):
    x, y = two_class_data
    model, optimizer, state = mlp_state(x)
    params, opt_state = state.params, state.opt_state
    grads = jax.grad(lambda p: LOSS(model.apply(p, x), y))(params)
    updates, _ = optimizer.update(grads, opt_state, params)
    expected = optax.apply_updates(params, updates)
    step = jnn.make_train_step(model, LOSS, optimizer, donate=False)
    new, logs = step(state, (x, y))
    chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-6)
    assert int(new.step) == 1 and int(state.step) == 0
    assert new.model_state == {} and sorted(logs) == ["loss"]
    assert jnp.array_equal(jax.random.key_data(new.key), jax.random.key_data(state.key))


def test_one_step_form_for_stateful_models(two_class_data):
    x, y = two_class_data
    model = jnn.Sequential([jnn.Dense(8), jnn.BatchNorm(momentum=0.5), jnn.relu, jnn.Dense(2)])
    optimizer = optax.sgd(0.1)
    state = jnn.init_train_state(model, optimizer, jax.random.key(0), x)
    assert set(state.model_state) == {"batch_norm_0"}
    dense = state.params["dense_0"]
    batch_mean = np.asarray(x @ dense["weight"] + dense["bias"]).mean(0)
    before = np.asarray(state.model_state["batch_norm_0"]["mean"])
    step = jnn.make_train_step(model, LOSS, optimizer)
    state, logs = step(state, (x, y))
    after = np.asarray(state.model_state["batch_norm_0"]["mean"])
    np.testing.assert_allclose(after, 0.5 * before + 0.5 * batch_mean, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 1 and np.isfinite(logs["loss"])


def test_train_state_is_one_pytree_for_jit_vmap_and_scan(two_class_data):
    x, y = two_class_data
    model, optimizer = jnn.MLP([8, 2]), optax.sgd(0.1)
    keys = jax.random.split(jax.random.key(0), 3)
    population = jax.vmap(lambda k: jnn.init_train_state(model, optimizer, k, x))(keys)
    assert population.params["dense_0"]["weight"].shape == (3, 4, 8)
    assert population.step.shape == (3,)
    step = jnn.make_train_step(model, LOSS, optimizer, jit=False)
    stepped, logs = jax.jit(jax.vmap(step, in_axes=(0, None)))(population, (x, y))
    assert logs["loss"].shape == (3,) and stepped.step.tolist() == [1, 1, 1]

    def scan_body(state, _):
        return step(state, (x, y))

    state = jax.tree.map(lambda a: a[0], population)
    final, losses = jax.lax.scan(scan_body, state, length=4)
    assert int(final.step) == 4 and losses["loss"].shape == (4,)


def test_train_state_create_checks_its_arguments(two_class_data):
    x, _ = two_class_data
    params = jnn.Dense(2).init(jax.random.key(0), x)
    with pytest.raises(TypeError, match=r"^TrainState\.create: expected key to be a PRNG key"):
        jnn.TrainState.create(params, optax.sgd(0.1), key=0)
    with pytest.raises(TypeError, match=r"^TrainState\.create: expected an optax"):
        jnn.TrainState.create(params, 0.1, key=jax.random.key(0))
    legacy = jnn.TrainState.create(params, optax.sgd(0.1), key=jax.random.PRNGKey(0))
    assert jax.dtypes.issubdtype(legacy.key.dtype, jax.dtypes.prng_key)


def test_step_keys_differ_per_step_and_stream():
    key = jax.random.key(0)
    drawn = [jax.random.key_data(jnn.step_key(key, i)).tolist() for i in range(3)]
    drawn += [jax.random.key_data(jnn.epoch_key(key, i)).tolist() for i in range(3)]
    assert len({tuple(d) for d in drawn}) == 6


# ------------------------------------------------------------------------ modes


def test_modes_agree_and_auto_says_what_it_chose(two_class_data):
    x, y = two_class_data
    model = jnn.Sequential([jnn.Dense(8), jnn.relu, jnn.Dropout(0.2), jnn.Dense(2)])
    _, optimizer, state = mlp_state(x, model=model)
    runs = {}
    for setting, unroll in ((1, False), (3, False), ("auto", False), ("measure", False), (2, True)):
        runs[setting] = jnn.fit(
            model, state, LOSS, optimizer, (x, y), epochs=3, batch_size=16,
            steps_per_call=setting, unroll=unroll, progress=False, drop_last=False,
        )  # fmt: skip
    assert runs[1].info["mode"] == "host" and runs[3].info["mode"] == "device"
    auto = runs["auto"].info
    assert auto["mode"] == "device" and auto["reason"].startswith("device mode is the default")
    assert isinstance(auto["steps_per_call"], int) and auto["seconds_per_step"] is None
    measured = runs["measure"].info
    assert measured["mode"] in ("host", "device") and measured["reason"].startswith("measured")
    assert set(measured["seconds_per_step"]) == {"host", "device"}
    # bit-identical under XLA's default flags (checked in a subprocess below); the
    # tests' fast-compile flags allow last-bit differences between the two programs
    for setting in (3, "auto", "measure", 2):
        chex.assert_trees_all_close(runs[setting].params, runs[1].params, rtol=1e-5, atol=1e-6)
    assert int(runs[1].train_state.step) == 3 * 4  # 64 examples: 4 batches, the last short
    assert not state.params["dense_0"]["weight"].is_deleted()


def test_auto_keeps_convolutions_on_a_cpu_out_of_compiled_loops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 6, 1)).astype(np.float32)
    y = (x.mean((1, 2, 3)) > 0).astype(np.int32)
    model = jnn.Sequential([jnn.Conv(2, (3, 3)), jnn.relu, jnn.Flatten(), jnn.Dense(2)])
    _, optimizer, state = mlp_state(x, model=model)
    result = jnn.fit(model, state, LOSS, optimizer, (x, y), batch_size=8, progress=False)
    assert result.info["mode"] == "host"
    assert "convolution" in result.info["reason"] and "12868" in result.info["reason"]


BIT_IDENTICAL = """
import json, jax, jax.numpy as jnp, numpy as np, optax, jnn
rng = np.random.default_rng(0)
x = rng.standard_normal((80, 4)).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
model = jnn.Sequential([jnn.Dense(8), jnn.relu, jnn.Dropout(0.2), jnn.Dense(2)])
optimizer = optax.adam(1e-2)
state = jnn.init_train_state(model, optimizer, jax.random.key(0), x)
out = {}
for setting, unroll in ((1, False), (2, False), (5, False)):
    result = jnn.fit(model, state, jnn.softmax_cross_entropy_with_integer_labels, optimizer,
                     (x, y), epochs=3, batch_size=16, steps_per_call=setting, unroll=unroll,
                     drop_last=False, progress=False, metrics={"accuracy": jnn.accuracy})
    out[f"{setting}{unroll}"] = [np.asarray(a).tobytes().hex() for a in
                                 jax.tree.leaves(result.params)] + [result.history]
print(json.dumps(out))
"""


def run_clean(script: str, timeout: int = 300) -> str:
    """Run ``script`` in a fresh interpreter with XLA's default flags."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env | {"JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_host_and_device_modes_are_bit_identical_with_default_flags():
    # an unrolled chunk is straight-line code that XLA may fuse across steps: it agrees
    # to rounding only (test_modes_agree_and_auto_says_what_it_chose)
    out = json.loads(run_clean(BIT_IDENTICAL).strip().splitlines()[-1])
    first, *others = out.values()
    for other in others:
        assert other == first


# ------------------------------------------------------------------------ non-finite values


def nan_data(two_class_data, row):
    x, y = two_class_data
    x = x.copy()
    x[row, 2] = np.nan
    return x, y


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_nonfinite_inputs_stop_training_at_the_step_with_the_last_finite_state(
    two_class_data, steps_per_call
):
    x, y = nan_data(two_class_data, 37)  # batch 2 of epoch 1 with batch_size 16 and no shuffle
    model, optimizer, state = mlp_state(x)
    with pytest.raises(
        jnn.NonFiniteError, match=r"^fit: the inputs went non-finite at step 2 \(epoch 1\)"
    ) as caught:
        jnn.fit(
            model, state, LOSS, optimizer, (x, y), epochs=3, batch_size=16, shuffle=False,
            steps_per_call=steps_per_call, progress=False,
        )  # fmt: skip
    error = caught.value
    assert (error.epoch, error.step, error.cause) == (1, 2, "inputs")
    assert int(error.train_state.step) == 2
    expected = jnn.fit(
        model, state, LOSS, optimizer, (x[:32], y[:32]), batch_size=16, shuffle=False,
        steps_per_call=steps_per_call, progress=False,
    )  # fmt: skip
    chex.assert_trees_all_close(error.train_state.params, expected.params, rtol=1e-6)


def test_nonfinite_gradients_are_told_apart_from_the_loss(two_class_data):
    x, y = two_class_data
    model, optimizer, state = mlp_state(x)

    def sqrt_loss(outputs, targets):  # finite (0) at 0, with an infinite slope there
        del targets
        return jnp.sqrt(jnp.sum(outputs * 0.0))

    with pytest.raises(jnn.NonFiniteError, match="the gradients went non-finite at step 0") as e:
        jnn.fit(model, state, sqrt_loss, optimizer, (x, y), batch_size=16, progress=False)
    assert e.value.cause == "gradients"
    chex.assert_trees_all_equal(e.value.train_state.params, state.params)

    def log_loss(outputs, targets):
        del targets
        return jnp.log(jnp.sum(outputs * 0.0))

    with pytest.raises(jnn.NonFiniteError, match="the loss went non-finite") as e:
        jnn.fit(model, state, log_loss, optimizer, (x, y), batch_size=16, progress=False)
    assert e.value.cause == "loss"


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_skip_counts_nonfinite_steps_and_keeps_training(two_class_data, steps_per_call):
    x, y = nan_data(two_class_data, 5)
    model, optimizer, state = mlp_state(x)
    result = jnn.fit(
        model, state, LOSS, optimizer, (x, y), epochs=2, batch_size=16,
        on_nonfinite="skip", steps_per_call=steps_per_call, progress=False,
    )  # fmt: skip
    assert result.history["skipped"] == [1.0, 1.0]
    assert all(np.isfinite(result.history["loss"]))
    assert int(result.train_state.step) == 8
    assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(result.params))


# ------------------------------------------------------------------------ early stopping, callbacks


def test_early_stopping_stops_and_restores_the_best_epoch(two_class_data):
    x, y = two_class_data
    model, optimizer, state = mlp_state(x, optax.adam(5e-2))
    flipped = (x, 1 - y)  # the better the fit, the worse this gets
    stop = jnn.EarlyStopping("eval_loss", patience=2)
    result = jnn.fit(
        model, state, LOSS, optimizer, (x, y), epochs=20, batch_size=16, eval_data=flipped,
        early_stopping=stop, steps_per_call=1, progress=False,
    )  # fmt: skip
    assert result.info["stopped_early"] and result.info["best_epoch"] == 1
    assert len(result.history["loss"]) == 3
    first = jnn.fit(
        model, state, LOSS, optimizer, (x, y), epochs=1, batch_size=16, steps_per_call=1,
        progress=False,
    )  # fmt: skip
    chex.assert_trees_all_equal(result.params, first.params)
    assert int(result.train_state.step) == 12  # optimizer state and step: the last epoch's


def test_early_stopping_checks_its_metric_exists(two_class_data):
    x, y = two_class_data
    model, optimizer, state = mlp_state(x)
    with pytest.raises(
        ValueError, match=r"watches 'eval_loss'.*Hint: 'eval_\*' metrics need eval_data"
    ):
        jnn.fit(model, state, LOSS, optimizer, (x, y), early_stopping=jnn.EarlyStopping())
    with pytest.raises(TypeError, match="Hint: instantiate it"):
        jnn.fit(model, state, LOSS, optimizer, (x, y), early_stopping=jnn.EarlyStopping)
    with pytest.raises(ValueError, match="patience must be a positive int, got 0"):
        jnn.EarlyStopping(patience=0)
    assert jnn.EarlyStopping("eval_loss").direction == "min"


def test_callbacks_see_every_epoch_and_can_stop(two_class_data, tmp_path):
    x, y = two_class_data
    model, optimizer, state = mlp_state(x)
    seen = []

    def stop_at_two(epoch, logs, train_state):
        seen.append((epoch, sorted(logs), int(train_state.step)))
        return epoch == 2

    path = tmp_path / "log.jsonl"
    result = jnn.fit(
        model, state, LOSS, optimizer, (x, y), epochs=5, batch_size=16, eval_data=(x, y),
        callbacks=[stop_at_two, jnn.JSONLinesLogger(path)], progress=False,
    )  # fmt: skip
    assert seen == [(1, ["eval_loss", "loss"], 4), (2, ["eval_loss", "loss"], 8)]
    assert result.info["stopped_early"]
    assert jnn.history_from_json_lines(path) == result.history


def test_shuffle_false_visits_the_data_in_order(two_class_data):
    x, y = two_class_data
    model, optimizer, state = mlp_state(x, optax.sgd(0.1))
    result = jnn.fit(
        model, state, LOSS, optimizer, (x, y), epochs=2, batch_size=16, shuffle=False,
        progress=False,
    )  # fmt: skip
    step = jnn.make_train_step(model, LOSS, optimizer, donate=False)
    for _ in range(2):
        for start in range(0, 64, 16):
            state, _ = step(state, (x[start : start + 16], y[start : start + 16]))
    chex.assert_trees_all_close(result.params, state.params, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ populations


def test_population_trains_each_member_like_its_own_run(two_class_data):
    x, y = two_class_data
    model = jnn.MLP([8, 2])
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)

    def member(key, rate):
        state = jnn.init_train_state(model, optimizer, key, x)
        state.opt_state.hyperparams["learning_rate"] = rate
        return state

    keys = jax.random.split(jax.random.key(0), 3)
    rates = jnp.array([1e-3, 1e-2, 1e-1])
    population = jax.vmap(member)(keys, rates)
    result = jnn.fit(
        model, population, LOSS, optimizer, (x, y), epochs=2, batch_size=16, eval_data=(x, y),
        metrics={"accuracy": jnn.accuracy}, population=True, progress=False,
    )  # fmt: skip
    assert len(result.history["eval_accuracy"][-1]) == 3
    for i in range(3):
        alone = jnn.fit(
            model, member(keys[i], rates[i]), LOSS, optimizer, (x, y), epochs=2,
            batch_size=16, eval_data=(x, y), progress=False,
        )  # fmt: skip
        mine = jax.tree.map(lambda a, i=i: a[i], result.params)
        chex.assert_trees_all_close(mine, alone.params, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            result.history["eval_loss"][-1][i], alone.history["eval_loss"][-1], rtol=1e-4
        )


def test_population_needs_a_leading_member_axis(two_class_data):
    x, y = two_class_data
    model, optimizer, state = mlp_state(x)
    with pytest.raises(ValueError, match="population=True expects every leaf"):
        jnn.fit(model, state, LOSS, optimizer, (x, y), population=True, progress=False)


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ({"on_nonfinite": "ignore"}, ValueError, r"^fit: on_nonfinite must be 'raise' or 'skip'"),
        ({"steps_per_call": 0}, ValueError, r"^fit: steps_per_call must be a positive int"),
        ({"unroll": True}, ValueError, r"^fit: unroll=True needs steps_per_call set"),
        ({"steps_per_call": "fast"}, ValueError, r"^fit: steps_per_call must be 'auto', 'measure'"),
        ({"key": jax.random.key(0)}, TypeError, r"^fit: key= goes with plain params"),
        ({"checkpoints": 3}, TypeError, r"^fit: expected checkpoints to be a directory"),
    ],
)
def test_fit_argument_errors_of_the_train_state_form(two_class_data, override, error, message):
    x, y = two_class_data
    model, optimizer, state = mlp_state(x)
    with pytest.raises(error, match=message):
        jnn.fit(model, state, LOSS, optimizer, (x, y), progress=False, **override)
