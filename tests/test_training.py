"""Training: the jitted step, evaluation, batching and fit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, -1) == labels)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    return x, y


def test_step_equals_hand_written_update_and_lowers_the_loss(key, data):
    x, y = data
    model = jnn.MLP([16, 2])
    optimizer = optax.adam(1e-2)
    params = model.init(key, x)
    opt_state = optimizer.init(params)

    def loss(p):
        return cross_entropy(model.apply(p, x), y)

    grads = jax.grad(loss)(params)
    updates, _ = optimizer.update(grads, opt_state, params)
    expected = optax.apply_updates(params, updates)
    step = jnn.make_train_step(
        model, cross_entropy, optimizer, metrics={"accuracy": accuracy}, donate=False
    )
    new_params, opt_state, logs = step(params, opt_state, (x, y))
    chex.assert_trees_all_close(new_params, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["loss"], loss(params), rtol=1e-6)
    first = float(logs["loss"])
    for _ in range(50):
        new_params, opt_state, logs = step(new_params, opt_state, (x, y))
    assert float(logs["loss"]) < 0.5 * first
    assert float(logs["accuracy"]) > 0.9


def counting_step(key, x, width):
    """An SGD step of an MLP whose loss counts its traces: (step, traces, model, params,
    optimizer, opt_state)."""
    traces = []

    def counting_loss(logits, labels):
        traces.append(1)
        return cross_entropy(logits, labels)

    model = jnn.MLP([width, 2])
    params = model.init(key, x)
    optimizer = optax.sgd(0.1)
    step = jnn.make_train_step(model, counting_loss, optimizer)
    return step, traces, model, params, optimizer, optimizer.init(params)


def test_step_compiles_once_and_donates_buffers(key, data):
    x, y = data
    step, traces, model, params, optimizer, opt_state = counting_step(key, x, 8)
    for batch in jnn.batches((x, y), 32):
        old = params
        params, opt_state, _ = step(params, opt_state, batch)
    assert len(traces) == 1
    assert old["dense_0"]["weight"].is_deleted()  # donated: updated in place
    kept = jnn.make_train_step(model, cross_entropy, optimizer, donate=False)
    fresh = model.init(key, x)
    kept(fresh, optimizer.init(fresh), (x, y))
    assert not fresh["dense_0"]["weight"].is_deleted()


def test_step_passes_the_key_to_stochastic_layers(key, data):
    x, y = data
    model = jnn.Sequential([jnn.Dense(16), jnn.Dropout(0.5), jnn.Dense(2)])
    params = model.init(key, x)
    optimizer = optax.sgd(0.1)
    step = jnn.make_train_step(model, cross_entropy, optimizer, donate=False)
    _, _, a = step(params, optimizer.init(params), (x, y), jax.random.key(1))
    _, _, b = step(params, optimizer.init(params), (x, y), jax.random.key(1))
    _, _, c = step(params, optimizer.init(params), (x, y), jax.random.key(2))
    assert float(a["loss"]) == float(b["loss"]) != float(c["loss"])
    with pytest.raises(jnn.MissingKeyError, match="Dropout at 'dropout_0'"):
        step(params, optimizer.init(params), (x, y))


def test_batches_cover_every_example_once_and_shuffle_by_key(data):
    x, y = data
    seen = np.concatenate([b[0] for b in jnn.batches((x, y), 20)])
    np.testing.assert_array_equal(seen, x)
    a = [b[1] for b in jnn.batches((x, y), 20, key=jax.random.key(0))]
    b = [b[1] for b in jnn.batches((x, y), 20, key=jax.random.key(0))]
    c = [b[1] for b in jnn.batches((x, y), 20, key=jax.random.key(1))]
    chex.assert_trees_all_equal(a, b)
    assert not all(np.array_equal(u, v) for u, v in zip(a, c, strict=True))
    order = np.concatenate([b[0][:, 0] for b in jnn.batches((x, y), 20, key=jax.random.key(0))])
    np.testing.assert_array_equal(np.sort(order), np.sort(x[:, 0]))
    assert [len(b[0]) for b in jnn.batches((x, y), 20, drop_last=True)] == [20] * 4
    dicts = list(jnn.batches({"x": x, "y": y}, 50))
    assert dicts[1]["x"].shape == (46, 4)


def test_batches_errors(data):
    x, y = data
    with pytest.raises(ValueError, match="batches: every array must share the leading"):
        list(jnn.batches((x, y[:10]), 4))
    with pytest.raises(ValueError, match="batches: batch_size must be a positive int"):
        list(jnn.batches((x, y), 0))


def test_evaluate_weights_batches_by_size(key, data):
    x, y = data
    model = jnn.MLP([8, 2])
    params = model.init(key, x)
    logits = model.apply(params, x)
    scores = jnn.evaluate(
        model, params, (x, y), loss_fn=cross_entropy, metrics={"accuracy": accuracy}, batch_size=40
    )
    np.testing.assert_allclose(scores["accuracy"], accuracy(logits, y), rtol=1e-6)
    np.testing.assert_allclose(scores["loss"], cross_entropy(logits, y), rtol=1e-5)


def test_fit_trains_reproducibly_and_keeps_the_callers_params(key, data):
    x, y = data
    model = jnn.Sequential([jnn.Dense(16), jnn.relu, jnn.Dropout(0.1), jnn.Dense(2)])
    params = model.init(key, x)
    run = lambda: jnn.fit(  # noqa: E731
        model,
        params,
        cross_entropy,
        optax.adam(1e-2),
        (x, y),
        key=jax.random.key(3),
        epochs=8,
        batch_size=16,
        eval_data=(x, y),
        metrics={"accuracy": accuracy},
        progress=False,
    )
    first, second = run(), run()
    assert not params["dense_0"]["weight"].is_deleted()
    chex.assert_trees_all_equal(first.params, second.params)
    assert set(first.history) == {"loss", "accuracy", "eval_loss", "eval_accuracy"}
    assert len(first.history["loss"]) == 8
    assert first.history["loss"][-1] < first.history["loss"][0]
    assert first.history["eval_accuracy"][-1] > 0.9


def test_fit_with_batch_norm_state(key, data):
    x, y = data
    model = jnn.Sequential([jnn.Dense(16), jnn.BatchNorm(momentum=0.9), jnn.relu, jnn.Dense(2)])
    params, state = model.init_with_state(key, x)
    result = jnn.fit(
        model,
        params,
        cross_entropy,
        optax.adam(1e-2),
        (x, y),
        key=key,
        state=state,
        epochs=3,
        batch_size=32,
        eval_data=(x, y),
        progress=False,
    )
    assert set(result.state) == {"batch_norm_0"}
    assert not np.allclose(result.state["batch_norm_0"]["variance"], 1.0)
    assert len(result.history["eval_loss"]) == 3


def test_fit_progress_bar_and_errors(key, data, capsys):
    x, y = data
    model = jnn.MLP([2])
    params = model.init(key, x)
    jnn.fit(model, params, cross_entropy, optax.sgd(0.1), (x, y), key=key, batch_size=32)
    assert "epoch 1/1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fit: 96 examples give no full batch of 128"):
        jnn.fit(model, params, cross_entropy, optax.sgd(0.1), (x, y), key=key, batch_size=128)
    with pytest.raises(TypeError, match=r"expected a batch \(inputs, targets\)"):
        jnn.make_train_step(model, cross_entropy, optax.sgd(0.1))(params, None, (x, y, y))


def test_positional_and_keyword_calls_share_one_compilation(key, data):
    x, y = data
    step, traces, model, params, optimizer, opt_state = counting_step(key, x, 4)
    params, opt_state, _ = step(params, opt_state, (x, y), key)
    params, opt_state, _ = step(params, opt_state, batch=(x, y), key=key)
    assert len(traces) == 1
