"""Every example runs end to end in its --smoke mode (the full runs are in CI's README step)."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlp_digits_smoke():
    result = load("mlp_digits").main(["--smoke"])
    assert 0.0 <= result["test_accuracy"] <= 1.0 and math.isfinite(result["test_loss"])


def test_cnn_digits_smoke(tmp_path):
    plot = tmp_path / "curve.png"
    result = load("cnn_digits").main(["--smoke", "--width", "8", "--plot", str(plot)])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert plot.stat().st_size > 0


def test_function_approximation_smoke(tmp_path):
    output = tmp_path / "fit.png"
    result = load("function_approximation").main(["--smoke", "--output", str(output)])
    assert math.isfinite(result["test_mse"])
    assert output.stat().st_size > 0


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_smoke_flag_and_a_main(name):
    source = (EXAMPLES / f"{name}.py").read_text()
    assert "--smoke" in source and "def main(argv=None)" in source
