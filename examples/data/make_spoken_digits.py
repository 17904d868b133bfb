"""Make ``spoken_digits.npz``: "zero" to "nine" spoken by espeak-ng, as log-mel spectrograms.

The file is generated once and shipped; ``examples/spoken_digits.py`` reads only the
``.npz`` and needs no synthesizer. Rerunning this script needs the espeak-ng speech
synthesizer on the PATH (Debian: ``apt-get install espeak-ng``); importing it needs only
NumPy, so the tests can check the log-mel code without espeak-ng.

Voices: every pair of an accent (a base voice of espeak-ng: eight English ones, and
seven other languages reading the English words with their own spelling rules, a strong
"foreign accent") and a voice variant (``+f3``, ``+m2``, ``+klatt``, ``+croak``...,
which change the formants, the pitch range, breathiness and the synthesis method) is one
voice, named as espeak-ng's ``-v`` takes it, e.g. ``en-us+f3``: 15 accents and 20
variants make 300 voices. Each voice says three of the digits (``word_labels``), each at
a speed and a pitch drawn at random: 900 utterances.

Each utterance goes through the same steps:

1. ``espeak-ng -v VOICE -s SPEED -p PITCH --stdout WORD``: 16-bit mono WAV at 22,050 Hz.
2. Resampled to 8,000 Hz (band-limited, with the FFT), leading and trailing silence
   trimmed, scaled to unit RMS.
3. Placed at a random offset in a window of 1 s (cut if longer), white Gaussian noise
   added at a signal-to-noise ratio drawn from ``SNRS_DB``.
4. Log-mel spectrogram: STFT with a 25 ms Hann window (200 samples, zero-padded to a
   256-point FFT) every 10 ms (80 samples), power spectrum, 32 triangular mel filters
   (HTK mel scale, 0-4,000 Hz), natural log; 100 frames per second of audio.
5. Rounded to multiples of 1/4 and stored as float16. The rounding error, at most 1/8
   (0.54 dB), is small beside the spread of the noise's log-mel from frame to frame (a
   standard deviation of 0.4-1.0 in each mel bin), and the rounding makes the
   compressed file 2.4 times smaller (2.1 MB instead of 5.0 MB).

The file holds (``n`` utterances, ``v`` voices):

============== ====================== ===============================================
key            shape, dtype           what
============== ====================== ===============================================
spectrograms   [n, 100, 32] float16   log-mel power, [utterance, frame, mel bin]
labels         [n] int8               the digit said, 0-9
voices         [n] int16              index into ``voice_names``
speeds         [n] int16              espeak-ng's ``-s``, words per minute
pitches        [n] int8               espeak-ng's ``-p``, 0-99
snr_db         [n] int8               signal-to-noise ratio of the added noise, dB
voice_names    [v] str                ``accent+variant``, as ``-v`` takes it
words          [10] str               "zero" ... "nine"
sample_rate    [] int32               8000
hop_length     [] int32               80 samples (10 ms)
============== ====================== ===============================================

Run:  python examples/data/make_spoken_digits.py      (writes examples/data/spoken_digits.npz)
      python examples/data/make_spoken_digits.py --output /tmp/digits.npz --seed 1
"""

from __future__ import annotations

import argparse
import io
import subprocess
import time
import wave
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).resolve().parent / "spoken_digits.npz"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# English accents, then languages whose spelling rules give the English words an accent
# (each checked with `espeak-ng -x`: es spells "two" letter by letter, so it is left out).
ACCENTS = (
    "en-us",
    "en-us-nyc",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "de",
    "nl",
    "sv",
    "fr",
    "it",
    "pt",
    "pl",
)
# Variants (espeak-ng --voices=variant): male, female, Klatt-synthesized and odd voices.
VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "croak",
    "grandma",
    "grandpa",
    "whisper",
)
SPEEDS = (120, 220)  # words per minute, drawn uniformly (espeak-ng's default is 175)
PITCHES = (25, 75)  # espeak-ng's 0-99 scale, drawn uniformly (default 50)
SNRS_DB = (5, 10, 20, 30)
WORDS_PER_VOICE = 3
SAMPLE_RATE = 8000
DURATION = 1.0  # seconds: every spectrogram has the same number of frames
WINDOW_LENGTH = 200  # 25 ms
N_FFT = 256
HOP_LENGTH = 80  # 10 ms
N_MELS = 32
QUANTUM = 1 / 4  # log-mel values are rounded to multiples of this before float16


def hz_to_mel(hz):
    """The HTK mel scale: ``2595 * log10(1 + hz / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Triangular filters ``[n_fft // 2 + 1, n_mels]`` on the FFT bins, peak 1.

    Filter ``m`` rises from the ``m``-th of ``n_mels + 2`` points spaced evenly on the mel
    scale between ``fmin`` and ``fmax`` (default: half the sample rate) to 1 at the next
    point, its centre (``mel_centers(...)[m]``), and falls to 0 at the one after.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # the FFT bins' frequencies
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (center - lower)
    falling = (upper - bins) / (upper - center)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


def mel_centers(n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE, fmin: float = 0.0):
    """The centre frequency in Hz of each filter of ``mel_filterbank``."""
    points = np.linspace(hz_to_mel(fmin), hz_to_mel(sample_rate / 2), n_mels + 2)
    return mel_to_hz(points[1:-1])


def log_mel(audio: np.ndarray, filterbank: np.ndarray | None = None) -> np.ndarray:
    """Log-mel power spectrogram ``[frames, n_mels]`` of a mono signal ``[samples]``.

    Frames every ``HOP_LENGTH`` samples, ``len(audio) // HOP_LENGTH`` of them: the signal
    is zero-padded by ``(N_FFT - HOP_LENGTH) / 2`` on each side, so frame ``t`` covers
    the 256 samples centred on the middle of hop ``t``; its 200-sample Hann window sits
    in the middle of those. Power is ``|rfft|**2``, summed by the mel filters; the log
    has a floor of ``1e-6``.
    """
    filterbank = mel_filterbank() if filterbank is None else filterbank
    pad = (N_FFT - HOP_LENGTH) // 2
    padded = np.pad(np.asarray(audio, np.float64), pad)
    frames = len(audio) // HOP_LENGTH
    starts = np.arange(frames)[:, None] * HOP_LENGTH
    window = np.zeros(N_FFT)
    offset = (N_FFT - WINDOW_LENGTH) // 2
    window[offset : offset + WINDOW_LENGTH] = np.hanning(WINDOW_LENGTH + 2)[1:-1]  # no zeros
    segments = padded[starts + np.arange(N_FFT)] * window  # [frames, N_FFT]
    power = np.abs(np.fft.rfft(segments, axis=-1)) ** 2  # [frames, N_FFT // 2 + 1]
    return np.log(power @ filterbank + 1e-6).astype(np.float32)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling with the FFT: keep the spectrum below the new Nyquist.

    The signal is zero-padded to a whole number of blocks of ``rate_in / g`` samples
    (``g`` the greatest common divisor), so the output has exactly ``rate_out / g``
    samples per block.
    """
    g = np.gcd(rate_in, rate_out)
    block_in, block_out = rate_in // g, rate_out // g
    blocks = -(-len(audio) // block_in)
    padded = np.pad(np.asarray(audio, np.float64), (0, blocks * block_in - len(audio)))
    spectrum = np.fft.rfft(padded)
    n_out = blocks * block_out
    keep = min(len(spectrum), n_out // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n=n_out) * (n_out / len(padded))
    return out[: -(-len(audio) * rate_out // rate_in)]


def synthesize(word: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Run espeak-ng; return the audio in [-1, 1] and its sample rate."""
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    wav = subprocess.run(command, capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        frames = reader.readframes(reader.getnframes())
        rate = reader.getframerate()
    return np.frombuffer(frames, np.int16).astype(np.float64) / 32768.0, rate


def trim(audio: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Cut the silence before and after the word: samples under ``threshold`` * peak."""
    loud = np.flatnonzero(np.abs(audio) > threshold * np.abs(audio).max())
    return audio[loud[0] : loud[-1] + 1]


def utterance(speech: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Speech at unit RMS, placed at a random offset in ``DURATION`` s, plus white noise."""
    length = int(DURATION * SAMPLE_RATE)
    speech = speech[:length] / np.sqrt(np.mean(speech**2))
    audio = np.zeros(length)
    start = rng.integers(0, length - len(speech) + 1)
    audio[start : start + len(speech)] = speech
    return audio + rng.normal(0.0, 10 ** (-snr_db / 20), length)


def word_labels(accent: int, variant: int, words_per_voice: int = WORDS_PER_VOICE) -> list[int]:
    """The digits that the voice of accent ``accent`` and variant ``variant`` says.

    ``(words_per_voice * (accent + variant) + j) % 10`` for ``j < words_per_voice``: with
    3 words, 15 accents and 20 variants, every accent says each digit 6 times and every
    variant 4 or 5 times, so a split by accent or by variant keeps all ten digits.
    """
    start = words_per_voice * (accent + variant)
    return [(start + j) % len(WORDS) for j in range(words_per_voice)]


def make_dataset(
    seed: int = 0,
    accents=ACCENTS,
    variants=VARIANTS,
    words_per_voice=WORDS_PER_VOICE,
    progress=True,
) -> dict:
    """Synthesize ``words_per_voice`` words (``word_labels``) in every voice; return the
    arrays of the ``.npz``."""
    rng = np.random.default_rng(seed)
    filterbank = mel_filterbank()
    grid = [(a, k) for a in range(len(accents)) for k in range(len(variants))]
    voice_names = [f"{accents[a]}+{variants[k]}" for a, k in grid]
    rows = {key: [] for key in ("spectrograms", "labels", "voices", "speeds", "pitches", "snr_db")}
    start = time.perf_counter()
    for v, (voice, (a, k)) in enumerate(zip(voice_names, grid, strict=True)):
        for label in word_labels(a, k, words_per_voice):
            word = WORDS[label]
            speed = int(rng.integers(SPEEDS[0], SPEEDS[1] + 1))
            pitch = int(rng.integers(PITCHES[0], PITCHES[1] + 1))
            snr_db = int(rng.choice(SNRS_DB))
            audio, rate = synthesize(word, voice, speed, pitch)
            speech = trim(resample(audio, rate, SAMPLE_RATE))
            spectrogram = log_mel(utterance(speech, snr_db, rng), filterbank)
            rows["spectrograms"].append(np.round(spectrogram / QUANTUM) * QUANTUM)
            for key, value in zip(
                ("labels", "voices", "speeds", "pitches", "snr_db"),
                (label, v, speed, pitch, snr_db),
                strict=True,
            ):
                rows[key].append(value)
        if progress and (v + 1) % 20 == 0:
            seconds = time.perf_counter() - start
            print(f"{v + 1}/{len(voice_names)} voices, {seconds:.0f} s", flush=True)
    dtypes = {
        "spectrograms": np.float16,
        "labels": np.int8,
        "voices": np.int16,
        "speeds": np.int16,
        "pitches": np.int8,
        "snr_db": np.int8,
    }
    data = {key: np.asarray(rows[key], dtypes[key]) for key in rows}
    data["voice_names"] = np.array(voice_names)
    data["words"] = np.array(WORDS)
    data["sample_rate"] = np.int32(SAMPLE_RATE)
    data["hop_length"] = np.int32(HOP_LENGTH)
    return data


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the .npz to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of speeds, pitches, noise")
    args = parser.parse_args(argv)
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True)
    print(version.stdout.strip())
    data = make_dataset(args.seed)
    np.savez_compressed(args.output, **data)
    size = args.output.stat().st_size
    print(f"{len(data['labels'])} utterances, {len(data['voice_names'])} voices, {size:,} bytes")
    print(f"saved {args.output.resolve()}")
    return args.output


if __name__ == "__main__":
    main()
