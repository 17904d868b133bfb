"""Sharding: rules to specs on plain trees (in process), and training on 8 virtual CPU devices
(one clean subprocess: the device count is fixed when JAX starts, and the rest of the suite
must keep its single device)."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jnn
from jnn._partition import fully_sharded_specs, leaf_path, partition_specs
from jnn._sharding import (
    batch_sharding,
    fully_sharded,
    make_mesh,
    named_shardings,
    shard,
    shard_batch,
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


def test_shard_batch_splits_every_leaf_and_checks_it_has_a_batch_axis():
    mesh = make_mesh((1,), ("data",))
    x, y = shard_batch((np.ones((4, 3), np.float32), np.arange(4)), mesh)
    assert x.sharding == NamedSharding(mesh, P("data")) and y.sharding.spec == P("data")
    np.testing.assert_array_equal(y, np.arange(4))
    with pytest.raises(
        ValueError, match=r"shard_batch: the batch leaf '1' is a scalar; expected a leading"
    ):
        shard_batch((np.ones(4), 3.0), mesh)
    with pytest.raises(ValueError, match=r"shard_batch: mesh axis 'model' is not in the mesh"):
        shard_batch(np.ones(4), mesh, "model")


def test_fit_on_a_one_device_mesh_equals_fit_without_one(two_class_data):
    model, optimizer = jnn.MLP([8, 2]), optax.adam(1e-2)
    x, y = two_class_data
    state = jnn.init_train_state(model, optimizer, jax.random.key(0), x[:1])
    loss = jnn.softmax_cross_entropy_with_integer_labels
    mesh = make_mesh((1,), ("data",))
    for steps in (1, 4):
        options = dict(epochs=2, batch_size=16, steps_per_call=steps, progress=False)
        plain = jnn.fit(model, state, loss, optimizer, (x, y), **options)
        placed = jnn.fit(model, state, loss, optimizer, (x, y), mesh=mesh, **options)
        assert placed.history == plain.history
        chex.assert_trees_all_equal(placed.params, plain.params)
        assert placed.params["dense_0"]["weight"].sharding == NamedSharding(mesh, P())


def test_fit_refuses_a_bad_mesh_and_a_population_on_a_mesh(two_class_data):
    model, optimizer = jnn.MLP([2]), optax.sgd(0.1)
    x, y = two_class_data
    state = jnn.init_train_state(model, optimizer, jax.random.key(0), x[:1])
    loss = jnn.softmax_cross_entropy_with_integer_labels
    with pytest.raises(TypeError, match=r"fit: expected mesh to be a jax.sharding.Mesh"):
        jnn.fit(model, state, loss, optimizer, (x, y), mesh=jax.devices())
    mesh = make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match=r"fit: mesh axis 'batch' is not in the mesh"):
        jnn.fit(model, state, loss, optimizer, (x, y), mesh=mesh, batch_axis="batch")
    with pytest.raises(
        TypeError, match=r"fit: expected the batch axis to be a mesh axis name or a tuple"
    ):
        jnn.fit(model, state, loss, optimizer, (x, y), mesh=mesh, batch_axis=3)
    population = jax.vmap(lambda k: jnn.init_train_state(model, optimizer, k, x[:1]))(
        jax.random.split(jax.random.key(0), 2)
    )
    with pytest.raises(ValueError, match=r"fit: mesh= and population=True cannot be combined"):
        jnn.fit(model, population, loss, optimizer, (x, y), mesh=mesh, population=True)


def test_make_mesh_uses_auto_axes():
    mesh = make_mesh((1,), ("data",))
    if hasattr(jax.sharding, "AxisType"):
        assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


# ------------------------------------------------------------------------ 8 virtual devices
# Whole training runs in subprocesses: the slow group (`pytest -m slow`, run by CI), all
# on one xdist worker, so the 8-device run (the module fixture) happens once.

HERE = Path(__file__).resolve().parent


def run_script(args, devices=None):
    """Run a script of tests/ in a clean process; only its last stdout line is read."""
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    if devices is not None:
        flags = (
            f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
        )
        env["XLA_FLAGS"] = flags.strip()
    return subprocess.Popen(
        [sys.executable, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def eight():
    process = run_script([HERE / "sharding_eight_devices.py"], devices=8)
    out, err = process.communicate(timeout=400)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def same_losses(eight, run):
    np.testing.assert_allclose(eight[run]["losses"], eight["reference"]["losses"], rtol=LOSS_RTOL)
    assert eight[run]["max_param_diff"] < PARAMS_ATOL


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_the_subprocess_sees_eight_devices(eight):
    assert eight["device_count"] == 8
    losses = eight["reference"]["losses"]
    assert len(losses) == 5 and losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_data_parallel_matches_one_device(eight):
    same_losses(eight, "data_parallel")
    run = eight["data_parallel"]
    assert run["devices"]["params/embed/embedding"] == 8
    assert run["specs"]["params/block_0/mlp/dense_0/weight"] == []


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
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


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_data_and_tensor_parallel_on_a_2x4_mesh_matches_one_device(eight):
    same_losses(eight, "tensor_parallel")
    specs = eight["tensor_parallel"]["specs"]
    for prefix in ("params/", "opt_state/0/mu/", "opt_state/0/nu/"):
        assert specs[prefix + "block_0/mlp/dense_0/weight"] == [None, "model"]
        assert specs[prefix + "block_1/mlp/dense_1/weight"] == ["model"]
        assert specs[prefix + "block_1/attention/query/weight"] == [None, "model"]
        assert specs[prefix + "block_0/attention/output/weight"] == ["model"]
        assert specs[prefix + "block_0/mlp/dense_1/bias"] == []
        assert specs[prefix + "embed/embedding"] == []


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
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


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_fit_on_a_mesh_matches_one_device_in_both_modes(eight):
    reference = eight["fit_reference"]
    assert reference["mode"] == "device"
    for run, mode in (("fit_data_parallel_host", "host"), ("fit_tensor_parallel_device", "device")):
        result = eight[run]
        assert result["mode"] == mode
        for name in ("loss", "eval_loss"):
            np.testing.assert_allclose(
                result["history"][name], reference["history"][name], rtol=LOSS_RTOL
            )
        # 10 adam steps moved the params by up to 0.095; the layouts agree to 1e-4 of that
        assert result["max_param_diff"] < 1e-4 * reference["max_param_change"] + PARAMS_ATOL
    data_parallel = eight["fit_data_parallel_host"]
    assert data_parallel["specs"]["params/block_0/mlp/dense_0/weight"] == []
    assert data_parallel["devices"]["params/block_0/mlp/dense_0/weight"] == 8
    tensor = eight["fit_tensor_parallel_device"]["specs"]  # fit kept the layout it was given
    assert tensor["params/block_0/mlp/dense_0/weight"] == [None, "model"]
    assert tensor["opt_state/0/nu/block_1/attention/output/weight"] == ["model"]


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_a_checkpoint_saved_on_one_mesh_resumes_on_another(eight):
    resumed = eight["resumed"]  # epoch 1 fully sharded on 8 devices, epoch 2 on 2x4
    assert resumed["initial_epoch"] == 1
    np.testing.assert_allclose(
        resumed["history"]["loss"], eight["fit_reference"]["history"]["loss"], rtol=LOSS_RTOL
    )
    assert resumed["max_param_diff"] < PARAMS_ATOL
    assert resumed["specs"]["params/block_1/mlp/dense_1/weight"] == ["model"]
    assert eight["restored"] == {"equal": True, "same_layout": True}


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_batch_norm_statistics_cover_the_whole_batch_across_devices(eight):
    # 16 examples on 8 devices is 2 per device: per-device statistics would differ widely
    norm = eight["batch_norm"]
    assert norm["state_diff"] < 1e-6 and norm["params_diff"] < 1e-6
    assert norm["shard_map_diff"] < 1e-5  # axis_name inside shard_map: the same numbers


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_batch_and_fit_errors_name_the_sizes_and_the_axis(eight):
    errors = eight["errors"]
    assert errors["batch_rows"] == (
        "shard_batch: the batch leaf 'tokens' has shape (12, 17); its leading size 12 is not "
        "divisible by the 8 devices of mesh axis 'data'. Hint: use a batch size that is a "
        "multiple of it."
    )
    assert errors["fit_batch_size"] == (
        "fit: batch_size 12 cannot be split evenly over the 8 devices of mesh axis 'data'. "
        "Hint: use a multiple of 8."
    )
    assert errors["fit_tail"].startswith(
        "fit: the last batch of each epoch would hold 4 examples, which the 8 devices of mesh "
        "axis 'data' cannot split evenly. Hint: pass drop_last=True"
    )


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_per_device_bytes_by_strategy(eight):
    # FSDP and tensor parallelism hold less per device than replication; the numbers are
    # the ones docs/scaling.md reports.
    def local(run, prefix=""):
        return sum(v[1] for p, v in eight[run]["bytes"].items() if p.startswith(prefix))

    replicated, fsdp = local("data_parallel"), local("fsdp")
    tensor = local("tensor_parallel")
    assert fsdp < 0.2 * replicated and tensor < 0.5 * replicated


@pytest.mark.slow
@pytest.mark.xdist_group("eight_devices")
def test_the_eight_device_checks_stay_fast(eight):
    assert eight["seconds"] < 240  # about 60 s alone on 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_data_parallel_over_loopback(tmp_path):
    """jax.distributed.initialize with two local processes of 4 CPU devices each."""
    output, port = tmp_path / "losses.json", free_port()
    script = HERE / "sharding_two_processes.py"
    processes = [run_script([script, i, port, output]) for i in (0, 1)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    result = json.loads(output.read_text())
    assert (result["process_count"], result["device_count"]) == (2, 8)
    assert result["local_device_count"] == 4
    np.testing.assert_allclose(result["losses"], result["reference"], rtol=LOSS_RTOL)
    assert result["fit_error"].startswith("fit: mesh= trains in one process, and this is one of 2")


def test_make_mesh_errors():
    count = len(jax.devices())
    with pytest.raises(
        ValueError, match=rf"^make_mesh: axis sizes \({count + 1},\) need {count + 1} devices, but"
    ):
        make_mesh((count + 1,), ("data",))
    with pytest.raises(ValueError, match=r"^make_mesh: got 1 axis sizes \(1,\) but 2 names"):
        make_mesh((1,), ("data", "model"))
