"""Every example runs end to end, in-process, in its --smoke mode (a few seconds each).

Each one also answers ``--help`` without loading JAX, shows progress while it trains, and
writes its files to ``--output-dir``, never to the working directory.
"""

import datetime
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from example_scripts import EXAMPLES, load

# Whole training scripts: kept out of the default run, run by `pytest -m slow` (and CI).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("empty_cwd")]

NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py"))

# The files each example writes to --output-dir (the others write none; population only
# with --plot).
WRITES = {
    "cnn_digits": ("cnn_digits_curve.png", "cnn_digits_history.jsonl", "cnn_digits_history.png"),
    "function_approximation": ("function_approximation.png",),
    "population": ("population.png",),
    "recommender": ("recommender.png",),
    "regression": ("regression.png",),
    "spoken_digits": ("spoken_digits_confusion.png", "spoken_digits_examples.png"),
    "augment_digits": ("augment_digits.png",),
    "gan_digits": ("gan_digits_quality.png", "gan_digits_samples.png"),
    "explain_digits": ("explain_digits.png", "explain_digits_network.png"),
    "autoencoder": (
        "autoencoder_latent.png",
        "autoencoder_reconstructions.png",
        "autoencoder_samples.png",
    ),
    "rnn_timeseries": ("rnn_timeseries.png",),
}

# What each example prints while it trains, on which stream: its own lines with the
# elapsed seconds, or the progress bar of jnn.fit (epoch, loss and elapsed [mm:ss<...]).
PROGRESS = {
    "mlp_digits": ("out", r"epoch +2/2: train loss \d+\.\d+, .* \d+\.\d s\n"),
    "cnn_digits": ("err", r"epoch 2/2: .*\[\d\d:\d\d<.*loss=\d"),
    "function_approximation": ("out", r"step 20/20: train MSE \d+\.\d+, \d+\.\d s\n"),
    "rnn_timeseries": ("err", r"epoch 3/3: .*\[\d\d:\d\d<.*loss=\d"),
    "text_classifier": ("err", r"epoch 1/1: .*\[\d\d:\d\d<.*loss=\d"),
    "char_transformer": ("out", r"step +5/5: train loss \d+\.\d+ bits/char, \d+\.\d s\n"),
    "date_translation": ("out", r"step +5/5: train loss \d+\.\d+, \d+\.\d s\n"),
    "recommender": ("err", r"epoch 2/2: .*\[\d\d:\d\d<.*loss=\d"),
    "explain_digits": ("err", r"epoch 2/2: .*\[\d\d:\d\d<.*loss=\d"),
    "gan_digits": ("out", r"epoch +2/2: D loss \d+\.\d+, G loss \d+\.\d+, .* \d+\.\d s\n"),
    "augment_digits": (
        "out",
        r"shifts and rotations +seed 0: test accuracy \d\.\d+ .*, \d+\.\d s\n",
    ),
    "spoken_digits": ("err", r"epoch 1/1: .*\[\d\d:\d\d<.*loss=\d"),
    "regression": ("err", r"epoch 3/3: .*\[\d\d:\d\d<.*loss=\d"),
    "autoencoder": ("err", r"epoch 2/2: .*\[\d\d:\d\d<.*loss=\d"),
    "population": ("out", r"epoch +2/2: train loss median \d+\.\d+; test accuracy .*\d+\.\d s\n"),
}


def check_run(name, captured, output_dir=None):
    """The progress lines of ``name`` were printed, and its files (if any) are in
    ``output_dir``, each with its path printed."""
    stream, pattern = PROGRESS[name]
    assert re.search(pattern, getattr(captured, stream)), f"no progress line in std{stream}"
    if name in WRITES:
        paths = sorted(output_dir / file for file in WRITES[name])
        assert sorted(output_dir.iterdir()) == paths
        for path in paths:
            if path.suffix == ".png":
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"saved {path.resolve()}\n" in captured.out


@pytest.mark.parametrize("name", NAMES)
def test_every_example_has_a_smoke_flag_and_a_main(name):
    source = (EXAMPLES / f"{name}.py").read_text()
    assert "--smoke" in source and "def main(argv=None)" in source
    assert 'if __name__ == "__main__":' in source


@pytest.mark.parametrize("name", NAMES)
def test_help_describes_the_script_and_every_option_before_loading_jax(name):
    # Run the script as a user would, then list the heavy modules that --help imported.
    check = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    heavy = {'jax', 'optax', 'jnn', 'sklearn', 'matplotlib'}\n"
        "    print('imported:', sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    script = EXAMPLES / f"{name}.py"
    run = subprocess.run(
        [sys.executable, "-c", check, str(script), "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip().endswith("imported: []")
    module = load(name)
    assert module.__doc__.splitlines()[0] in run.stdout  # the whole docstring describes it
    actions = module.build_parser()._actions
    for action in actions:
        assert action.help, f"{action.option_strings} has no help"
        assert all(option in run.stdout for option in action.option_strings)
    options = {option for action in actions for option in action.option_strings}
    assert {"--smoke", "--seed"} <= options
    assert ("--output-dir" in options) == (name in WRITES)


@pytest.mark.parametrize("name", sorted(WRITES))
def test_files_go_next_to_the_scripts_by_default_whatever_the_working_directory(name):
    assert load(name).build_parser().parse_args([]).output_dir == EXAMPLES / "outputs"
    ignored = (EXAMPLES.parent / ".gitignore").read_text().splitlines()
    assert "examples/outputs/" in ignored


def test_mlp_digits_smoke(capsys):
    result = load("mlp_digits").main(["--smoke", "--width", "32", "--seed", "1"])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert math.isfinite(result["test_loss"])
    captured = capsys.readouterr()
    assert "test accuracy:" in captured.out and "(target >= 0.97)" in captured.out
    check_run("mlp_digits", captured)


def test_cnn_digits_smoke(output_dir, capsys):
    import jnn

    result = load("cnn_digits").main(["--smoke", "--width", "8", "--output-dir", str(output_dir)])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    captured = capsys.readouterr()
    assert "(target >= 0.98)" in captured.out
    check_run("cnn_digits", captured, output_dir)
    records = jnn.read_json_lines(result["log"])  # one line per epoch, as fit saw it
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["step"] for r in records] == [4, 8]  # 256 images in batches of 64
    assert jnn.history_from_json_lines(result["log"]) == result["history"]  # exact floats


def test_function_approximation_smoke(output_dir, capsys):
    result = load("function_approximation").main(
        ["--smoke", "--width", "16", "--output-dir", str(output_dir)]
    )
    assert math.isfinite(result["test_mse"]) and math.isfinite(result["train_mse"])
    captured = capsys.readouterr()
    assert "test MSE" in captured.out and "(the noise variance is 0.00250)" in captured.out
    check_run("function_approximation", captured, output_dir)


def test_a_smoke_run_without_output_dir_writes_to_smoke_inside_the_default(
    tmp_path, monkeypatch, capsys
):
    module = load("function_approximation")
    monkeypatch.setattr(module, "OUTPUT_DIR", tmp_path / "default")  # not the repository's
    module.main(["--smoke"])
    check_run("function_approximation", capsys.readouterr(), tmp_path / "default" / "smoke")


def test_rnn_timeseries_smoke(output_dir, capsys):
    result = load("rnn_timeseries").main(["--smoke", "--output-dir", str(output_dir)])
    assert math.isfinite(result["lstm_mae"]) and result["naive_mae"] > 0
    captured = capsys.readouterr()
    assert "naive last value" in captured.out
    check_run("rnn_timeseries", captured, output_dir)


def test_text_classifier_smoke(capsys):
    module = load("text_classifier")
    result = module.main(["--smoke"])
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["baseline"] <= 1.0
    assert len(result["languages"]) == 8
    captured = capsys.readouterr()
    assert "held-out accuracy: character CNN" in captured.out
    assert "bag of n-grams" in captured.out and "baseline fitted in" in captured.out
    check_run("text_classifier", captured)


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


def test_date_translation_smoke(capsys):
    module = load("date_translation")
    result = module.main(["--smoke", "--post-norm", "--layers", "1", "--features", "16"])
    assert 0.0 <= result["exact"] <= result["per_character"] <= 1.0
    assert 0.3 < result["baseline"] < 0.6
    captured = capsys.readouterr()
    assert "post-norm blocks" in captured.out and "held-out exact matches" in captured.out
    check_run("date_translation", captured)


def test_date_translation_data():
    module = load("date_translation")
    rng = np.random.default_rng(0)
    sources, targets = module.make_pairs(2000, False, rng)
    held_sources, held_targets = module.make_pairs(500, True, rng)
    first = module.FIRST
    day = lambda iso: (datetime.date.fromisoformat(iso) - first).days  # noqa: E731
    assert all(day(t) % 10 for t in targets) and not any(day(t) % 10 for t in held_targets)
    assert {"March 5, 1987", "the 5th of March 1987", "5.3.1987", "1987/03/05"} <= {
        f(datetime.date(1987, 3, 5)) for f in module.FORMATS
    }
    vocabulary = module.make_vocabulary()
    ids, lengths = module.encode(sources + held_sources, vocabulary, 40)  # every character known
    assert lengths.max() <= 40 and (ids[:, 0] > module.START).all()
    assert (
        module.ordinal(1) == "1st" and module.ordinal(12) == "12th" and module.ordinal(23) == "23rd"
    )


def test_population_smoke(output_dir, capsys):
    result = load("population").main(["--smoke", "--plot", "--output-dir", str(output_dir)])
    accuracy, rates = result["test_accuracy"], result["learning_rates"]
    assert len(accuracy) == len(rates) == 4 and all(0.0 <= a <= 1.0 for a in accuracy)
    assert rates == pytest.approx([1e-4, 1e-4, 1e-1, 1e-1])
    assert result["best_learning_rate"] in rates
    history = result["history"]
    assert len(history["eval_accuracy"]) == 2  # epochs, each with one value per member
    assert all(len(values) == 4 for values in history["eval_accuracy"] + history["loss"])
    assert history["eval_accuracy"][-1] == accuracy
    captured = capsys.readouterr()
    assert "test accuracy of 4 MLPs: min" in captured.out and "best learning rate" in captured.out
    check_run("population", captured, output_dir)


def test_population_members_differ_in_key_and_learning_rate():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jnn

    module = load("population")
    rates = module.learning_rates(1e-4, 1e-1, 4, 8)
    assert rates.dtype == np.float32
    np.testing.assert_allclose(rates, np.repeat([1e-4, 1e-3, 1e-2, 1e-1], 2), rtol=1e-6)
    model = jnn.MLP([4, 3])
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    keys = jax.random.split(jax.random.key(0), 8)
    population = module.init_population(model, optimizer, keys, rates, jnp.zeros((1, 5)))
    assert isinstance(population, jnn.TrainState)
    assert population.params["dense_0"]["weight"].shape == (8, 5, 4)
    assert population.step.shape == (8,)
    np.testing.assert_array_equal(population.opt_state.hyperparams["learning_rate"], rates)
    weights = np.asarray(population.params["dense_0"]["weight"])
    assert len({w.tobytes() for w in weights}) == 8  # every member starts elsewhere


def test_char_transformer_smoke(capsys):
    result = load("char_transformer").main(["--smoke", "--prompt", "The "])
    assert math.isfinite(result["test_bits"])
    assert result["unigram_bits"] > result["bigram_bits"] > 0
    assert result["sample"].startswith("The ") and len(result["sample"]) == 4 + 20
    captured = capsys.readouterr()
    assert "held-out bits per character" in captured.out and "bigram counts" in captured.out
    check_run("char_transformer", captured)


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


def test_data_parallel_smoke_on_eight_virtual_devices():
    # A new process: the example asks XLA for 8 CPU devices before JAX starts (added to
    # the suite's fast-compile flags, which it inherits).
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "data_parallel.py"), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert out.startswith("8 CPU devices\n")
    rows = re.findall(
        r"^(one device|data parallel|fully sharded|data 2 x tensor 4) +([\d.]+) MiB", out, re.M
    )
    sizes = {label: float(size) for label, size in rows}
    assert len(sizes) == 4
    assert sizes["fully sharded"] < sizes["data 2 x tensor 4"] < sizes["data parallel"]
    worst = float(re.search(r"from one device's: (\S+)\n", out).group(1))
    assert worst <= 1e-4
