"""jnn.summary: rows, shapes, counts and bytes against real init and apply, abstract
tracing of models too large for memory, and the errors."""

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn
from jnn._scope import APPLY_HOOK


def count(tree):
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def nbytes(tree):
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def subtree(tree, path):
    for name in path.split("/") if path else ():
        tree = tree.get(name, {})
    return tree


def quiet(model, *inputs, **kwargs):
    return jnn.summary(model, *inputs, print_fn=None, **kwargs)


def shape_of(row):
    return tuple(row.output.shape)


def small_lm(**kwargs):
    return jnn.TransformerLM(vocab_size=50, num_layers=2, features=16, num_heads=2, **kwargs)


def cnn():
    return jnn.Sequential(
        [jnn.Conv(4, (3, 3)), jnn.BatchNorm(), jnn.relu, jnn.Flatten(), jnn.Dense(3)]
    )


class Gain(jnn.Module):
    """A composite with a parameter of its own beside a child's."""

    def forward(self, scope, x):
        gain = scope.param("gain", jax.nn.initializers.ones, (2,))
        return scope("dense", jnn.Dense(2), x) * gain


# --------------------------------------------------------------------------- rows


def test_mlp_rows_paths_shapes_and_counts(key):
    x = jnp.zeros((4, 3))
    model = jnn.MLP([8, 2])
    result = quiet(model, x)
    assert [(r.path, r.kind, r.depth, shape_of(r)) for r in result.rows] == [
        ("", "MLP", 0, (4, 2)),
        ("dense_0", "Dense", 1, (4, 8)),
        ("dense_1", "Dense", 1, (4, 2)),
    ]
    params = model.init(key, x)
    assert result.total_params == count(params) == 3 * 8 + 8 + 8 * 2 + 2
    assert result.total_bytes == nbytes(params)
    for row in result.rows:
        assert row.params == count(subtree(params, row.path))
        assert row.bytes == nbytes(subtree(params, row.path))
    assert [r.own_params for r in result.rows] == [0, 32, 18]
    assert (result.total_state, result.total_state_bytes) == (0, 0)
    assert result.rows[0].output.dtype == jnp.float32


def test_cnn_with_batch_norm_counts_state_and_passes_is_training(key):
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    model = cnn()
    params, state = model.init_with_state(key, jnp.zeros(x.shape))
    for is_training in (False, True):
        result = quiet(model, x, is_training=is_training)
        assert [(r.path, r.kind, shape_of(r)) for r in result.rows] == [
            ("", "Sequential", (2, 3)),
            ("conv_0", "Conv", (2, 8, 8, 4)),
            ("batch_norm_0", "BatchNorm", (2, 8, 8, 4)),
            ("relu_0", "Lambda", (2, 8, 8, 4)),
            ("flatten_0", "Flatten", (2, 256)),
            ("dense_0", "Dense", (2, 3)),
        ]
        assert result.total_params == count(params)
        assert result.total_state == count(state) == 8
        assert result.total_state_bytes == nbytes(state)
        assert [r.state for r in result.rows] == [8, 0, 8, 0, 0, 0]
        assert [r.params for r in result.rows] == [
            count(subtree(params, r.path)) for r in result.rows
        ]
    text = str(result)
    assert "State" in text and "Total state: 8 (32 B)" in text


def test_transformer_lm_rows_match_apply_and_init(key):
    tokens = jnp.zeros((2, 6), jnp.int32)
    model = small_lm()
    result = quiet(model, tokens)
    params = model.init(key, tokens)
    paths = [r.path for r in result.rows]
    block = [
        "block_0",
        "block_0/norm_1",
        "block_0/attention",
        "block_0/dropout_1",
        "block_0/norm_2",
        "block_0/mlp",
        "block_0/mlp/dense_0",
        "block_0/mlp/dense_1",
        "block_0/dropout_2",
    ]
    second = [p.replace("block_0", "block_1") for p in block]
    assert paths == ["", "embed", *block, *second, "norm", "embed"]
    by_path = {(r.path, r.call): r for r in result.rows}
    assert shape_of(by_path["", 0]) == model.apply(params, tokens).shape == (2, 6, 50)
    assert shape_of(by_path["embed", 0]) == (2, 6, 16)
    assert shape_of(by_path["block_1/mlp/dense_0", 0]) == (2, 6, 64)
    # The tied embedding, called again as the output projection, shares its params.
    tied = by_path["embed", 1]
    assert (tied.kind, shape_of(tied), tied.params) == ("Embedding", (2, 6, 50), 50 * 16)
    assert result.total_params == count(params)
    for row in result.rows:
        assert row.params == count(subtree(params, row.path)), row.path
    assert sum(r.own_params for r in result.rows if r.call == 0) == count(params)
    assert "shared" in str(result)
    untied = quiet(small_lm(tie_embeddings=False), tokens)
    assert [r.path for r in untied.rows][-2:] == ["norm", "head"]


def test_composite_param_is_its_own_and_bytes_follow_dtypes(key):
    x = jnp.zeros((3, 4))
    model = jnn.Sequential(
        {
            "gain": Gain(),
            "half": jnn.Dense(5, param_dtype=jnp.bfloat16),
            "narrow": jnn.Dense(2, param_dtype=jnp.float16),
        }
    )
    result = quiet(model, x)
    params = model.init(key, x)
    rows = {r.path: r for r in result.rows}
    assert (rows["gain"].params, rows["gain"].own_params) == (4 * 2 + 2 + 2, 2)
    assert rows["gain/dense"].own_params == 10
    assert rows["half"].bytes == (2 * 5 + 5) * 2  # bfloat16
    assert rows["narrow"].bytes == (5 * 2 + 2) * 2  # float16
    assert result.total_bytes == nbytes(params) == 12 * 4 + 15 * 2 + 12 * 2
    assert result.rows[0].output == jax.eval_shape(model.apply, params, x)


def test_several_outputs_and_a_static_keyword(key):
    model = jnn.Parallel([jnn.Dense(2), jnn.Dense(3)], merge="tuple")
    result = quiet(model, jnp.zeros((4, 1)))
    assert [tuple(o.shape) for o in result.rows[0].output] == [(4, 2), (4, 3)]
    assert "f32[4,2], f32[4,3]" in str(result)
    block = jnn.TransformerBlock(num_heads=2, mlp_features=8, dropout_rate=0.5)
    x = jax.ShapeDtypeStruct((2, 5, 4), jnp.float32)
    mask = jax.ShapeDtypeStruct((5, 5), jnp.bool_)
    trained = quiet(block, x, mask=mask, is_training=True)  # dropout gets a default key
    assert shape_of(trained.rows[0]) == (2, 5, 4)
    assert trained.total_params == count(block.init(key, jnp.zeros(x.shape)))


def test_repeat_block_has_no_rows_of_its_own(key):
    x = jnp.zeros((2, 4))
    model = jnn.Sequential({"deep": jnn.Repeat(jnn.Residual([jnn.Dense(4), jnn.relu]), 3)})
    result = quiet(model, x)
    assert [(r.path, r.kind) for r in result.rows] == [("", "Sequential"), ("deep", "Repeat")]
    assert result.rows[1].params == count(model.init(key, x)) == 3 * (16 + 4)


def test_depth_limits_rows_but_not_totals():
    tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    full = quiet(small_lm(), tokens)
    top = quiet(small_lm(), tokens, depth=1)
    assert [r.path for r in top.rows] == ["", "embed", "block_0", "block_1", "norm", "embed"]
    assert [r.path for r in quiet(small_lm(), tokens, depth=0).rows] == [""]
    assert top.total_params == full.total_params and top.total_bytes == full.total_bytes
    assert top.rows[2] == next(r for r in full.rows if r.path == "block_0")


# --------------------------------------------------------------------------- the table


def test_table_is_printed_and_holds_rows_and_totals(capsys):
    result = jnn.summary(jnn.MLP([8, 2]), jnp.zeros((4, 3)))
    printed = capsys.readouterr().out
    assert printed == str(result) + "\n"
    lines = printed.splitlines()
    assert lines[0].split() == ["Path", "Kind", "Output", "Params", "Bytes"]
    assert lines[3].split() == ["dense_0", "Dense", "f32[4,8]", "32", "128", "B"]
    assert lines[-1] == "Total params: 50 (200 B)"
    assert repr(result) == "Summary(MLP: 3 rows, 50 params, 200 B)"
    seen = []
    jnn.summary(jnn.MLP([8, 2]), jnp.zeros((4, 3)), print_fn=seen.append)
    assert seen == [str(result)]


def test_bytes_are_shown_in_binary_units():
    text = str(quiet(jnn.Dense(1024), jax.ShapeDtypeStruct((1, 1024), jnp.float32)))
    assert "1,049,600" in text and "4.0 MiB" in text  # (1024 * 1024 + 1024) * 4 bytes


# --------------------------------------------------------------------------- nothing allocated


def test_one_billion_parameter_lm_is_summarised_without_allocating():
    # 1.1e9 float32 parameters, 4.1 GiB: summary must not allocate them.
    model = jnn.TransformerLM(vocab_size=50_000, num_layers=20, features=2048, num_heads=16)
    tokens = jax.ShapeDtypeStruct((1, 1024), jnp.int32)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    result = quiet(model, tokens, depth=1)
    elapsed = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    block = 4 * 2048 * 2048 + 4 * 2048 + 2 * 2048 * 8192 + 8192 + 2048 + 4 * 2048
    assert result.total_params == 50_000 * 2048 + 20 * block + 2 * 2048 == 1_109_569_536
    assert result.total_bytes == 4 * result.total_params
    assert shape_of(result.rows[0]) == (1, 1024, 50_000)
    assert grown < 1024 * 1024, f"peak memory grew by {grown} KiB"
    assert elapsed < 30, f"took {elapsed:.1f} s"  # about 1 s on two CPU cores


def test_model_far_larger_than_memory():
    # 2.1e11 float32 parameters, 780 GiB: any attempt to allocate them would fail at once.
    model = jnn.TransformerLM(vocab_size=50_000, num_layers=4, features=65_536, num_heads=64)
    result = quiet(model, jax.ShapeDtypeStruct((1, 8), jnp.int32), depth=1)
    assert result.total_params == 209_438_769_152
    assert "Total params: 209,438,769,152 (780.2 GiB)" in str(result)


# --------------------------------------------------------------------------- errors


def test_model_must_be_a_module():
    with pytest.raises(
        TypeError, match="summary: expected a jnn.Module as the model, got function"
    ):
        jnn.summary(lambda x: x, jnp.zeros(3))
    with pytest.raises(
        TypeError, match=r"got the class Dense. Hint: create it first: Dense\(...\)"
    ):
        jnn.summary(jnn.Dense, jnp.zeros(3))


def test_sample_inputs_are_required_and_must_be_arrays():
    with pytest.raises(TypeError, match="summary: expected at least one sample input for MLP"):
        jnn.summary(jnn.MLP([2]))
    with pytest.raises(TypeError, match="got a Python list as input 0. Hint: convert it"):
        jnn.summary(jnn.MLP([2]), [[1.0, 2.0]])
    with pytest.raises(TypeError, match="got a str in input 0"):
        jnn.summary(jnn.MLP([2]), "tokens")


def test_wrong_shapes_are_reported_by_summary_naming_the_layer():
    tokens = jnp.zeros((6,), jnp.int32)  # no batch axis
    with pytest.raises(jnn.ShapeError, match=r"^summary: TransformerLM: expected token ids") as e:
        quiet(small_lm(), tokens)
    assert "while tracing TransformerLM.init_with_state on i32[6]" in str(e.value)
    model = jnn.Sequential([jnn.Dense(2), jnn.Reshape((3,))])
    with pytest.raises(jnn.LayerError, match=r"^summary: .*Reshape") as e:
        quiet(model, jnp.zeros((4, 5)))
    assert "f32[4,5]" in str(e.value)
    with pytest.raises(jnn.DTypeError, match="^summary: .*integer"):
        quiet(small_lm(), jnp.zeros((2, 6)))  # float tokens
    assert APPLY_HOOK.get() is None  # the recorder is gone after a failure too


def test_bad_options():
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="summary: depth must be a non-negative int, got -1"):
        jnn.summary(jnn.MLP([2]), x, depth=-1)
    with pytest.raises(TypeError, match="summary: depth must be an int or None, got 1.5"):
        jnn.summary(jnn.MLP([2]), x, depth=1.5)
    with pytest.raises(TypeError, match="summary: print_fn must be callable or None, got str"):
        jnn.summary(jnn.MLP([2]), x, print_fn="stdout")
    with pytest.raises(TypeError, match="summary: got state=, but the state comes from"):
        jnn.summary(cnn(), jnp.zeros((1, 4, 4, 1)), state={})


def test_summary_leaves_no_hook_and_apply_is_unchanged(key):
    x = jnp.ones((2, 3))
    model = jnn.MLP([4, 2])
    params = model.init(key, x)
    before = model.apply(params, x)
    quiet(model, x)
    assert APPLY_HOOK.get() is None
    np.testing.assert_array_equal(model.apply(params, x), before)


def test_wrappers_with_the_models_params_list_its_layers():
    """MixedPrecision and a remat'd block run a model whose params are their own: its
    layers get rows at the same paths, with the dtypes they compute in."""
    mixed = jnn.MixedPrecision(jnn.MLP([16, 10]), jnp.bfloat16)
    result = jnn.summary(mixed, jnp.zeros((2, 8)), print_fn=None)
    assert [(r.path, r.kind, str(r.output.dtype)) for r in result.rows] == [
        ("", "MixedPrecision", "float32"),
        ("dense_0", "Dense", "bfloat16"),
        ("dense_1", "Dense", "bfloat16"),
    ]
    assert result.rows[0].own_params == 0 and result.total_params == 8 * 16 + 16 + 16 * 10 + 10
    lm = jnn.TransformerLM(40, 1, features=16, num_heads=2, max_length=8, remat=True)
    rows = jnn.summary(lm, jnp.zeros((2, 8), jnp.int32), print_fn=None).rows
    kinds = {r.path: r.kind for r in rows}
    assert kinds["block_0"] == "TransformerBlock (remat)"
    assert kinds["block_0/attention"] == "MultiHeadAttention"
