"""examples/regression.py: the smoke run end to end (marked slow), and its data split and
scores on hand-made cases."""

import math
import re

import numpy as np
import pytest
from example_scripts import EXAMPLES, load


@pytest.fixture(scope="module")
def regression():
    return load(EXAMPLES / "regression.py")


@pytest.mark.slow
def test_regression_smoke(regression, empty_cwd, output_dir, capsys):
    result = regression.main(["--smoke", "--output-dir", str(output_dir)])
    for name in ("mlp", "linear", "ridge"):
        assert sorted(result[name]) == ["mae", "r2", "rmse"]
        assert all(math.isfinite(value) for value in result[name].values())
        assert len(result["per_split"][name]) == 1
    assert result["linear"]["r2"] > 0.3  # split 0: 0.359
    captured = capsys.readouterr()
    assert re.search(r"epoch 3/3: .*\[\d\d:\d\d<.*loss=\d", captured.err)  # fit's progress bar
    assert re.search(r"split 1/1: test R\^2 MLP -?\d\.\d+, .*\d+\.\d s\n", captured.out)
    assert "test set, mean over 1 split(s):" in captured.out
    assert "(target: at most 0.01 below)" in captured.out
    plot = output_dir / "regression.png"
    assert sorted(output_dir.iterdir()) == [plot]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved {plot.resolve()}\n" in captured.out


def test_features_are_standardized_with_the_training_part_only(regression):
    data = regression.load_split(0)
    assert data["x_train"].shape == (331, 10) and data["x_test"].shape == (111, 10)
    assert data["x_train"].dtype == data["x_test"].dtype == np.float32
    np.testing.assert_allclose(data["x_train"].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data["x_train"].std(axis=0), 1.0, rtol=1e-4)
    # The test part keeps the offset the training statistics give it.
    assert np.abs(data["x_test"].mean(axis=0)).max() > 0.05
    assert data["y_mean"] == pytest.approx(data["y_train"].mean())
    assert data["y_scale"] == pytest.approx(data["y_train"].std())
    again = regression.load_split(0)
    assert np.array_equal(again["x_test"], data["x_test"])  # a fixed split
    assert not np.array_equal(regression.load_split(1)["y_test"], data["y_test"])


def test_scores_on_hand_made_predictions(regression):
    y = np.array([1.0, 2.0, 3.0, 6.0])
    assert regression.scores(y, y) == {"rmse": 0.0, "mae": 0.0, "r2": 1.0}
    mean = regression.scores(y, np.full(4, 3.0))  # predicting the mean: R^2 is 0
    assert mean["r2"] == pytest.approx(0.0)
    assert mean["mae"] == pytest.approx(1.5)
    assert mean["rmse"] == pytest.approx(math.sqrt(14 / 4))


def test_model_maps_ten_features_to_one_output(regression):
    import jax
    import jax.numpy as jnp

    model = regression.build_model(8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 10)))
    assert params["dense_0"]["weight"].shape == (10, 8)
    assert model.apply(params, jnp.zeros((5, 10))).shape == (5, 1)
