"""Fit a 1-D function with an MLP: the universal approximation idea, seen in a plot.

A network with one or two hidden layers of smooth activations can approximate any
continuous function on an interval. Here an MLP learns ``f(x) = sin(3x) + 0.3 x^2`` on
[-3, 3] from 256 noisy samples, trained with mean squared error and Adam, and the script
saves a plot of the target, the samples and the fit.

Run:  python examples/function_approximation.py            (writes function_approximation.png)
      python examples/function_approximation.py --width 8   (too narrow: a visibly worse fit)
      python examples/function_approximation.py --smoke
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jnn


def target(x):
    return np.sin(3 * x) + 0.3 * x**2


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=str, default="function_approximation.png")
    parser.add_argument("--smoke", action="store_true", help="a few steps (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = 20

    rng = np.random.default_rng(args.seed)
    x_train = rng.uniform(-3, 3, (256, 1)).astype(np.float32)
    y_train = (target(x_train) + rng.normal(0, 0.05, x_train.shape)).astype(np.float32)
    x_test = np.linspace(-3, 3, 400, dtype=np.float32)[:, None]
    y_test = target(x_test).astype(np.float32)

    model = jnn.MLP([args.width, args.width, 1], activation=jnn.tanh)
    params = model.init(jax.random.key(args.seed), x_train)
    optimizer = optax.adam(optax.cosine_decay_schedule(args.learning_rate, args.steps))
    opt_state = optimizer.init(params)
    step = jnn.make_train_step(model, jnn.mean_squared_error, optimizer)

    # Full-batch gradient descent: all 256 samples every step.
    for i in range(args.steps):
        params, opt_state, logs = step(params, opt_state, (x_train, y_train))
        if (i + 1) % 1000 == 0:
            print(f"step {i + 1}: train MSE {float(logs['loss']):.5f}")

    prediction = np.asarray(model.apply(params, jnp.asarray(x_test)))
    test_mse = float(np.mean((prediction - y_test) ** 2))
    print(f"test MSE against the noiseless function: {test_mse:.5f}")
    save_plot(x_train, y_train, x_test, y_test, prediction, args.output, args.width)
    print(f"saved {args.output}")
    return {"test_mse": test_mse, "output": args.output}


def save_plot(x_train, y_train, x_test, y_test, prediction, path, width):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 3.5))
    axis.scatter(x_train[:, 0], y_train[:, 0], s=6, alpha=0.4, color="grey", label="samples")
    axis.plot(x_test[:, 0], y_test[:, 0], color="black", label="target sin(3x) + 0.3x²")
    axis.plot(x_test[:, 0], prediction[:, 0], color="tab:red", label=f"MLP 2x{width} (tanh)")
    axis.set(xlabel="x", ylabel="y", title="Function approximation with an MLP")
    axis.legend(loc="upper center")
    axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
