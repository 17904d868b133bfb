"""The multi-device half of tests/test_sharding.py, run by it as a script in a clean process
with 8 virtual CPU devices (the device count is fixed when JAX starts; the rest of the suite
keeps one). It trains a small TransformerLM every way and prints one JSON line of results,
which the tests read: losses, parameter differences from one device, each leaf's spec and
bytes per device, checkpoints moved between meshes, batch norm and error messages.

Run by hand: XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_eight_devices.py
"""

import json
import tempfile
import time


def main() -> dict:
    start = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jnn
    from jnn._partition import leaf_path

    model = jnn.TransformerLM(vocab_size=32, num_layers=2, features=32, num_heads=4)
    optimizer = optax.adam(1e-2)
    tokens = np.random.default_rng(0).integers(0, 32, (5, 16, 17)).astype(np.int32)
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
    state0 = jnn.init_train_state(model, optimizer, jax.random.key(0), batches[0][0])
    loss = jnn.softmax_cross_entropy_with_integer_labels
    step = jnn.make_train_step(model, loss, optimizer, jit=False)
    data = jnn.make_mesh((8,), ("data",))
    mesh = jnn.make_mesh((2, 4), ("data", "model"))
    rules = jnn.tensor_parallel_rules("model")  # heads and MLP hidden units split 4 ways

    def train(state, on=None, keep_layout=False):
        """The hand-written loop: make_train_step under jax.jit, batches split by hand."""
        kwargs = {}
        if keep_layout:  # without out_shardings XLA may choose another layout
            layout = jax.tree.map(lambda a: a.sharding, state)
            kwargs["out_shardings"] = (layout, NamedSharding(on, P()))
        compiled = jax.jit(step, **kwargs)
        losses = []
        for batch in batches:
            if on is not None:
                batch = jnn.shard_batch(batch, on)
            state, logs = compiled(state, batch)
            losses.append(float(logs["loss"]))
        return state, losses

    def by_path(tree, fn):
        return {leaf_path(p): fn(a) for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}

    def max_diff(a, b):
        return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))

    def spec(array):  # JSON-ready, without trailing Nones (P("model", None) is P("model"))
        entries = [list(e) if isinstance(e, tuple) else e for e in array.sharding.spec]
        while entries and entries[-1] is None:
            entries.pop()
        return entries

    def report(state, losses, reference):
        return {
            "losses": losses,
            "max_param_diff": max_diff(state.params, reference.params),
            "specs": by_path(state, spec),
            "devices": by_path(state, lambda a: len(a.sharding.device_set)),
            "bytes": by_path(state, lambda a: [a.nbytes, a.addressable_shards[0].data.nbytes]),
        }

    out = {"device_count": jax.device_count()}

    # ---------------------------------------------- the hand-written loop, four layouts
    reference, losses = train(state0)
    out["reference"] = {"losses": losses}
    out["data_parallel"] = report(*train(jnn.shard(state0, data), data), reference)
    fsdp = jnn.fully_sharded(state0, data, "data")
    out["fsdp"] = report(*train(fsdp, data, keep_layout=True), reference)
    tensor = jnn.shard(state0, mesh, rules)
    out["tensor_parallel"] = report(*train(tensor, mesh, keep_layout=True), reference)

    # ---------------------------------------------- fit on a mesh, both modes
    x = tokens.reshape(-1, 17)  # 80 sequences: 5 steps of 16 per epoch
    fit_data = (x[:, :-1], x[:, 1:])
    options = dict(batch_size=16, eval_data=fit_data, progress=False, steps_per_call=5)
    one = jnn.fit(model, state0, loss, optimizer, fit_data, epochs=2, **options)
    out["fit_reference"] = {"history": one.history, "mode": one.info["mode"]}
    host = dict(options, steps_per_call=1)
    fits = {
        "fit_data_parallel_host": jnn.fit(
            model, state0, loss, optimizer, fit_data, epochs=2, mesh=data, **host
        ),
        "fit_tensor_parallel_device": jnn.fit(
            model, tensor, loss, optimizer, fit_data, epochs=2, mesh=mesh, **options
        ),
    }
    for label, result in fits.items():
        out[label] = report(result.train_state, result.history["loss"], one.train_state)
        out[label] |= {"history": result.history, "mode": result.info["mode"]}
    moved = max(
        jax.tree.leaves(
            jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), one.params, state0.params)
        )
    )
    out["fit_reference"]["max_param_change"] = moved

    # ---------------------------------------------- checkpoints between mesh shapes
    with tempfile.TemporaryDirectory() as folder:
        first = jnn.fit(  # epoch 1 fully sharded over 8 devices, saved
            model,
            fsdp,
            loss,
            optimizer,
            fit_data,
            epochs=1,
            mesh=data,
            checkpoints=folder,
            **options,
        )
        resumed = jnn.fit(  # epoch 2 on the 2x4 mesh, resumed from that checkpoint
            model,
            tensor,
            loss,
            optimizer,
            fit_data,
            epochs=2,
            mesh=mesh,
            checkpoints=folder,
            **options,
        )
        out["resumed"] = report(resumed.train_state, resumed.history["loss"], one.train_state)
        out["resumed"] |= {
            "history": resumed.history,
            "initial_epoch": resumed.info["initial_epoch"],
        }
        path = f"{folder}/state.safetensors"
        jnn.save_checkpoint(path, first.train_state)  # saved from 8-way shards
        restored = jnn.load_checkpoint(path, tensor)  # onto the 2x4 layout of `tensor`
        out["restored"] = {
            "equal": bool(
                jnp.array_equal(
                    jax.random.key_data(restored.key), jax.random.key_data(first.train_state.key)
                )
            )
            and max_diff(restored.params, first.train_state.params) == 0.0
            and max_diff(restored.opt_state, first.train_state.opt_state) == 0.0,
            "same_layout": by_path(restored, lambda a: str(a.sharding))
            == by_path(tensor, lambda a: str(a.sharding)),
        }

    # ---------------------------------------------- batch norm across the data axis
    norm = jnn.Sequential([jnn.Dense(16), jnn.BatchNorm(), jnn.relu, jnn.Dense(3)])
    xs = np.random.default_rng(1).normal(size=(64, 5)).astype(np.float32)
    ys = (xs[:, 0] > 0).astype(np.int32)
    sgd = optax.sgd(0.1)  # adam would magnify rounding differences of near-zero gradients
    norm_state = jnn.init_train_state(norm, sgd, jax.random.key(0), xs[:1])
    norm_options = dict(epochs=2, batch_size=16, progress=False)
    alone = jnn.fit(norm, norm_state, loss, sgd, (xs, ys), **norm_options)
    split = jnn.fit(norm, norm_state, loss, sgd, (xs, ys), mesh=data, **norm_options)
    out["batch_norm"] = {
        "state_diff": max_diff(alone.model_state, split.model_state),
        "params_diff": max_diff(alone.params, split.params),
    }
    # Inside shard_map each device sees only its rows; axis_name shares the statistics.
    layer = jnn.BatchNorm(axis_name="data")
    params, stats = layer.init_with_state(jax.random.key(0), xs)
    whole = jnn.BatchNorm().apply(params, xs, state=stats, is_training=True)

    def per_device(rows):
        return layer.apply(params, rows, state=stats, is_training=True)

    mapped = jax.jit(
        jax.shard_map(per_device, mesh=data, in_specs=P("data"), out_specs=(P("data"), P()))
    )(xs)
    out["batch_norm"]["shard_map_diff"] = max_diff(whole, mapped)

    # ---------------------------------------------- errors
    errors = {}
    for label, call in {
        "not_divisible": lambda: jnn.shard(
            state0.params, data, [("query/weight$", P(None, "data"))]
        ),
        "not_divisible_joint": lambda: jnn.shard(
            state0, mesh, [("query/weight$", P(None, ("data", "model")))]
        ),
        "too_long": lambda: jnn.shard(state0, mesh, [("mlp/dense_0/", P(None, "model"))]),
        "batch_rows": lambda: jnn.shard_batch({"tokens": x[:12]}, data),
        "fit_batch_size": lambda: jnn.fit(
            model, state0, loss, optimizer, fit_data, batch_size=12, mesh=data, progress=False
        ),
        "fit_tail": lambda: jnn.fit(
            model,
            state0,
            loss,
            optimizer,
            (x[:20, :-1], x[:20, 1:]),
            batch_size=16,
            drop_last=False,
            mesh=data,
            progress=False,
        ),
    }.items():
        try:
            call()
            errors[label] = None
        except ValueError as error:
            errors[label] = str(error)
    out["errors"] = errors
    out["seconds"] = time.perf_counter() - start
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
