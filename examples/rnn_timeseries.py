"""Forecast yearly sunspot numbers with an LSTM, against the naive last-value forecast.

Data: ``examples/data/sunspots_yearly.csv``, the yearly mean sunspot numbers 1700-2008
(public domain, NOAA; the copy that statsmodels distributes), shipped in the repository.
The last 40 years are held out. The model reads a window of the previous 20 years
(scaled) and predicts the next year; it is trained on windows that end before the
held-out tail and evaluated one step ahead on the tail, against predicting "same as last
year". ``jnn.fit`` shows a progress bar with the epoch, the elapsed time and the loss;
the forecast is plotted in ``rnn_timeseries.png`` in ``--output-dir``.

Run:  python examples/rnn_timeseries.py              (writes examples/outputs/rnn_timeseries.png)
      python examples/rnn_timeseries.py --output-dir /tmp/sunspots
      python examples/rnn_timeseries.py --smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "sunspots_yearly.csv"
OUTPUT_DIR = Path(__file__).resolve().parent / "outputs"
WINDOW, TEST_YEARS = 20, 40


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the layout of the module docstring and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=300, help="passes over the training windows")
    parser.add_argument("--hidden", type=int, default=32, help="units of the LSTM cell")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init and the shuffles")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=OUTPUT_DIR,
        help="folder for rnn_timeseries.png, created if missing; --smoke without it "
        "writes to smoke/ inside the default",
    )
    parser.add_argument("--smoke", action="store_true", help="3 epochs (CI)")
    return parser


def load_series() -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(DATA, delimiter=",", skiprows=3)  # two comment lines and a header
    return table[:, 0].astype(int), table[:, 1].astype(np.float32)


def windows(series: np.ndarray, ends: range) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``[n, WINDOW, 1]`` (the years before ``t``) and targets ``[n, 1]`` (year ``t``)."""
    x = np.stack([series[t - WINDOW : t] for t in ends])[..., None]
    y = np.array([series[t] for t in ends])[:, None]
    return x.astype(np.float32), y.astype(np.float32)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)  # --help exits here, before JAX loads
    import jax
    import optax

    import jnn

    if args.smoke:
        args.epochs = 3
    output_dir = args.output_dir
    if args.smoke and output_dir == OUTPUT_DIR:
        output_dir = OUTPUT_DIR / "smoke"  # leave the full run's plot in place

    years, series = load_series()
    split = len(series) - TEST_YEARS
    scale = float(series[:split].max())  # scale by training data only
    scaled = series / scale
    x_train, y_train = windows(scaled, range(WINDOW, split))
    x_test, y_test = windows(scaled, range(split, len(series)))

    batch_size = 32
    steps = args.epochs * (len(x_train) // batch_size)
    model = jnn.Sequential(
        [jnn.RNN(jnn.LSTMCell(args.hidden), return_sequences=False), jnn.Dense(1)]
    )
    print(
        f"training {args.epochs} epochs on {len(x_train)} windows (targets "
        f"{years[WINDOW]}-{years[split - 1]}; the first step compiles)"
    )
    optimizer = optax.adam(optax.cosine_decay_schedule(args.learning_rate, steps))
    state = jnn.init_train_state(model, optimizer, jax.random.key(args.seed), x_train[:1])
    result = jnn.fit(
        model,
        state,
        jnn.mean_squared_error,
        optimizer,
        (x_train, y_train),
        epochs=args.epochs,
        batch_size=batch_size,
    )
    forecast = np.asarray(model.apply(result.params, x_test)) * scale
    truth = y_test * scale
    lstm_mae = float(np.mean(np.abs(forecast - truth)))
    naive_mae = float(np.mean(np.abs(x_test[:, -1] * scale - truth)))  # "same as last year"
    print(
        f"one-year-ahead MAE on {years[split]}-{years[-1]}: LSTM {lstm_mae:.1f}, "
        f"naive last value {naive_mae:.1f}"
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / "rnn_timeseries.png"
    save_plot(years, series, split, forecast[:, 0], output)
    print(f"saved {output.resolve()}")
    if not args.smoke and lstm_mae >= naive_mae:
        sys.exit(1)
    return {"lstm_mae": lstm_mae, "naive_mae": naive_mae, "output": output}


def save_plot(years, series, split, forecast, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 3.2))
    axis.plot(years, series, color="black", linewidth=1, label="yearly sunspot number")
    axis.plot(years[split:], forecast, color="tab:red", marker=".", label="LSTM, one year ahead")
    axis.axvline(years[split], color="grey", linestyle="--", linewidth=1)
    axis.set(xlabel="year", ylabel="sunspots", title="Held-out forecast (right of the line)")
    axis.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
