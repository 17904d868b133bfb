"""Callbacks: the protocol and its checks, the JSON-lines logger and history plots, driven
by hand (fit's use of them: test_training.py)."""

import json
import math
import sys
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

import jnn


class FakeState(NamedTuple):
    step: object


def strict_loads(line):
    """json.loads that refuses the NaN/Infinity tokens standard JSON does not have."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=refuse)


# --------------------------------------------------------------------------- protocol


def test_callback_hooks_default_to_no_ops():
    cb = jnn.Callback()
    assert cb.on_train_begin({"epochs": 2}) is None
    assert cb.on_epoch_end(1, {"loss": 1.0}, None) is None
    assert cb.on_train_end({"loss": [1.0]}) is None


def test_as_callbacks_accepts_callbacks_functions_and_foreign_objects():
    calls = []

    class Mine(jnn.Callback):
        def on_train_begin(self, info):
            calls.append(("begin", info["epochs"]))

    class KerasLike:  # hooks with our signatures, no on_train_begin, no subclassing
        def on_epoch_end(self, epoch, logs, state):
            calls.append(("keras", epoch))
            return logs["loss"] < 0.5

        def on_train_end(self, history):
            calls.append(("end", len(history["loss"])))

    def stop_at_two(epoch, logs, state):
        calls.append(("fn", epoch, state))
        return epoch == 2

    mine = Mine()
    assert jnn.as_callbacks("fit", None) == ()
    assert jnn.as_callbacks("fit", []) == ()
    assert jnn.as_callbacks("fit", mine) == (mine,)
    cbs = jnn.as_callbacks("fit", (mine, stop_at_two, KerasLike()))
    assert len(cbs) == 3 and cbs[0] is mine
    assert all(isinstance(cb, jnn.Callback) for cb in cbs)
    for cb in cbs:
        cb.on_train_begin({"epochs": 2})
    assert [cb.on_epoch_end(1, {"loss": 0.9}, "s") for cb in cbs] == [None, False, False]
    assert [cb.on_epoch_end(2, {"loss": 0.1}, "s") for cb in cbs] == [None, True, True]
    for cb in cbs:
        cb.on_train_end({"loss": [0.9, 0.1]})
    assert calls == [
        ("begin", 2),
        ("fn", 1, "s"),
        ("keras", 1),
        ("fn", 2, "s"),
        ("keras", 2),
        ("end", 2),
    ]
    # Signatures that can take the arguments pass: *args, extra defaults, a lambda.
    jnn.as_callbacks("fit", [lambda *a: None, lambda epoch, logs, state, verbose=False: None])


class NotCallbackHooks:
    on_epoch_end = 3


class KerasSignature:
    def on_epoch_end(self, epoch, logs=None):
        pass


@pytest.mark.parametrize(
    "callbacks, match",
    [
        (
            jnn.JSONLinesLogger,
            r"^fit: expected callbacks to be a callback instance, got the class JSONLinesLogger\. Hint: instantiate it, e.g\. JSONLinesLogger\(\.\.\.\)\.$",
        ),
        (KerasSignature, r"got the class KerasSignature\. Hint: instantiate it"),
        (dict, r"got the class dict\. Hint: pass a jnn\.Callback instance"),
        (
            "json_logger",
            r"^fit: expected callbacks to be a jnn\.Callback or a function f\(epoch, logs, state\), got str\. Hint: pass the callback object itself, not its name\.$",
        ),
        (
            [jnn.Callback(), 3],
            r"^fit: expected callbacks\[1\] to be a jnn\.Callback or a function f\(epoch, logs, state\), got int\.$",
        ),
        ([[jnn.Callback()]], r"callbacks\[0\] .*got list\. Hint: pass one flat list"),
        ({"log": jnn.Callback()}, r"expected callbacks to be .*got dict\."),
        ([None], r"callbacks\[0\] .*got NoneType"),
        (NotCallbackHooks(), r"^fit: expected callbacks\.on_epoch_end to be a method, got int\.$"),
        (
            KerasSignature(),
            r"^fit: callbacks\.on_epoch_end cannot be called as on_epoch_end\(epoch, logs, state\); its signature is \(epoch, logs=None\)\.$",
        ),
        (
            [lambda epoch, logs: None],
            r"^fit: callbacks\[0\] cannot be called as f\(epoch, logs, state\); its signature is \(epoch, logs\)\.$",
        ),
    ],
)
def test_as_callbacks_rejects_with_what_was_expected_and_what_arrived(callbacks, match):
    with pytest.raises(TypeError, match=match):
        jnn.as_callbacks("fit", callbacks)


def test_as_callbacks_checks_overridden_hooks_of_subclasses():
    class Wrong(jnn.Callback):
        def on_train_end(self):
            pass

    with pytest.raises(
        TypeError,
        match=r"callbacks\.on_train_end cannot be called as on_train_end\(history\); its signature is \(\)",
    ):
        jnn.as_callbacks("fit", Wrong())


# --------------------------------------------------------------------------- JSON lines


def run_logger(logger, epochs, state=None):
    logger.on_train_begin({"epochs": len(epochs), "steps_per_epoch": 3, "initial_epoch": 0})
    for epoch, logs in epochs:
        assert logger.on_epoch_end(epoch, logs, state) is None
    logger.on_train_end({})


def test_json_lines_logger_writes_strict_json_with_nan_as_null(tmp_path):
    path = tmp_path / "log.jsonl"
    logs = [
        (1, {"loss": jnp.float32(0.5), "accuracy": np.float64(0.75), "eval_loss": 0.625}),
        (2, {"loss": jnp.array(jnp.nan), "accuracy": 1, "eval_loss": -math.inf}),
        (3, {"loss": np.float32(0.25), "accuracy": np.True_, "eval_loss": math.inf}),
    ]
    run_logger(jnn.JSONLinesLogger(path), logs, FakeState(jnp.int32(12)))
    text = path.read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    records = [strict_loads(line) for line in text.splitlines()]
    assert [list(r) for r in records] == [
        ["epoch", "step", "time", "loss", "accuracy", "eval_loss"]
    ] * 3
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["step"] for r in records] == [12] * 3
    assert all(isinstance(r["step"], int) and r["time"] >= 0 for r in records)
    assert [r["loss"] for r in records] == [0.5, None, 0.25]
    assert [r["accuracy"] for r in records] == [0.75, 1, 1]
    assert [r["eval_loss"] for r in records] == [0.625, None, None]
    assert jnn.read_json_lines(path) == records
    history = jnn.history_from_json_lines(str(path))
    assert list(history) == ["loss", "accuracy", "eval_loss"]
    np.testing.assert_equal(history["loss"], [0.5, np.nan, 0.25])
    assert history["accuracy"] == [0.75, 1.0, 1.0]


def test_json_lines_logger_omits_step_without_a_state_and_counts_time(tmp_path):
    path = tmp_path / "log.jsonl"
    logger = jnn.JSONLinesLogger(path, append=False)
    logger.on_epoch_end(1, {"loss": 1.0}, None)  # standalone: no on_train_begin
    (record,) = jnn.read_json_lines(path)
    assert list(record) == ["epoch", "time", "loss"]
    assert 0 <= record["time"] < 60
    assert "append=False" in repr(logger) and "log.jsonl" in repr(logger)


def test_json_lines_logger_appends_or_truncates(tmp_path):
    path = tmp_path / "log.jsonl"
    run_logger(jnn.JSONLinesLogger(path), [(1, {"loss": 1.0}), (2, {"loss": 0.5})])
    run_logger(jnn.JSONLinesLogger(path), [(3, {"loss": 0.25})])  # a resumed run
    assert [r["epoch"] for r in jnn.read_json_lines(path)] == [1, 2, 3]
    logger = jnn.JSONLinesLogger(path, append=False)
    run_logger(logger, [(1, {"loss": 2.0})])
    assert [r["loss"] for r in jnn.read_json_lines(path)] == [2.0]
    run_logger(logger, [(1, {"loss": 3.0})])  # every run of the same logger starts afresh
    assert [r["loss"] for r in jnn.read_json_lines(path)] == [3.0]


def test_a_partial_last_line_is_skipped_by_readers_and_dropped_by_appending(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "loss": 0.5}\n{"epoch": 3, "lo')
    assert [r["epoch"] for r in jnn.read_json_lines(path)] == [1, 2]
    assert jnn.history_from_json_lines(path) == {"loss": [1.0, 0.5]}
    run_logger(jnn.JSONLinesLogger(path), [(3, {"loss": 0.25})])
    lines = path.read_text().splitlines()
    assert [strict_loads(line)["epoch"] for line in lines] == [1, 2, 3]
    # A complete last record without its newline is kept, and the next one goes below it.
    path.write_text('{"epoch": 1, "loss": 1.0}')
    run_logger(jnn.JSONLinesLogger(path), [(2, {"loss": 0.5})])
    assert [r["epoch"] for r in jnn.read_json_lines(path)] == [1, 2]


def test_json_lines_logger_writes_a_population_as_lists(tmp_path):
    path = tmp_path / "log.jsonl"
    logs = [
        (1, {"loss": [0.5, math.nan, 0.25], "eval_loss": jnp.array([0.5, 0.75, jnp.inf])}),
        (2, {"loss": np.array([0.25, 1.0, 0.125]), "eval_loss": (0.5, 0.5, 0.5)}),
    ]
    run_logger(jnn.JSONLinesLogger(path), logs, FakeState(jnp.array([3, 3, 3])))
    records = [strict_loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [[3, 3, 3]] * 2
    assert [r["loss"] for r in records] == [[0.5, None, 0.25], [0.25, 1.0, 0.125]]
    assert [r["eval_loss"] for r in records] == [[0.5, 0.75, None], [0.5, 0.5, 0.5]]
    history = jnn.history_from_json_lines(path)
    np.testing.assert_equal(history["loss"], [[0.5, np.nan, 0.25], [0.25, 1.0, 0.125]])
    figure = jnn.plot_history(history)
    lines = figure.axes[0].lines  # one line per member, one legend entry per quantity
    assert [line.get_label() for line in lines] == ["loss", "_loss", "_loss"] + [
        "eval_loss",
        "_eval_loss",
        "_eval_loss",
    ]
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["loss", "eval_loss"]
    np.testing.assert_array_equal(lines[4].get_ydata(), [0.75, 0.5])


def test_history_from_json_lines_keeps_the_last_record_of_each_epoch(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"epoch": 1, "step": 3, "time": 0.1, "loss": 1.0}\n'
        '{"epoch": 2, "step": 6, "time": 0.2, "loss": 0.9}\n'
        "\n"
        '{"epoch": 2, "step": 6, "time": 0.1, "loss": 0.8, "eval_loss": null}\n'
        '{"epoch": 3, "step": 9, "time": 0.2, "loss": 0.7, "eval_loss": 0.75}\n'
    )
    history = jnn.history_from_json_lines(path)
    assert list(history) == ["loss", "eval_loss"]
    assert history["loss"] == [1.0, 0.8, 0.7]
    np.testing.assert_equal(history["eval_loss"], [np.nan, np.nan, 0.75])


@pytest.mark.parametrize(
    "text, error, match",
    [
        (
            '{"epoch": 1}\n{"epoch": 2,, }\n{"epoch": 3}\n',
            ValueError,
            r"^read_json_lines: line 2 of '.*log\.jsonl' is not valid JSON \(.*\): '\{\"epoch\": 2,, \}'\.$",
        ),
        (
            '{"epoch": 1}\n[1, 2]\n',
            ValueError,
            r"^read_json_lines: expected a JSON object on line 2 of .*, got list\.$",
        ),
    ],
)
def test_read_json_lines_rejects_invalid_complete_lines(tmp_path, text, error, match):
    path = tmp_path / "log.jsonl"
    path.write_text(text)
    with pytest.raises(error, match=match):
        jnn.read_json_lines(path)
    with pytest.raises(
        TypeError, match=r"^read_json_lines: expected path to be a str or os\.PathLike, got int\.$"
    ):
        jnn.read_json_lines(3)


@pytest.mark.parametrize(
    "text, match",
    [
        (
            '{"loss": 1.0}\n',
            r"^history_from_json_lines: expected an int 'epoch' in record 0 of .*, got None\.$",
        ),
        (
            '{"epoch": 1, "loss": "low"}\n',
            r"^history_from_json_lines: expected a number \(or a list of them\) for 'loss' at epoch 1, got 'low'\.$",
        ),
    ],
)
def test_history_from_json_lines_rejects_records_it_cannot_use(tmp_path, text, match):
    path = tmp_path / "log.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        jnn.history_from_json_lines(path)


def test_json_lines_logger_rejects_bad_arguments_and_logs(tmp_path):
    with pytest.raises(
        TypeError,
        match=r"^JSONLinesLogger: expected path to be a str or os\.PathLike, got NoneType\.$",
    ):
        jnn.JSONLinesLogger(None)
    with pytest.raises(
        TypeError, match=r"^JSONLinesLogger: expected append to be a bool, got 1 \(int\)\.$"
    ):
        jnn.JSONLinesLogger(tmp_path / "log.jsonl", append=1)
    with pytest.raises(
        FileNotFoundError,
        match=r"^JSONLinesLogger: the directory '.*missing' of path '.*log\.jsonl' does not exist\. Hint: create it first, e\.g\. os\.makedirs\(",
    ):
        jnn.JSONLinesLogger(tmp_path / "missing" / "log.jsonl")
    with pytest.raises(
        ValueError, match=r"^JSONLinesLogger: path '.*' is a directory; expected a file name\.$"
    ):
        jnn.JSONLinesLogger(tmp_path)
    logger = jnn.JSONLinesLogger(tmp_path / "log.jsonl")
    for logs, error, match in [
        (
            {"loss": jnp.zeros((2, 3))},
            TypeError,
            r"^JSONLinesLogger: expected logs\['loss'\] to be a real number, or a list of them \(one per member of a population\), got ArrayImpl of shape \(2, 3\)\.$",
        ),
        ({"loss": "low"}, TypeError, r"or a list of them \(.*\), got str\.$"),
        ({"loss": 1j}, TypeError, r"got complex\.$"),
        ({"loss": [1.0, None]}, TypeError, r"got list\.$"),
        (
            {"time": 1.0},
            ValueError,
            r"^JSONLinesLogger: the log key 'time' is taken by the record's own field\. Hint: rename the metric, e\.g\. 'train_time'\.$",
        ),
        ([("loss", 1.0)], TypeError, r"^JSONLinesLogger: expected logs to be a dict, got list\.$"),
    ]:
        with pytest.raises(error, match=match):
            logger.on_epoch_end(1, logs, None)
    assert not (tmp_path / "log.jsonl").exists() or (tmp_path / "log.jsonl").read_text() == ""


# --------------------------------------------------------------------------- plots

HISTORY = {
    "accuracy": [0.5, 0.7, 0.8],
    "loss": [1.0, 0.6, 0.4],
    "eval_loss": [1.1, 0.8, 0.7],
    "eval_accuracy": [0.4, 0.6, float("nan")],
}


def axes_summary(figure):
    return [(ax.get_title(), [line.get_label() for line in ax.lines]) for ax in figure.axes]


def test_plot_history_draws_each_quantity_with_its_eval_twin_and_saves_a_png(tmp_path):
    path = tmp_path / "history.png"
    figure = jnn.plot_history(HISTORY, path, title="run 1")
    assert axes_summary(figure) == [
        ("loss", ["loss", "eval_loss"]),
        ("accuracy", ["accuracy", "eval_accuracy"]),
    ]
    np.testing.assert_array_equal(figure.axes[0].lines[1].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(figure.axes[0].lines[1].get_ydata(), HISTORY["eval_loss"])
    assert figure.axes[0].get_xlabel() == "epoch"
    assert figure.get_suptitle() == "run 1"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_history_selects_metrics_and_lays_out_a_grid(tmp_path):
    figure = jnn.plot_history(HISTORY, metrics=["accuracy"])
    assert axes_summary(figure) == [("accuracy", ["accuracy", "eval_accuracy"])]
    figure = jnn.plot_history({"loss": [1.0, None, 0.5]})  # None (a JSON null): a gap
    np.testing.assert_array_equal(figure.axes[0].lines[0].get_ydata(), [1.0, np.nan, 0.5])
    figure = jnn.plot_history(HISTORY, metrics=("accuracy",))
    assert axes_summary(figure) == [("accuracy", ["accuracy", "eval_accuracy"])]
    many = {name: [1.0, 2.0] for name in ["a", "b", "eval_c", "d", "e"]}
    figure = jnn.plot_history(many, str(tmp_path / "many.png"))
    assert axes_summary(figure) == [
        ("a", ["a"]),
        ("b", ["b"]),
        ("c", ["eval_c"]),
        ("d", ["d"]),
        ("e", ["e"]),
    ]
    assert figure.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 3)
    assert (tmp_path / "many.png").read_bytes().startswith(b"\x89PNG")


class FitResultLike(NamedTuple):
    history: dict


@pytest.mark.parametrize(
    "history, kwargs, error, match",
    [
        (
            FitResultLike({"loss": [1.0]}),
            {},
            TypeError,
            r"^plot_history: expected history as a dict of name -> list of numbers, got FitResultLike\. Hint: pass result\.history\.$",
        ),
        ({}, {}, ValueError, r"^plot_history: history is empty; there is nothing to plot\.$"),
        (
            {1: [1.0]},
            {},
            TypeError,
            r"^plot_history: expected the names in history to be str, got 1\.$",
        ),
        (
            {"loss": "1.0"},
            {},
            TypeError,
            r"^plot_history: expected history\['loss'\] to be a list of numbers \(or of lists, one value per member of a population\), got str\.$",
        ),
        (
            {"loss": [[[1.0, 2.0]]]},
            {},
            TypeError,
            r"^plot_history: expected history\['loss'\] to be a list of numbers \(.*\), got list of shape \(1, 1, 2\)\.$",
        ),
        (
            {"loss": [1.0, "low"]},
            {},
            TypeError,
            r"history\['loss'\] to be a list of numbers \(.*\), got list\.$",
        ),
        (
            {"loss": [1.0, 0.5], "eval_loss": [1.0]},
            {},
            ValueError,
            r"^plot_history: expected one value per epoch in every list of history \(the same, non-zero length\), got lengths \{'loss': 2, 'eval_loss': 1\}\. Hint: fill epochs without a value with float\('nan'\)\.$",
        ),
        ({"loss": []}, {}, ValueError, r"got lengths \{'loss': 0\}"),
        (
            HISTORY,
            {"metrics": "loss"},
            TypeError,
            r"^plot_history: expected metrics as a list of names, got 'loss'\. Hint: metrics=\['loss'\]\.$",
        ),
        (
            HISTORY,
            {"metrics": ["loss", "eval_loss"]},
            ValueError,
            r"^plot_history: metrics \['eval_loss'\] are not in history; it holds \['loss', 'accuracy'\]\.$",
        ),
        (
            HISTORY,
            {"path": 3},
            TypeError,
            r"^plot_history: expected path to be a str or os\.PathLike, got int\.$",
        ),
    ],
)
def test_plot_history_rejects_bad_arguments(history, kwargs, error, match):
    with pytest.raises(error, match=match):
        jnn.plot_history(history, **kwargs)


def test_plot_history_explains_a_missing_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(
        ImportError,
        match=r"^plot_history: needs matplotlib, which jnn does not install by itself\. Hint: pip install matplotlib",
    ):
        jnn.plot_history(HISTORY)
