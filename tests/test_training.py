"""Training: the jitted step, evaluation and fit, and the checks of their arguments
(batching: test_batching.py)."""

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


# --------------------------------------------------------------------------- argument checks


@pytest.fixture
def setup(key, data):
    x, y = data
    model = jnn.MLP([8, 2])
    return model, model.init(key, x), x, y


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ({"epochs": -1}, ValueError, r"^fit: epochs must be a positive int, got -1\.$"),
        ({"epochs": 0}, ValueError, r"^fit: epochs must be a positive int, got 0\.$"),
        ({"epochs": 2.0}, TypeError, r"^fit: epochs must be an int, got 2\.0 \(float\)\.$"),
        ({"batch_size": 0}, ValueError, r"^fit: batch_size must be a positive int, got 0\.$"),
        ({"batch_size": "32"}, TypeError, r"^fit: batch_size must be an int, got '32'"),
        ({"key": 0}, TypeError, r"^fit: expected key to be a PRNG key such as jax\.random\.key"),
        (
            {"optimizer": optax.adam},
            TypeError,
            r"^fit: expected an optax GradientTransformation as optimizer, got adam\. Hint: "
            r"call it to build the transformation, e\.g\. optax\.adam\(1e-3\)\.$",
        ),
        (
            {"optimizer": 0.1},
            TypeError,
            r"got float\. Hint: wrap a learning rate in an optimizer, e\.g\. optax\.sgd\(0\.1\)\.$",
        ),
        (
            {"loss_fn": optax.sgd(0.1)},
            TypeError,
            r"^fit: expected a function as loss_fn, got GradientTransformation.*\. Hint: that is "
            r"an optimizer: the arguments are \(model, loss_fn, optimizer\)\.$",
        ),
        (
            {"loss_fn": "cross_entropy"},
            TypeError,
            r"^fit: expected a function as loss_fn, got str\. Hint: pass the function itself",
        ),
        (
            {"model": jnn.MLP},
            TypeError,
            r"^fit: expected a jnn\.Module as model, got type\. Hint: instantiate it, e\.g\. MLP",
        ),
        (
            {"metrics": [accuracy]},
            TypeError,
            r"^fit: expected metrics as a dict of name -> function, got list\. Hint: name them, "
            r"e\.g\. \{'accuracy': jnn\.accuracy\}\.$",
        ),
        (
            {"metrics": {"accuracy": 0.5}},
            TypeError,
            r"^fit: expected a function for metric 'accuracy', got float\.",
        ),
        (
            {"metrics": {"loss": accuracy}},
            ValueError,
            r"^fit: the metric name 'loss' is taken by the loss in the logs\.",
        ),
        ({"progress": "no"}, TypeError, r"^fit: expected progress to be a bool, got 'no' \(str\)"),
        ({"drop_last": None}, TypeError, r"^fit: expected drop_last to be a bool, got None"),
        ({"train_state": [1.0]}, jnn.ParamsError, r"^fit: expected params as a dict, got list\.$"),
    ],
)
def test_fit_argument_errors(setup, key, override, error, message):
    model, params, x, y = setup
    arguments = {"model": model, "train_state": params, "loss_fn": cross_entropy}
    arguments |= {"optimizer": optax.sgd(0.1), "train_data": (x, y), "key": key}
    arguments |= {"progress": False} | override
    with pytest.raises(error, match=message):
        jnn.fit(**arguments)
    assert not params["dense_0"]["weight"].is_deleted()  # refused before anything ran


@pytest.mark.parametrize(
    ("make_data", "error", "message"),
    [
        (
            lambda x, y: (x, y[:10]),
            ValueError,
            r"^fit: every array must share the leading \(example\) axis, got 96 examples in "
            r"train_data\[0\] but 10 in train_data\[1\]\.$",
        ),
        (
            lambda x, y: x,
            TypeError,
            r"^fit: expected train_data as a pair \(inputs, targets\), got ndarray\. Hint: for "
            r"several inputs use \(\(x1, x2\), targets\)\.$",
        ),
        (
            lambda x, y: (x.tolist(), y),
            TypeError,
            r"^fit: expected arrays in train_data, got a float at train_data\[0\]\[0\]\[0\]\. "
            r"Hint: convert Python lists first",
        ),
        (lambda x, y: (x[:0], y[:0]), ValueError, r"^fit: train_data holds 0 examples\.$"),
    ],
)
def test_fit_data_errors(setup, key, make_data, error, message):
    model, params, x, y = setup
    data = make_data(x, y)
    with pytest.raises(error, match=message):
        jnn.fit(model, params, cross_entropy, optax.sgd(0.1), data, key=key, progress=False)


def test_fit_checks_eval_data_before_training(setup, key):
    model, params, x, y = setup
    with pytest.raises(ValueError, match=r"got 5 examples in eval_data\[0\] but 4 in eval_data"):
        jnn.fit(
            model,
            params,
            cross_entropy,
            optax.sgd(0.1),
            (x, y),
            key=key,
            eval_data=(x[:5], y[:4]),
            progress=False,
        )


def test_numpy_ints_are_accepted_wherever_ints_are(setup, key):
    model, params, x, y = setup
    result = jnn.fit(
        model,
        params,
        cross_entropy,
        optax.sgd(0.1),
        (x, y),
        key=key,
        epochs=np.int64(2),
        batch_size=np.int32(32),
        progress=False,
    )
    assert len(result.history["loss"]) == 2
    assert [len(b[0]) for b in jnn.batches((x, y), np.int64(40))] == [40, 40, 16]
    scores = jnn.evaluate(model, params, (x, y), loss_fn=cross_entropy, batch_size=np.int16(50))
    assert np.isfinite(scores["loss"])


def test_evaluate_errors(setup):
    model, params, x, y = setup
    with pytest.raises(ValueError, match=r"^evaluate: data holds 0 examples\.$"):
        jnn.evaluate(model, params, (x[:0], y[:0]), loss_fn=cross_entropy)
    with pytest.raises(ValueError, match=r"^evaluate: batch_size must be a positive int, got 0"):
        jnn.evaluate(model, params, (x, y), loss_fn=cross_entropy, batch_size=0)
    with pytest.raises(ValueError, match=r"^evaluate: every array must share the leading"):
        jnn.evaluate(model, params, (x, y[:3]), loss_fn=cross_entropy)
    with pytest.raises(TypeError, match=r"^evaluate: expected data as a pair \(inputs, targets\)"):
        jnn.evaluate(model, params, {"x": x, "y": y}, loss_fn=cross_entropy)
    with pytest.raises(TypeError, match=r"^evaluate: expected a function as loss_fn, got str"):
        jnn.evaluate(model, params, (x, y), loss_fn="mse")
    with pytest.raises(ValueError, match=r"^evaluate: expected metric 'logits' to return a scalar"):
        jnn.evaluate(model, params, (x, y), metrics={"logits": lambda o, t: o})


def test_make_train_step_argument_errors(setup):
    model, params, x, y = setup
    optimizer = optax.sgd(0.1)
    with pytest.raises(TypeError, match=r"^make_train_step: expected an optax Gradient"):
        jnn.make_train_step(model, cross_entropy, cross_entropy)
    with pytest.raises(TypeError, match=r"^make_train_step: expected a jnn\.Module as model, got"):
        jnn.make_train_step(model.apply, cross_entropy, optimizer)
    with pytest.raises(TypeError, match=r"^make_train_step: expected donate to be a bool"):
        jnn.make_train_step(model, cross_entropy, optimizer, donate="yes")
    with pytest.raises(TypeError, match=r"^make_train_step: expected metric names as strings"):
        jnn.make_train_step(model, cross_entropy, optimizer, metrics={0: accuracy})


@pytest.mark.parametrize(
    ("loss_fn", "metrics", "error", "message"),
    [
        (
            lambda o, t: optax.softmax_cross_entropy_with_integer_labels(o, t),
            None,
            ValueError,
            r"^make_train_step: expected loss_fn to return a scalar, got shape \(96,\)\. Hint: "
            r"reduce it over the batch, e\.g\. reduction='mean' for jnn losses, or \.mean\(\)\.",
        ),
        (
            lambda o, t: jnp.sum(t),
            None,
            TypeError,
            r"^make_train_step: expected loss_fn to return a floating-point scalar to "
            r"differentiate, got dtype int32\.",
        ),
        (
            cross_entropy,
            {"hits": lambda o, t: o.argmax(-1) == t},
            ValueError,
            r"^make_train_step: expected metric 'hits' to return a scalar, got shape \(96,\)",
        ),
    ],
)
def test_step_checks_what_loss_and_metrics_return(setup, loss_fn, metrics, error, message):
    model, params, x, y = setup
    optimizer = optax.sgd(0.1)
    step = jnn.make_train_step(model, loss_fn, optimizer, metrics=metrics, donate=False)
    with pytest.raises(error, match=message):
        step(params, optimizer.init(params), (x, y))


@pytest.mark.parametrize(
    ("made_with", "used_with", "message"),
    [
        (
            optax.adam(1e-3),
            optax.sgd(0.1),  # would run, silently ignoring Adam's moments
            r"it holds \(ScaleByAdamState, EmptyState\), and optimizer\.init\(params\) makes "
            r"\(EmptyState, EmptyState\)",
        ),
        (
            optax.sgd(0.1, momentum=0.9),
            optax.adam(1e-3),  # would fail inside optax: 'TraceState' has no attribute 'mu'
            r"it holds \(TraceState, EmptyState\), and optimizer\.init\(params\) makes "
            r"\(ScaleByAdamState, EmptyState\)",
        ),
    ],
)
def test_an_optimizer_state_from_another_optimizer_is_refused(
    setup, key, made_with, used_with, message
):
    model, _, x, y = setup
    ts = jnn.init_train_state(model, made_with, key, x[:1])
    hint = r"\. Hint: pass the optimizer the train state was made with"
    with pytest.raises(
        TypeError, match=rf"^fit: the optimizer state does not fit.*{message}{hint}"
    ):
        jnn.fit(model, ts, cross_entropy, used_with, (x, y), batch_size=32, progress=False)
    step = jnn.make_train_step(model, cross_entropy, used_with)
    with pytest.raises(TypeError, match=rf"^make_train_step: the optimizer state.*{message}"):
        step(ts, (x, y))


def test_a_batch_that_is_not_a_pair_is_named(setup, key):
    model, _, x, y = setup
    ts = jnn.init_train_state(model, optax.sgd(0.1), key, x[:1])
    step = jnn.make_train_step(model, cross_entropy, optax.sgd(0.1))
    with pytest.raises(
        TypeError,
        match=rf"^make_train_step: expected a batch \(inputs, targets\), got an array of shape "
        rf"\({x.shape[0]}, {x.shape[1]}\)\. Hint: for several inputs use \(\(x1, x2\), targets\)",
    ):
        step(ts, x)


def test_an_optimizer_state_for_other_params_is_refused(setup, key):
    model, _, x, y = setup
    wider = jnn.init_train_state(jnn.MLP([9, 2]), optax.adam(1e-3), key, x[:1])
    ts = wider._replace(params=model.init(key, x[:1]))
    step = jnn.make_train_step(model, cross_entropy, optax.adam(1e-3))
    with pytest.raises(
        TypeError,
        match=r"opt_state\[0\]\.mu\['dense_0'\]\['bias'\] has shape \(9,\), and "
        r"optimizer\.init\(params\) makes \(8,\) \(a state made for other params\?\)",
    ):
        step(ts, (x, y))
