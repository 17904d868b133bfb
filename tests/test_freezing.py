"""freeze: frozen params stay bit-identical, the rest train as the plain optimizer would,
patterns (globs, subtrees, regexes) and their errors; why optax.masked is not freezing."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jnn


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.fixture
def problem(key):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    model = jnn.Sequential({"encoder": jnn.MLP([8, 8]), "head": jnn.Dense(2)})
    return model, model.init(key, x), x, y


def train(model, params, optimizer, x, y, steps=5):
    step = jnn.make_train_step(model, cross_entropy, optimizer, donate=False)
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(steps):
        params, opt_state, logs = step(params, opt_state, (x, y))
        losses.append(float(logs["loss"]))
    return params, opt_state, losses


def test_frozen_params_stay_bit_identical_and_the_rest_train_as_alone(problem):
    model, params, x, y = problem
    optimizer = optax.adamw(1e-2, weight_decay=0.1)  # decay would move frozen params too
    trained, _, losses = train(model, params, jnn.freeze(optimizer, params, "encoder/*"), x, y)
    for before, after in zip(
        jax.tree.leaves(params["encoder"]), jax.tree.leaves(trained["encoder"]), strict=True
    ):
        np.testing.assert_array_equal(after, before)
        assert after.dtype == before.dtype
    assert losses[-1] < losses[0]

    # Reference: the head alone, trained by the plain optimizer with the encoder fixed.
    def head_loss(head):
        return cross_entropy(model.apply({**params, "head": head}, x), y)

    head, state = params["head"], optimizer.init(params["head"])
    for _ in range(5):
        updates, state = optimizer.update(jax.grad(head_loss)(head), state, head)
        head = optax.apply_updates(head, updates)
    for expected, got in zip(jax.tree.leaves(head), jax.tree.leaves(trained["head"]), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, params["head"]["weight" if got.ndim == 2 else "bias"])


def test_optax_masked_is_not_freezing(problem):
    """masked passes the updates outside the mask through: the raw gradient is added."""
    model, params, x, y = problem
    trainable = {"encoder": jax.tree.map(lambda _: False, params["encoder"])}
    trainable["head"] = jax.tree.map(lambda _: True, params["head"])
    masked, _, _ = train(model, params, optax.masked(optax.adam(1e-2), trainable), x, y, 1)
    grads = jax.grad(lambda p: cross_entropy(model.apply(p, x), y))(params)
    moved = jax.tree.map(lambda a, b: a - b, masked["encoder"], params["encoder"])
    for got, grad in zip(jax.tree.leaves(moved), jax.tree.leaves(grads["encoder"]), strict=True):
        np.testing.assert_allclose(got, grad, rtol=1e-4, atol=1e-6)  # p + g: an ascent step
    frozen, _, _ = train(model, params, jnn.freeze(optax.adam(1e-2), params, "encoder"), x, y, 1)
    for before, after in zip(
        jax.tree.leaves(params["encoder"]), jax.tree.leaves(frozen["encoder"]), strict=True
    ):
        np.testing.assert_array_equal(after, before)


E0 = {"encoder/dense_0/weight", "encoder/dense_0/bias"}
E1 = {"encoder/dense_1/weight", "encoder/dense_1/bias"}
HEAD = {"head/weight", "head/bias"}


@pytest.mark.parametrize(
    ("patterns", "frozen"),
    [
        ("encoder", E0 | E1),  # a subtree
        ("encoder/*", E0 | E1),
        ("/encoder/", E0 | E1),  # slashes at the ends are ignored
        ("*/bias", {"encoder/dense_0/bias", "encoder/dense_1/bias", "head/bias"}),
        (["head", "encoder/dense_1"], HEAD | E1),
        (
            re.compile(r"encoder/dense_\d+/weight"),
            {"encoder/dense_0/weight", "encoder/dense_1/weight"},
        ),
        (re.compile(r"head"), HEAD),  # fullmatch of a subtree's path
    ],
)
def test_patterns_select_params_by_path(problem, patterns, frozen):
    model, params, x, y = problem
    trained, _, _ = train(model, params, jnn.freeze(optax.sgd(0.1), params, patterns), x, y, 2)
    paths, _ = jax.tree_util.tree_flatten_with_path(params)
    for (path, before), after in zip(paths, jax.tree.leaves(trained), strict=True):
        name = "/".join(k.key for k in path)
        assert np.array_equal(after, before) == (name in frozen), name


def test_frozen_params_keep_no_optimizer_state(problem):
    _, params, _, _ = problem
    plain = optax.adam(1e-3)
    frozen = jnn.freeze(plain, params, "encoder")
    size = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))  # noqa: E731
    head = size(params["head"])
    assert size(frozen.init(params)) < size(plain.init(params))
    assert size(frozen.init(params)) == size(plain.init(params["head"]))
    assert head > 0


def test_freeze_with_fit(problem, key):
    model, params, x, y = problem
    optimizer = jnn.freeze(optax.adam(1e-2), params, "head")
    result = jnn.fit(
        model, params, cross_entropy, optimizer, (x, y), key=key, epochs=2, progress=False
    )
    np.testing.assert_array_equal(result.params["head"]["weight"], params["head"]["weight"])
    assert not np.array_equal(
        result.params["encoder"]["dense_0"]["weight"], params["encoder"]["dense_0"]["weight"]
    )


def test_freeze_reads_only_the_names_of_params(problem, key):
    model, params, x, _ = problem
    shapes = jax.eval_shape(model.init, key, jax.ShapeDtypeStruct(x.shape, x.dtype))
    optimizer = jnn.freeze(optax.sgd(0.1), shapes, "encoder")
    updates, _ = optimizer.update(jax.tree.map(jnp.ones_like, params), optimizer.init(params))
    assert float(jnp.abs(updates["encoder"]["dense_0"]["weight"]).max()) == 0.0
    assert float(jnp.abs(updates["head"]["weight"]).max()) == pytest.approx(0.1)


# --------------------------------------------------------------------------- errors


def test_pattern_matching_nothing_raises_and_lists_the_names(problem):
    _, params, _, _ = problem
    with pytest.raises(
        ValueError,
        match=r"^freeze: pattern 'encodr/\*' matches no parameter\. The params hold: encoder, "
        r"encoder/dense_0, encoder/dense_1, head, head/bias, head/weight\. Did you mean "
        r"'encoder' or",
    ):
        jnn.freeze(optax.sgd(0.1), params, "encodr/*")
    with pytest.raises(
        ValueError,
        match=r"pattern 'encoder\.dense_0' matches no parameter\. .* Hint: paths use '/' "
        r"between names, e\.g\. 'encoder/dense_0'\.$",
    ):
        jnn.freeze(optax.sgd(0.1), params, ["head", "encoder.dense_0"])
    with pytest.raises(ValueError, match=r"^freeze: pattern 'dense_\.\*' matches no parameter"):
        jnn.freeze(optax.sgd(0.1), params, re.compile("dense_.*"))  # paths start at the root


def test_freeze_argument_kinds(problem):
    _, params, _, _ = problem
    with pytest.raises(ValueError, match=r"^freeze: expected at least one pattern, got none\.$"):
        jnn.freeze(optax.sgd(0.1), params, [])
    with pytest.raises(
        TypeError,
        match=r"^freeze: expected each pattern to be a string such as 'encoder/\*' or a "
        r"re\.compile\(\.\.\.\) pattern, got 3 \(int\)\.$",
    ):
        jnn.freeze(optax.sgd(0.1), params, ["head", 3])
    with pytest.raises(TypeError, match=r"^freeze: expected patterns as a string, a compiled"):
        jnn.freeze(optax.sgd(0.1), params, {"head"})
    with pytest.raises(
        TypeError,
        match=r"^freeze: expected an optax GradientTransformation as optimizer, got sgd\. Hint: "
        r"call it",
    ):
        jnn.freeze(optax.sgd, params, "head")
    with pytest.raises(jnn.ParamsError, match=r"^freeze: expected params as a dict, got list\."):
        jnn.freeze(optax.sgd(0.1), [params], "head")
