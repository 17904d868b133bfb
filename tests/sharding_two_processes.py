"""One of two processes of a multi-host run on this machine, for tests/test_sharding.py.

Each process starts JAX with 4 virtual CPU devices and joins the other through
``jax.distributed.initialize`` on the loopback address, which gives one mesh of 8 devices
over both. They train a small TransformerLM data-parallel: the train state replicated on
every device, each process putting its own half of every batch (``jnn.shard_batch``).
Process 0 also trains the same steps on one local device, and writes both loss curves as
JSON to the file named on its command line.

Run by hand: python tests/sharding_two_processes.py 0 PORT out.json &
             python tests/sharding_two_processes.py 1 PORT out.json
"""

import json
import os
import sys


def main(process_id: int, port: int, output: str) -> None:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    )
    import jax

    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=120,
    )
    import numpy as np
    import optax

    import jnn

    model = jnn.TransformerLM(vocab_size=32, num_layers=2, features=32, num_heads=4)
    optimizer = optax.adam(1e-2)
    tokens = np.random.default_rng(0).integers(0, 32, (4, 16, 17)).astype(np.int32)
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]  # the global batches, 16 rows each
    loss = jnn.softmax_cross_entropy_with_integer_labels
    step = jnn.make_train_step(model, loss, optimizer, jit=False)
    state0 = jnn.init_train_state(model, optimizer, jax.random.key(0), batches[0][0])

    mesh = jnn.make_mesh((8,), ("data",))
    state = jnn.shard(state0, mesh)  # the same values in both processes: replicated
    compiled = jax.jit(step)
    mine = slice(8 * process_id, 8 * process_id + 8)  # this process's rows of each batch
    losses = []
    for x, y in batches:
        state, logs = compiled(state, jnn.shard_batch((x[mine], y[mine]), mesh))
        losses.append(float(logs["loss"]))  # replicated: readable in every process
    result = {
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "losses": losses,
    }
    try:
        jnn.fit(model, state0, loss, optimizer, batches[0], batch_size=8, mesh=mesh)
    except ValueError as error:
        result["fit_error"] = str(error)
    if process_id == 0:  # the same steps on one device of this process
        one = jax.jit(step)
        state = jax.device_put(state0, jax.local_devices()[0])
        result["reference"] = []
        for batch in batches:
            state, logs = one(state, jax.device_put(batch, jax.local_devices()[0]))
            result["reference"].append(float(logs["loss"]))
        with open(output, "w") as file:
            json.dump(result, file)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
