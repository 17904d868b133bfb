"""examples/spoken_digits.py and the generator of its data, examples/data/make_spoken_digits.py.

The smoke runs train networks and are marked slow; the checks of the data file and of the
NumPy log-mel code are fast and need neither JAX nor espeak-ng.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from example_scripts import EXAMPLES, load

GENERATOR = EXAMPLES / "data" / "make_spoken_digits.py"


@pytest.fixture(scope="module")
def example():
    return load(EXAMPLES / "spoken_digits.py")


@pytest.fixture(scope="module")
def generator():
    return load(GENERATOR)


@pytest.fixture(scope="module")
def data(example):
    return example.load_data()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "gru"])
def test_smoke(example, model, empty_cwd, output_dir, capsys):
    result = example.main(["--smoke", "--model", model, "--output-dir", str(output_dir)])
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert 0.0 <= result["baseline_accuracy"] <= 1.0
    assert 0.05 < result["majority_accuracy"] < 0.15  # about 1/10: the classes are balanced
    confusion = result["confusion"]
    assert confusion.shape == (10, 10) and confusion.sum() == 225
    assert confusion.sum(axis=1).tolist() == [23, 22, 22, 21, 22, 22, 23, 23, 24, 23]
    assert np.trace(confusion) / 225 == pytest.approx(result["test_accuracy"], abs=1e-6)
    captured = capsys.readouterr()
    assert re.search(r"epoch 1/1: .*\[\d\d:\d\d<.*loss=\d", captured.err)  # fit's progress bar
    assert f"held-out voices: {model.upper()} " in captured.out and "baseline" in captured.out
    assert "most frequent mistakes: " in captured.out
    files = ("spoken_digits_confusion.png", "spoken_digits_examples.png")
    assert sorted(p.name for p in output_dir.iterdir()) == list(files)
    for name in files:
        path = output_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"saved {path.resolve()}\n" in captured.out


def test_help_loads_neither_jax_nor_the_data():
    check = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    heavy = {'jax', 'optax', 'jnn', 'sklearn', 'matplotlib'}\n"
        "    print('imported:', sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    script = EXAMPLES / "spoken_digits.py"
    run = subprocess.run(
        [sys.executable, "-c", check, str(script), "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "--model {cnn,gru}" in run.stdout
    assert run.stdout.rstrip().endswith("imported: []")


def test_the_file_has_the_documented_shapes_and_dtypes(data, generator):
    n = len(data["labels"])
    assert n == 900
    expected = {
        "spectrograms": ((n, 100, 32), np.float16),
        "labels": ((n,), np.int8),
        "voices": ((n,), np.int16),
        "speeds": ((n,), np.int16),
        "pitches": ((n,), np.int8),
        "snr_db": ((n,), np.int8),
        "voice_names": ((300,), np.str_),
        "words": ((10,), np.str_),
        "sample_rate": ((), np.int32),
        "hop_length": ((), np.int32),
    }
    assert set(data) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert data[key].shape == shape, key
        assert np.issubdtype(data[key].dtype, dtype), key
    assert data["words"].tolist() == list(generator.WORDS)
    assert int(data["sample_rate"]) == 8000 and int(data["hop_length"]) == 80
    assert np.bincount(data["labels"]).tolist() == [90] * 10
    assert set(np.unique(data["voices"])) == set(range(300))  # every voice speaks
    assert np.isfinite(data["spectrograms"]).all()
    assert set(np.unique(data["snr_db"])) <= set(generator.SNRS_DB)
    low, high = generator.SPEEDS
    assert data["speeds"].min() >= low and data["speeds"].max() <= high
    quanta = data["spectrograms"].astype(np.float32) / generator.QUANTUM
    np.testing.assert_array_equal(quanta, np.round(quanta))
    expected_names = [f"{a}+{v}" for a in generator.ACCENTS for v in generator.VARIANTS]
    assert data["voice_names"].tolist() == expected_names


def test_the_voice_split_has_no_overlap_and_every_digit(example, data):
    train, test = example.split_by_voice(data)
    assert not (train & test).any() and (train | test).all()
    names = data["voice_names"]
    train_voices, test_voices = set(names[data["voices"][train]]), set(names[data["voices"][test]])
    assert not train_voices & test_voices
    assert len(train_voices) == 225 and len(test_voices) == 75
    train_variants = {name.split("+")[1] for name in train_voices}
    test_variants = {name.split("+")[1] for name in test_voices}
    assert test_variants == set(example.TEST_VARIANTS) and not train_variants & test_variants
    assert np.bincount(data["labels"][test], minlength=10).min() >= 20


def test_every_accent_and_variant_says_every_digit(generator):
    counts = np.zeros((len(generator.ACCENTS), len(generator.VARIANTS), 10), int)
    for a in range(len(generator.ACCENTS)):
        for k in range(len(generator.VARIANTS)):
            for label in generator.word_labels(a, k):
                counts[a, k, label] += 1
    assert counts.max() == 1  # three different digits per voice
    assert (counts.sum(axis=1) == 6).all()  # each accent says each digit six times
    assert set(np.unique(counts.sum(axis=0))) == {4, 5}  # each variant four or five times


@pytest.mark.parametrize("frequency", [300.0, 1000.0, 2500.0])
def test_a_pure_tone_peaks_in_the_mel_bin_centred_on_it(generator, frequency):
    rate = generator.SAMPLE_RATE
    tone = np.sin(2 * np.pi * frequency * np.arange(rate) / rate)  # 1 s
    spectrogram = generator.log_mel(tone)
    assert spectrogram.shape == (100, 32) and spectrogram.dtype == np.float32
    nearest = np.argmin(np.abs(generator.mel_centers() - frequency))
    assert (spectrogram[2:-2].argmax(axis=1) == nearest).all()  # every frame off the edges
    # Far from the tone, only the window's side lobes: tens of dB lower.
    assert (
        spectrogram[50, nearest] - np.delete(spectrogram[50], range(nearest - 3, nearest + 4)).max()
        > 6
    )


def test_the_mel_filterbank_is_triangles_of_peak_one_on_the_mel_scale(generator):
    bank = generator.mel_filterbank()
    assert bank.shape == (129, 32) and bank.dtype == np.float32
    assert bank.min() == 0.0 and bank.max() <= 1.0
    centers = generator.mel_centers()
    assert np.all(np.diff(centers) > 0) and centers[-1] < 4000
    steps = np.diff(generator.hz_to_mel(centers))
    np.testing.assert_allclose(steps, steps[0])  # evenly spaced in mel
    np.testing.assert_allclose(generator.mel_to_hz(generator.hz_to_mel(1000.0)), 1000.0)
    np.testing.assert_allclose(generator.hz_to_mel(1000.0), 1000.0, atol=0.1)  # HTK's anchor
    # Between neighbouring centres two filters overlap and add up to one.
    bins = np.linspace(0, 4000, 129)
    inside = (bins >= centers[0]) & (bins <= centers[-1])
    np.testing.assert_allclose(bank[inside].sum(axis=1), 1.0, atol=1e-6)


def test_resampling_keeps_a_tone_and_the_duration(generator):
    rate_in, rate_out = 22050, 8000
    tone = np.sin(2 * np.pi * 440.0 * np.arange(rate_in // 2) / rate_in)  # 0.5 s
    out = generator.resample(tone, rate_in, rate_out)
    assert len(out) == rate_out // 2
    expected = np.sin(2 * np.pi * 440.0 * np.arange(len(out)) / rate_out)
    middle = slice(400, -400)  # away from the edges, where the FFT wraps around
    np.testing.assert_allclose(out[middle], expected[middle], atol=0.02)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng synthesizer")
def test_the_file_is_the_generators_output(generator, data):
    # The first accent's 20 voices draw the first 60 utterances' random numbers, so
    # generating them alone must give the file's first 60 rows (with eSpeak NG 1.51).
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True)
    if "1.51" not in version.stdout:
        pytest.skip(f"the file was made with eSpeak NG 1.51, not {version.stdout.strip()}")
    first = generator.make_dataset(0, accents=generator.ACCENTS[:1], progress=False)
    for key in ("spectrograms", "labels", "voices", "speeds", "pitches", "snr_db"):
        np.testing.assert_array_equal(first[key], data[key][:60], err_msg=key)


def test_the_generator_imports_and_computes_without_espeak_ng(tmp_path):
    # An empty PATH: no espeak-ng; importing the module and the log-mel must not need it.
    code = (
        "import importlib.util, sys, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('gen', {str(GENERATOR)!r})\n"
        "gen = importlib.util.module_from_spec(spec); spec.loader.exec_module(gen)\n"
        "print(gen.log_mel(np.zeros(8000)).shape)\n"
        "try:\n"
        "    gen.synthesize('one', 'en-us', 175, 50)\n"
        "except FileNotFoundError:\n"
        "    print('no espeak-ng')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["(100, 32)", "no espeak-ng"]


@pytest.mark.slow  # trains a network for a few epochs
def test_the_docs_page_runs(tmp_path, monkeypatch):
    # As tests/test_docs.py runs the other pages: every Python block, in order.
    monkeypatch.chdir(tmp_path)
    page = Path(__file__).resolve().parent.parent / "docs" / "spoken_digits.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"spoken_digits.md[block {i}]", "exec"), namespace)
    assert namespace["x_train"].shape == (675, 100, 32)
    assert namespace["spectrogram"][50].argmax() == 14
