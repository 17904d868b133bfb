"""Sharding: rules to specs on plain trees (in process), and training on 8 virtual CPU devices
(one clean subprocess: the device count is fixed when JAX starts, and the rest of the suite
must keep its single device)."""

import json
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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jnn
from jnn._sharding import (
    batch_sharding,
    fully_sharded,
    fully_sharded_specs,
    leaf_path,
    make_mesh,
    named_shardings,
    partition_specs,
    shard,
)

# Data parallelism, FSDP and tensor parallelism change only the order of floating-point
# sums. Measured in float32, with and without the suite's fast-compile flags: relative loss
# differences below 6e-7, parameter differences after 5 adam steps below 7e-6.
LOSS_RTOL = 1e-5
PARAMS_ATOL = 5e-5

PARAMS = {
    "encoder": {"dense_0": {"weight": jnp.ones((4, 8)), "bias": jnp.ones(8)}},
    "head": {"weight": jnp.ones((8, 2)), "bias": jnp.ones(2)},
}


# ------------------------------------------------------------------------ partition_specs


def test_first_matching_rule_wins_and_the_default_fills_the_rest():
    rules = [("encoder/.*/weight$", P(None, "model")), ("weight$", P("data")), ("x", P("y"))]
    specs = partition_specs(PARAMS, rules, default=P("z"))
    assert specs == {
        "encoder": {"dense_0": {"weight": P(None, "model"), "bias": P("z")}},
        "head": {"weight": P("data"), "bias": P("z")},
    }
    assert partition_specs(PARAMS) == jax.tree.map(lambda _: P(), PARAMS)


def test_rules_may_be_a_dict_and_patterns_compiled():
    rules = {r"head/weight": P("model"), re.compile("bias"): P()}
    specs = partition_specs(PARAMS, rules)
    assert specs["head"]["weight"] == P("model") and specs["head"]["bias"] == P()


def test_scalars_and_keys_are_always_replicated():
    tree = {"count": jnp.zeros((), jnp.int32), "key": jax.random.key(0), "lr": 0.1}
    tree["keys"] = jax.random.split(jax.random.key(0), 4)
    specs = partition_specs(tree, [(".", P("data"))], default=P("data"))
    assert specs == {"count": P(), "key": P(), "lr": P(), "keys": P()}


def test_optimizer_moments_get_the_spec_of_their_param():
    model, optimizer = jnn.MLP([8, 2]), optax.adam(1e-3)
    state = jnn.init_train_state(model, optimizer, jax.random.key(0), jnp.ones((4, 3)))
    rules = [("dense_0/weight$", P(None, "model")), ("dense_1/bias$", P("model"))]
    specs = partition_specs(state, rules)
    flat = {leaf_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(specs)[0]}
    assert flat["params/dense_0/weight"] == P(None, "model")
    assert flat["opt_state/0/mu/dense_0/weight"] == P(None, "model")
    assert flat["opt_state/0/nu/dense_0/weight"] == P(None, "model")
    assert flat["opt_state/0/nu/dense_1/bias"] == P("model")
    assert flat["opt_state/0/count"] == P() and flat["step"] == P() and flat["key"] == P()
    assert flat["params/dense_1/weight"] == P()


def test_shapes_from_eval_shape_work():
    model = jnn.MLP([8, 2])
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((4, 3), "f4"))
    specs = partition_specs(shapes, [("weight", P(None, "model"))])
    assert specs["dense_1"]["weight"] == P(None, "model") and specs["dense_1"]["bias"] == P()


def test_leaf_paths_join_dict_sequence_and_attribute_keys():
    tree = {"a": [{"b": 1}, (2, 3)], "z": optax.ScaleByAdamState(count=5, mu={4: 6}, nu=7)}
    paths = [leaf_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert paths == ["a/0/b", "a/1/0", "a/1/1", "z/count", "z/mu/4", "z/nu"]


def test_a_spec_longer_than_the_rank_names_the_path_the_spec_and_the_shape():
    with pytest.raises(
        ValueError,
        match=r"partition_specs: rule 0 \('dense_0/'\) gives 'encoder/dense_0/bias' of shape \(8,\) the spec P\(None, 'model'\), with 2 entries for an array of rank 1\. Make the pattern",
    ):
        partition_specs(PARAMS, [("dense_0/", P(None, "model"))])
    with pytest.raises(
        ValueError, match=r"the default gives 'encoder/dense_0/bias' of shape \(8,\)"
    ):
        partition_specs(PARAMS, default=P(None, "model"))


def test_bad_rules_are_refused():
    with pytest.raises(
        ValueError, match=r"partition_specs: the pattern of rule 0, '\(', is not a valid regex"
    ):
        partition_specs(PARAMS, [("(", P())])
    with pytest.raises(
        TypeError,
        match=r"expected the spec of rule 1 to be a jax.sharding.PartitionSpec, got tuple",
    ):
        partition_specs(PARAMS, [("a", P()), ("weight", (None, "model"))])
    with pytest.raises(TypeError, match=r"expected rule 0 to be a \(pattern, PartitionSpec\) pair"):
        partition_specs(PARAMS, [("weight",)])
    with pytest.raises(TypeError, match=r"expected rules to be a sequence"):
        partition_specs(PARAMS, "weight")
    with pytest.raises(
        TypeError, match=r"expected the pattern of rule 0 to be a regex string, got int"
    ):
        partition_specs(PARAMS, [(3, P())])
    with pytest.raises(TypeError, match=r"expected default to be a jax.sharding.PartitionSpec"):
        partition_specs(PARAMS, default=None)


# ------------------------------------------------------------------------ one-device mesh


def test_shard_places_every_leaf_with_its_spec():
    mesh = make_mesh((1, 1), ("data", "model"))
    placed = shard(PARAMS, mesh, [("weight$", P(None, "model"))])
    assert placed["head"]["weight"].sharding == NamedSharding(mesh, P(None, "model"))
    assert placed["head"]["bias"].sharding.spec == P()
    assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, placed, PARAMS)))
    shardings = named_shardings(PARAMS, mesh, [("weight$", P(None, "model"))])
    assert jax.tree.map(lambda a: a.sharding, placed) == shardings


def test_shard_replicates_keys_of_a_train_state():
    mesh = make_mesh((1,), ("data",))
    state = jnn.init_train_state(jnn.Dense(2), optax.sgd(0.1), jax.random.key(0), jnp.ones((1, 3)))
    placed = shard(state, mesh, default=P())
    assert placed.key.sharding.spec == P() and jax.dtypes.issubdtype(
        placed.key.dtype, jax.dtypes.prng_key
    )


def test_mesh_checks_name_the_axis_and_the_path():
    mesh = make_mesh((1, 1), ("data", "model"))
    with pytest.raises(
        ValueError,
        match=r"shard: mesh axis 'tensor' \(in the spec P\('tensor',\) of 'head/weight'\) is not in the mesh, whose axes are \{'data': 1, 'model': 1\}\.",
    ):
        shard(PARAMS, mesh, [("head/weight", P("tensor"))])
    with pytest.raises(
        ValueError,
        match=r"the spec P\('data', 'data'\) of 'head/weight' uses mesh axis 'data' twice",
    ):
        named_shardings(PARAMS, mesh, [("head/weight", P("data", "data"))])
    with pytest.raises(TypeError, match=r"shard: expected mesh to be a jax.sharding.Mesh"):
        shard(PARAMS, jax.devices())
    with pytest.raises(ValueError, match=r"batch_sharding: mesh axis 'batch' is not in the mesh"):
        batch_sharding(mesh, "batch")


def test_batch_sharding_splits_the_leading_axis():
    mesh = make_mesh((1, 1), ("data", "model"))
    assert batch_sharding(mesh) == NamedSharding(mesh, P("data"))
    assert batch_sharding(mesh, ("data", "model")).spec == P(("data", "model"))


def test_fully_sharded_splits_the_largest_axis_of_large_leaves():
    mesh = make_mesh((1,), ("data",))
    tree = {"w": jnp.ones((64, 128)), "v": jnp.ones((32, 32, 4)), "b": jnp.ones(128), "n": 3}
    assert fully_sharded_specs(tree, mesh) == {
        "w": P(None, "data"),
        "v": P("data"),
        "b": P(),
        "n": P(),
    }
    assert fully_sharded_specs(tree, mesh, min_size=0)["b"] == P("data")
    placed = fully_sharded(tree, mesh)
    assert placed["w"].sharding.spec == P(None, "data")
    with pytest.raises(
        ValueError, match=r"fully_sharded_specs: mesh axis 'model' is not in the mesh"
    ):
        fully_sharded(tree, mesh, "model")
    with pytest.raises(ValueError, match=r"expected min_size >= 0, got -1"):
        fully_sharded_specs(tree, mesh, min_size=-1)


def test_make_mesh_uses_auto_axes():
    mesh = make_mesh((1,), ("data",))
    if hasattr(jax.sharding, "AxisType"):
        assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


# ------------------------------------------------------------------------ 8 virtual devices

EIGHT_DEVICES = """
    import json, time
    start = time.perf_counter()
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    import jnn
    from jnn._sharding import batch_sharding, fully_sharded, leaf_path, make_mesh, shard

    model = jnn.TransformerLM(vocab_size=32, num_layers=2, features=32, num_heads=4)
    optimizer = optax.adam(1e-2)
    tokens = np.random.default_rng(0).integers(0, 32, (5, 16, 17)).astype(np.int32)
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
    state0 = jnn.init_train_state(model, optimizer, jax.random.key(0), batches[0][0])
    loss = jnn.softmax_cross_entropy_with_integer_labels
    step = jnn.make_train_step(model, loss, optimizer, jit=False)

    def train(state, mesh=None, keep_layout=False):
        kwargs = {}
        if keep_layout:  # without out_shardings XLA may choose another layout
            layout = jax.tree.map(lambda a: a.sharding, state)
            kwargs["out_shardings"] = (layout, NamedSharding(mesh, P()))
        compiled = jax.jit(step, **kwargs)
        losses = []
        for batch in batches:
            if mesh is not None:
                batch = jax.device_put(batch, batch_sharding(mesh))
            state, logs = compiled(state, batch)
            losses.append(float(logs["loss"]))
        return state, losses

    def by_path(tree, fn):
        return {leaf_path(p): fn(a) for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}

    def report(state, losses):
        diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, reference.params)
        return {
            "losses": losses,
            "max_param_diff": max(jax.tree.leaves(diffs)),
            "specs": by_path(state, lambda a: [list(e) if isinstance(e, tuple) else e for e in a.sharding.spec]),
            "devices": by_path(state, lambda a: len(a.sharding.device_set)),
            "bytes": by_path(state, lambda a: [a.nbytes, a.addressable_shards[0].data.nbytes]),
        }

    out = {"device_count": jax.device_count()}
    reference, losses = train(state0)
    out["reference"] = {"losses": losses}

    data = make_mesh((8,), ("data",))
    out["data_parallel"] = report(*train(shard(state0, data), data))
    out["fsdp"] = report(*train(fully_sharded(state0, data, "data"), data, keep_layout=True))

    mesh = make_mesh((2, 4), ("data", "model"))
    rules = [
        (r"attention/(query|key|value)/weight$", P(None, "model", None)),
        (r"attention/(query|key|value)/bias$", P("model", None)),
        (r"attention/output/weight$", P("model", None, None)),
        (r"mlp/dense_0/weight$", P(None, "model")),
        (r"mlp/dense_0/bias$", P("model")),
        (r"mlp/dense_1/weight$", P("model", None)),
    ]
    out["tensor_parallel"] = report(*train(shard(state0, mesh, rules), mesh, keep_layout=True))

    errors = {}
    for label, call in {
        "not_divisible": lambda: shard(state0.params, data, [("query/weight$", P(None, "data"))]),
        "not_divisible_joint": lambda: shard(state0, mesh, [("query/weight$", P(None, ("data", "model")))]),
        "too_long": lambda: shard(state0, mesh, [("mlp/dense_0/", P(None, "model"))]),
    }.items():
        try:
            call()
            errors[label] = None
        except ValueError as error:
            errors[label] = str(error)
    out["errors"] = errors
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight():
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EIGHT_DEVICES)],
        env=os.environ | {"XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_losses(eight, run):
    np.testing.assert_allclose(eight[run]["losses"], eight["reference"]["losses"], rtol=LOSS_RTOL)
    assert eight[run]["max_param_diff"] < PARAMS_ATOL


def test_the_subprocess_sees_eight_devices(eight):
    assert eight["device_count"] == 8
    losses = eight["reference"]["losses"]
    assert len(losses) == 5 and losses[-1] < losses[0]


def test_data_parallel_matches_one_device(eight):
    same_losses(eight, "data_parallel")
    run = eight["data_parallel"]
    assert run["devices"]["params/embed/embedding"] == 8
    assert run["specs"]["params/block_0/mlp/dense_0/weight"] == []


def test_fsdp_matches_one_device_and_holds_an_eighth_of_each_large_leaf(eight):
    same_losses(eight, "fsdp")
    run = eight["fsdp"]
    specs, sizes = run["specs"], run["bytes"]
    assert specs["params/block_0/mlp/dense_0/weight"] == [None, "data"]  # [32, 128]
    assert specs["params/block_1/attention/output/weight"] == [None, None, "data"]  # [4, 8, 32]
    assert specs["opt_state/0/mu/block_1/mlp/dense_1/weight"] == ["data"]
    assert specs["params/block_0/norm_1/scale"] == [] and specs["key"] == []
    large = [path for path, (total, _) in sizes.items() if total >= 4096]
    assert len(large) == 3 * (6 * 2 + 1)  # params, mu, nu: 6 kernels a block, the embedding
    for path in large:
        total, local = sizes[path]
        assert local * 8 == total, path
    params = [v for p, v in sizes.items() if p.startswith("params/")]
    assert sum(local for _, local in params) < 0.2 * sum(total for total, _ in params)


def test_data_and_tensor_parallel_on_a_2x4_mesh_matches_one_device(eight):
    same_losses(eight, "tensor_parallel")
    specs = eight["tensor_parallel"]["specs"]
    for prefix in ("params/", "opt_state/0/mu/", "opt_state/0/nu/"):
        assert specs[prefix + "block_0/mlp/dense_0/weight"] == [None, "model"]
        assert specs[prefix + "block_1/mlp/dense_1/weight"] == ["model", None]
        assert specs[prefix + "block_1/attention/query/weight"] == [None, "model", None]
        assert specs[prefix + "block_0/attention/output/weight"] == ["model", None, None]
        assert specs[prefix + "block_0/mlp/dense_1/bias"] == []
        assert specs[prefix + "embed/embedding"] == []


def test_errors_on_eight_devices_name_the_path_the_spec_and_the_shape(eight):
    errors = eight["errors"]
    assert errors["not_divisible"] == (
        "shard: 'block_0/attention/query/weight' of shape (32, 4, 8) cannot take the spec "
        "P(None, 'data'): axis 1 has size 4, not divisible by the 8 devices of mesh axis "
        "'data'. Replicate that axis (None) or pick a mesh that divides it."
    )
    assert (
        "'params/block_0/attention/query/weight' of shape (32, 4, 8)"
        in errors["not_divisible_joint"]
    )
    assert "8 devices of mesh axes ('data', 'model')" in errors["not_divisible_joint"]
    assert errors["too_long"].startswith(
        "partition_specs: rule 0 ('mlp/dense_0/') gives 'params/block_0/mlp/dense_0/bias' of "
        "shape (128,) the spec P(None, 'model'), with 2 entries for an array of rank 1."
    )


def test_the_eight_device_checks_stay_fast(eight):
    assert eight["seconds"] < 60
