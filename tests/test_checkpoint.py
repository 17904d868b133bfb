"""Checkpoints: bit-exact round trips, refused files, atomic writes (the manager: test_checkpoint_manager.py)."""

import json
import os
import re
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import safetensors.numpy

import jnn


def trained_state(key, width=8):
    """A TrainState of an MLP under Adam after two updates: non-trivial moments, step 2."""
    state = jnn.init_train_state(jnn.MLP([width, 2]), optax.adam(1e-2), key, jnp.ones((4, 3)))
    optimizer = optax.adam(1e-2)
    params, opt_state = state.params, state.opt_state
    for _ in range(2):
        grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return state._replace(params=params, opt_state=opt_state, step=jnp.asarray(2, jnp.int32))


def assert_identical(restored, original):
    """Same structure, and every leaf the same kind, dtype, shape and bytes."""
    assert jax.tree.structure(restored) == jax.tree.structure(original)

    def check(a, b):
        assert type(a) is type(b) or isinstance(a, jax.Array) and isinstance(b, jax.Array)
        assert a.dtype == b.dtype if hasattr(b, "dtype") else True
        if isinstance(b, jax.Array) and jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        a, b = np.asarray(a), np.asarray(b)
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert a.tobytes() == b.tobytes()

    jax.tree.map(check, restored, original)


@pytest.fixture
def tree(key):
    state = trained_state(key)
    return {
        "state": state,
        "best_params": state.params,
        "half": jnp.linspace(-1, 1, 5, dtype=jnp.bfloat16),
        "nothing": None,
        "empty": {},
        "no_items": (),
    }


def test_train_state_round_trip_is_bit_identical(tree, key, tmp_path):
    path = tmp_path / "state.safetensors"
    jnn.save_checkpoint(path, tree)
    fresh = {
        **tree,
        "state": jnn.init_train_state(jnn.MLP([8, 2]), optax.adam(1e-2), key, jnp.ones((4, 3))),
    }
    restored = jnn.load_checkpoint(path, fresh)
    assert_identical(restored, tree)
    assert isinstance(restored["state"], jnn.TrainState)
    assert restored["state"].key.dtype == tree["state"].key.dtype
    assert int(restored["state"].step) == 2
    # A template of shapes only gives the same values.
    assert_identical(jnn.load_checkpoint(path, jax.eval_shape(lambda: tree)), tree)
    # jax.Array leaves come back on the template's sharding.
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(fresh), strict=True):
        assert got.sharding == want.sharding


def test_leaves_are_stored_by_path_in_a_plain_safetensors_file(tree, tmp_path):
    path = tmp_path / "state.safetensors"
    jnn.save_checkpoint(path, tree)
    with safetensors.safe_open(path, framework="np") as file:
        names = set(file.keys())
    assert {
        "state/params/dense_0/weight",
        "state/opt_state/0/mu/dense_1/bias",
        "state/step",
    } <= names
    assert {"state/key", "half", "best_params/dense_1/weight"} <= names
    assert len(names) == len(jax.tree.leaves(tree))


KINDS = {
    "float16": lambda: jnp.arange(6, dtype=jnp.float16).reshape(2, 3),
    "bfloat16": lambda: jnp.array([1e-3, 3.0, -7.5], jnp.bfloat16),
    "float8": lambda: jnp.arange(4, dtype=jnp.float8_e4m3fn),
    "int4": lambda: jnp.arange(-3, 3, dtype=jnp.int4),
    "int8": lambda: jnp.array([-128, 127], jnp.int8),
    "uint32-scalar": lambda: jnp.asarray(4_000_000_000, jnp.uint32),
    "bool": lambda: jnp.array([[True, False]]),
    "complex64": lambda: jnp.array([1 + 2j], jnp.complex64),
    "zero-size": lambda: jnp.zeros((0, 3)),
    "numpy-int64": lambda: np.arange(3, dtype=np.int64),
    "numpy-float64": lambda: np.array(np.pi),
    "numpy-complex128": lambda: np.array([1e-300 + 1j]),
    "numpy-float8-e5m2": lambda: np.arange(3, dtype=ml_dtypes.float8_e5m2),
    "python-int": lambda: 7,
    "python-float": lambda: 0.1,
    "python-bool": lambda: True,
    "threefry-keys": lambda: jax.random.split(jax.random.key(3), 4),
    "rbg-key": lambda: jax.random.key(5, impl="rbg"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_dtype_round_trips(kind, tmp_path):
    value = {"leaf": KINDS[kind]()}
    jnn.save_checkpoint(tmp_path / "x.safetensors", value)
    restored = jnn.load_checkpoint(tmp_path / "x.safetensors", value)
    assert_identical(restored, value)
    assert type(restored["leaf"]) is type(value["leaf"]) or isinstance(value["leaf"], jax.Array)


def test_a_single_array_is_a_tree_too(tmp_path):
    jnn.save_checkpoint(tmp_path / "x.safetensors", jnp.arange(3))
    np.testing.assert_array_equal(
        jnn.load_checkpoint(tmp_path / "x.safetensors", jnp.zeros(3, jnp.int32)), [0, 1, 2]
    )


def test_mismatch_error_lists_every_path_and_loads_nothing(tmp_path):
    saved = {
        "a": jnp.zeros((2, 3)),
        "b": jnp.zeros(4),
        "c": jnp.zeros(1),
        "d": jnp.zeros(2, jnp.int32),
        "key": jax.random.key(0),
    }
    jnn.save_checkpoint(tmp_path / "x.safetensors", saved)
    like = {
        "a": jnp.zeros((3, 2)),
        "b": jnp.zeros(4, jnp.bfloat16),
        "d": jnp.zeros(3),
        "e": jnp.zeros(5),
        "key": jax.random.key(0, impl="rbg"),
    }
    with pytest.raises(jnn.CheckpointError) as info:
        jnn.load_checkpoint(tmp_path / "x.safetensors", like)
    assert isinstance(info.value, ValueError)
    lines = str(info.value).splitlines()
    assert re.fullmatch(
        r"load_checkpoint: the checkpoint '.*x\.safetensors' does not match the tree it is loaded into \(6 paths differ\); nothing was loaded:",
        lines[0],
    )
    assert lines[1:7] == [
        "  a: shape differs: float32[2, 3] in the file, float32[3, 2] expected",
        "  b: dtype differs: float32[4] in the file, bfloat16[4] expected",
        "  d: shape and dtype differ: int32[2] in the file, float32[3] expected",
        "  e: missing in the file (expected float32[5])",
        "  key: dtype differs: key<fry>[] in the file, key<rbg>[] expected",
        "  c: unexpected in the file (float32[1])",
    ]
    assert lines[7].startswith("Hint: build `like` the way the saved tree was built")


def valid_file(tmp_path):
    path = tmp_path / "good.safetensors"
    jnn.save_checkpoint(
        path, {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.asarray(3)}, metadata={"a": 1}
    )
    return path, path.read_bytes()


def test_truncated_files_are_refused(tmp_path):
    path, data = valid_file(tmp_path)
    (header_size,) = struct.unpack("<Q", data[:8])
    like = {"w": jnp.zeros((3, 4)), "step": jnp.asarray(0)}
    cuts = [1, 7, 8, 9, 8 + header_size - 1, 8 + header_size, 8 + header_size + 5, len(data) - 1]
    for cut in cuts:
        cut_path = tmp_path / f"cut_{cut}.safetensors"
        cut_path.write_bytes(data[:cut])
        for read in (lambda p: jnn.load_checkpoint(p, like), jnn.checkpoint_metadata):
            with pytest.raises(
                jnn.CheckpointError,
                match=r"is not a complete safetensors file \(.*\)\. It is truncated, damaged or not a checkpoint\.",
            ):
                read(cut_path)
    (tmp_path / "longer.safetensors").write_bytes(data + b"\0")
    with pytest.raises(jnn.CheckpointError, match="not a complete safetensors file"):
        jnn.load_checkpoint(tmp_path / "longer.safetensors", like)


def test_empty_garbage_and_foreign_files_are_refused(tmp_path):
    like = {"w": jnp.zeros(2)}
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(
        jnn.CheckpointError,
        match=r"'.*empty' is empty \(0 bytes\): not a checkpoint, or a write that never finished\.",
    ):
        jnn.load_checkpoint(tmp_path / "empty", like)
    (tmp_path / "text").write_text("a list of things to do\n" * 10)
    (tmp_path / "noise").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("text", "noise"):
        with pytest.raises(jnn.CheckpointError, match="is not a complete safetensors file"):
            jnn.load_checkpoint(tmp_path / name, like)
    # A valid safetensors file that jnn did not write.
    safetensors.numpy.save_file({"w": np.zeros(2, np.float32)}, tmp_path / "foreign.safetensors")
    with pytest.raises(
        jnn.CheckpointError,
        match=r"is a safetensors file but not a jnn checkpoint \(its header has no 'format': 'jnn.checkpoint'\)\. Hint: read plain safetensors files with safetensors.numpy.load_file\.",
    ):
        jnn.load_checkpoint(tmp_path / "foreign.safetensors", like)
    with pytest.raises(jnn.CheckpointError, match="not a jnn checkpoint"):
        jnn.checkpoint_metadata(tmp_path / "foreign.safetensors")
    header = {"format": "jnn.checkpoint", "version": "2", "metadata": "{}", "encoded": "{}"}
    safetensors.numpy.save_file(
        {"w": np.zeros(2, np.float32)}, tmp_path / "future.safetensors", header
    )
    with pytest.raises(
        jnn.CheckpointError,
        match="is a jnn checkpoint of format version '2'; this jnn reads version '1'",
    ):
        jnn.load_checkpoint(tmp_path / "future.safetensors", like)
    key = {"dtype": "key<fry>", "impl": "threefry2x32", "shape": []}
    for tensor, encoded in (
        (np.zeros(2, np.float32), "{not json"),
        (np.zeros(2, np.float32), "[]"),
        (np.zeros(2, np.float32), {"gone": {"dtype": "int4", "shape": [2]}}),
        (np.zeros(2, np.uint8), {"w": {"dtype": "int4", "shape": [5]}}),
        (np.zeros(2, np.uint8), {"w": {"dtype": "not-a-dtype", "shape": [2]}}),
        (np.zeros(2, np.uint32), {"w": {**key, "impl": "not-an-impl"}}),
        (np.zeros(2, np.uint32), {"w": {**key, "impl": "rbg"}}),  # rbg keys hold 4 words
        (np.zeros(2, np.uint32), {"w": {"impl": "threefry2x32"}}),
    ):
        entries = {**header, "version": "1"}
        entries["encoded"] = encoded if isinstance(encoded, str) else json.dumps(encoded)
        safetensors.numpy.save_file({"w": tensor}, tmp_path / "damaged.safetensors", entries)
        with pytest.raises(
            jnn.CheckpointError, match="the header of '.*damaged.safetensors' is damaged"
        ):
            jnn.load_checkpoint(tmp_path / "damaged.safetensors", like)
    # The same file with a sound record loads.
    entries["encoded"] = json.dumps({"w": key})
    safetensors.numpy.save_file({"w": np.arange(2, dtype=np.uint32)}, tmp_path / "k", entries)
    restored = jnn.load_checkpoint(tmp_path / "k", {"w": jax.random.key(0)})["w"]
    np.testing.assert_array_equal(jax.random.key_data(restored), [0, 1])
    with pytest.raises(
        FileNotFoundError, match="load_checkpoint: no checkpoint file at '.*missing'"
    ):
        jnn.load_checkpoint(tmp_path / "missing", like)


def test_metadata_round_trips_through_the_header(tmp_path):
    metadata = {
        "epoch": 3,
        "config": {"lr": 1e-3, "layers": [8, 2], "name": "run-1"},
        "done": False,
        "note": None,
    }
    jnn.save_checkpoint(tmp_path / "x.safetensors", {"w": jnp.ones(2)}, metadata=metadata)
    assert jnn.checkpoint_metadata(tmp_path / "x.safetensors") == metadata
    jnn.save_checkpoint(tmp_path / "y.safetensors", {"w": jnp.ones(2)})
    assert jnn.checkpoint_metadata(tmp_path / "y.safetensors") == {}


def test_save_refuses_what_it_cannot_store(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(
        TypeError,
        match=r"save_checkpoint: the leaf 'config/name' is a str, not an array\. Hint: put non-array values in metadata=\.\.\., or make them arrays\.",
    ):
        jnn.save_checkpoint(path, {"config": {"name": "mlp"}, "w": jnp.ones(2)})
    with pytest.raises(
        TypeError,
        match=r"save_checkpoint: metadata must be JSON-serialisable .*got Object of type ArrayImpl is not JSON serializable\. Hint: convert arrays first",
    ):
        jnn.save_checkpoint(path, jnp.ones(2), metadata={"loss": jnp.ones(())})
    with pytest.raises(
        TypeError, match=r"save_checkpoint: expected metadata as a dict \(or None\), got list\."
    ):
        jnn.save_checkpoint(path, jnp.ones(2), metadata=[1, 2])
    with pytest.raises(
        ValueError,
        match=r"save_checkpoint: several leaves would be stored under the same name: \['a/b'\]\. Hint: dict keys must not contain '/'\.",
    ):
        jnn.save_checkpoint(path, {"a/b": jnp.ones(1), "a": {"b": jnp.ones(1)}})
    with pytest.raises(
        TypeError,
        match="save_checkpoint: the leaf 'w' has dtype <U3, which a checkpoint cannot hold",
    ):
        jnn.save_checkpoint(path, {"w": np.array(["abc"])})
    donated = jnp.ones(3)
    jax.jit(lambda x: x + 1, donate_argnums=0)(donated)
    with pytest.raises(
        ValueError,
        match=r"save_checkpoint: the array at 'params' has been deleted \(donated to a jitted step\)\. Hint: save the state the step returned",
    ):
        jnn.save_checkpoint(path, {"params": donated})
    with pytest.raises(TypeError, match="save_checkpoint: the leaf 'x' is a traced value"):
        jax.jit(lambda x: jnn.save_checkpoint(path, {"x": x}))(jnp.ones(2))
    assert not path.exists() and os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    jnn.save_checkpoint(path, {"w": jnp.zeros(4)}, metadata={"version": 1})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        jnn.save_checkpoint(path, {"w": jnp.ones(4)}, metadata={"version": 2})
    monkeypatch.undo()
    # A write that fails halfway through the data.
    real = safetensors.numpy.save_file

    def half(tensors, file, metadata):
        real(tensors, file, metadata=metadata)
        with open(file, "r+b") as f:
            f.truncate(os.path.getsize(file) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", half)
    with pytest.raises(KeyboardInterrupt):
        jnn.save_checkpoint(path, {"w": jnp.ones(4)}, metadata={"version": 3})
    assert os.listdir(tmp_path) == ["x.safetensors"]  # no temporary file left behind
    assert jnn.checkpoint_metadata(path) == {"version": 1}
    np.testing.assert_array_equal(jnn.load_checkpoint(path, {"w": jnp.ones(4)})["w"], np.zeros(4))


SHARDED = """
import sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from jnn._checkpoint import load_checkpoint, save_checkpoint
mesh = jax.make_mesh((2,), ("data",))
split, whole = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
tree = {"w": jax.device_put(jnp.arange(8.0).reshape(4, 2), split), "key": jax.random.key(0)}
save_checkpoint(sys.argv[1], tree)
like = {"w": jax.device_put(jnp.zeros((4, 2)), whole), "key": jax.device_put(jax.random.key(1), jax.devices()[1])}
restored = load_checkpoint(sys.argv[1], like)
assert restored["w"].sharding == whole and restored["key"].devices() == {jax.devices()[1]}
np.testing.assert_array_equal(restored["w"], np.arange(8.0).reshape(4, 2))
shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=split), {"w": tree["w"]})
assert load_checkpoint(sys.argv[1], {**shapes, "key": like["key"]})["w"].sharding == split
print("ok")
"""


def test_restored_arrays_take_the_template_sharding(tmp_path):
    """On two (host) devices: a sharded array is saved whole and restored on each
    template leaf's sharding, whether the template holds arrays or shapes."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    run = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tmp_path / "x.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
