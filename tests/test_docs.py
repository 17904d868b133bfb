"""The Python blocks of the narrative docs run as written, in order, one namespace per page."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
# design.md shows Flax and Equinox code beside jnn's; those libraries are not test deps.
PAGES = [
    "index.md",
    "ground_up.md",
    "dense.md",
    "cnn.md",
    "rnn.md",
    "transformer.md",
    "training.md",
    "checkpoints.md",
    "scaling.md",
    "accelerators.md",
    "regression.md",
    "autoencoder.md",
    "gan.md",
    "augmentation.md",
    "recommender.md",
    "explain.md",
]
# spoken_digits.md runs in tests/test_example_spoken_digits.py, which also checks its results.


@pytest.mark.slow  # whole tutorials that train networks: run by `pytest -m slow` and CI
@pytest.mark.parametrize("page", PAGES + ["../README.md"])  # the README's quick start too
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks, f"{page} has no Python blocks"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page}[block {i}]", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page}, block {i} failed:\n{block}") from error
