"""examples/explain_digits.py: the smoke run end to end, and its deletion test on a toy."""

import re

import numpy as np
import pytest
from example_scripts import load


@pytest.mark.slow
def test_explain_digits_smoke(empty_cwd, output_dir, capsys):
    result = load("explain_digits").main(
        ["--smoke", "--width", "8", "--output-dir", str(output_dir)]
    )
    assert 0.0 <= result["test_accuracy"] <= 1.0 and 0.0 <= result["mlp_test_accuracy"] <= 1.0
    assert set(result["deletion"]) == {"saliency", "integrated gradients", "SmoothGrad", "random"}
    assert all(set(row) == {4, 8, 16} for row in result["deletion"].values())
    captured = capsys.readouterr()
    assert "(target >= 0.98)" in captured.out and "deletion test" in captured.out
    assert re.search(r"epoch 2/2: .*\[\d\d:\d\d<.*loss=\d", captured.err)  # jnn.fit's bar
    files = ["explain_digits.png", "explain_digits_network.png"]
    assert sorted(p.name for p in output_dir.iterdir()) == files
    for name in files:
        path = output_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"saved {path.resolve()}\n" in captured.out


def test_the_deletion_test_rewards_maps_that_find_the_pixels_used():
    # A "network" whose confidence is the ink left in the top-left 4x4 quarter.
    def probability(images):
        ink = images[:, :4, :4, 0].sum(axis=(1, 2))
        p = ink / 16.0
        return np.stack([p, 1 - p], axis=1)

    images = np.full((6, 8, 8, 1), 0.5, np.float32)
    images[:, 6:, :, :] = 0.0  # two blank rows: never erased, never chosen at random
    classes = np.zeros(6, np.int64)
    right = np.zeros_like(images)
    right[:, :4, :4] = 1.0  # points at the quarter that counts
    wrong = np.zeros_like(images)
    wrong[:, 4:, 4:] = 1.0
    falls = load("explain_digits").deletion_test(
        probability, images, classes, {"right": right, "wrong": wrong}, (4, 8), seed=0
    )
    assert falls["right"] == {4: pytest.approx(4 * 0.5 / 16), 8: pytest.approx(8 * 0.5 / 16)}
    assert falls["wrong"][4] < 1e-6 < falls["random"][4] < falls["right"][4]
    # 16 of the 48 inked pixels count: random erasing finds a third of the right ones.
    assert falls["random"][8] == pytest.approx(8 * 0.5 / 16 / 3, rel=0.3)
