"""Every example runs end to end, in-process, in its --smoke mode (a few seconds each)."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    """Import ``examples/{name}.py`` as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    # Whatever an example writes by default lands in the test's directory, not the repo.
    monkeypatch.chdir(tmp_path)


def test_mlp_digits_smoke(capsys):
    result = load("mlp_digits").main(["--smoke", "--width", "32", "--seed", "1"])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert math.isfinite(result["test_loss"])
    assert "test accuracy:" in capsys.readouterr().out


def test_cnn_digits_smoke(tmp_path):
    plot = tmp_path / "curve.png"
    result = load("cnn_digits").main(["--smoke", "--width", "8", "--plot", str(plot)])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert plot.stat().st_size > 0


def test_function_approximation_smoke(tmp_path, capsys):
    output = tmp_path / "fit.png"
    result = load("function_approximation").main(
        ["--smoke", "--width", "16", "--output", str(output)]
    )
    assert math.isfinite(result["test_mse"]) and math.isfinite(result["train_mse"])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test MSE" in capsys.readouterr().out


def test_function_approximation_default_output_is_the_working_directory(tmp_path):
    load("function_approximation").main(["--smoke"])
    assert (tmp_path / "function_approximation.png").is_file()


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_smoke_flag_and_a_main(name):
    source = (EXAMPLES / f"{name}.py").read_text()
    assert "--smoke" in source and "def main(argv=None)" in source
    assert 'if __name__ == "__main__":' in source


def test_rnn_timeseries_smoke(tmp_path):
    output = tmp_path / "forecast.png"
    result = load("rnn_timeseries").main(["--smoke", "--output", str(output)])
    assert math.isfinite(result["lstm_mae"]) and result["naive_mae"] > 0
    assert output.stat().st_size > 0


def test_text_classifier_smoke(capsys):
    module = load("text_classifier")
    result = module.main(["--smoke"])
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["baseline"] <= 1.0
    assert len(result["languages"]) == 8
    assert "held-out accuracy" in capsys.readouterr().out


def test_text_classifier_data_has_one_label_per_word():
    words, languages = load("text_classifier").load_words()
    assert len(words) == len(languages) > 20_000
    assert len(set(words)) == len(words)
    assert sorted(set(languages)) == ["de", "en", "es", "fr", "it", "nl", "pt", "sv"]


def test_text_classifier_encode_pads_and_cuts():
    module = load("text_classifier")
    ids = module.encode(["ab", "x" * 40, "aé"], {"a": 2, "b": 3, "x": 4})
    assert ids.shape == (3, module.MAX_LENGTH)
    assert ids[0].tolist() == [2, 3] + [module.PAD] * (module.MAX_LENGTH - 2)
    assert ids[1].tolist() == [4] * module.MAX_LENGTH
    assert ids[2, :2].tolist() == [2, module.UNKNOWN]


def test_char_transformer_smoke(capsys):
    result = load("char_transformer").main(["--smoke", "--prompt", "The "])
    assert math.isfinite(result["test_bits"])
    assert result["unigram_bits"] > result["bigram_bits"] > 0
    assert result["sample"].startswith("The ") and len(result["sample"]) == 4 + 20
    assert "held-out bits per character" in capsys.readouterr().out


def test_char_transformer_cached_greedy_decoding_matches_the_full_forward_pass():
    import jax
    import jax.numpy as jnp

    import jnn

    module = load("char_transformer")
    model = jnn.TransformerLM(vocab_size=11, num_layers=2, features=16, num_heads=2, max_length=12)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    prompt = jnp.array([1, 2, 3], jnp.int32)
    tokens = module.make_generate(model)(params, prompt, jax.random.key(1), 0.0, steps=9)
    sequence = prompt
    for _ in range(9):  # greedy decoding without a cache: rerun the whole sequence each time
        logits = model.apply(params, sequence[None])[0, -1]
        sequence = jnp.append(sequence, jnp.argmax(logits).astype(jnp.int32))
    assert tokens.tolist() == sequence[3:].tolist()
