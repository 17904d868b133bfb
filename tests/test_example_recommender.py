"""examples/recommender.py and its data generator examples/data/make_ratings.py: the smoke
run end to end (marked slow), and the pieces it is made of on hand-made cases."""

import gzip
import math
import re

import numpy as np
import pytest
from example_scripts import EXAMPLES, load


@pytest.fixture(scope="module")
def recommender():
    return load(EXAMPLES / "recommender.py")


@pytest.fixture(scope="module")
def make_ratings():
    return load(EXAMPLES / "data" / "make_ratings.py")


@pytest.mark.slow
def test_recommender_smoke(recommender, empty_cwd, output_dir, capsys):
    result = recommender.main(["--smoke", "--output-dir", str(output_dir)])
    rmse, recall = result["rmse"], result["recall"]
    assert list(rmse) == ["global mean", "user + item biases", "matrix factorisation", "two-tower"]
    assert list(recall) == ["popularity", "matrix factorisation", "two-tower"]
    assert all(math.isfinite(value) and value > 0 for value in rmse.values())
    assert all(0.0 <= value <= 1.0 for value in recall.values())
    assert rmse["user + item biases"] < rmse["global mean"]
    assert 0.0 <= result["genre_agreement"] <= 1.0
    captured = capsys.readouterr()
    assert re.search(r"epoch 2/2: .*\[\d\d:\d\d<.*loss=\d", captured.err)  # fit's progress bar
    assert "held-out RMSE: global mean" in captured.out
    assert "held-out recall@10 (ratings >= 4): popularity" in captured.out
    plot = output_dir / "recommender.png"
    assert sorted(output_dir.iterdir()) == [plot]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved {plot.resolve()}\n" in captured.out


def test_recall_at_k_on_a_hand_made_case(recommender):
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # top 2 unseen: items 1 and 3 (0 and 2 were seen)
            [0.1, 0.2, 0.3, 0.4, 0.5],  # top 2: items 4 and 3
            [0.5, 0.5, 0.5, 0.5, 0.5],  # no relevant item: left out of the mean
        ]
    )
    seen = np.array(
        [
            [True, False, True, False, False],
            [False, False, False, False, False],
            [False, False, False, False, False],
        ]
    )
    relevant = np.array(
        [
            [False, True, False, False, True],  # item 1 found, item 4 missed: 1/2
            [True, False, False, False, False],  # item 0 missed: 0/1
            [False, False, False, False, False],
        ]
    )
    assert recommender.recall_at_k(scores, seen, relevant, k=2) == pytest.approx(0.25)
    assert recommender.recall_at_k(scores, seen, relevant, k=3) == pytest.approx(0.5)  # + item 4
    assert recommender.recall_at_k(scores, seen, relevant, k=5) == pytest.approx(1.0)
    # Ties go to the lower item id; a seen item is never recommended, whatever its score.
    ties = np.zeros((1, 4))
    seen_0_and_2 = seen[:1, :4]  # unseen: items 1 and 3, tied
    assert recommender.recall_at_k(ties, seen_0_and_2, np.eye(4, dtype=bool)[[1]], 1) == 1.0
    assert recommender.recall_at_k(ties, seen_0_and_2, np.eye(4, dtype=bool)[[3]], 1) == 0.0


def test_split_holds_out_a_fifth_of_each_user_and_at_least_one(recommender):
    user = np.repeat([0, 1, 2], [10, 3, 1])
    held_out = recommender.split_per_user(user, 0.2, seed=0)
    assert np.bincount(user[held_out]).tolist() == [2, 1, 1]
    assert np.array_equal(held_out, recommender.split_per_user(user, 0.2, seed=0))


def test_bias_baseline_recovers_biases_without_noise(recommender):
    rng = np.random.default_rng(0)
    user_bias, item_bias = rng.normal(size=20), rng.normal(size=15)
    user, item = np.divmod(np.arange(20 * 15), 15)  # every user rates every item
    rating = 3.0 + user_bias[user] + item_bias[item]
    mean, b_u, b_i = recommender.fit_biases(user, item, rating, 20, 15, reg=0.0, sweeps=50)
    np.testing.assert_allclose(mean + b_u[user] + b_i[item], rating, atol=1e-6)


def test_neighbour_agreement(recommender):
    vectors = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0], [1.0, 2.0]])
    labels = np.array([0, 0, 1, 1, 0])  # the last one's nearest is item 3 (label 1)
    assert recommender.neighbour_agreement(vectors, labels) == pytest.approx(0.8)


def test_models_map_id_pairs_to_ratings_and_decay_only_the_embeddings(recommender):
    import jax

    mf, two_tower = recommender.build_models(7, 5, features=4, hidden=6, mean=3.5)
    pairs = np.array([[0, 0], [6, 4], [3, 2]], np.int32)
    for model in (mf, two_tower):
        params = model.init(jax.random.key(0), pairs)
        assert params["user"]["embedding"].shape == (7, 4)
        assert params["item_bias"]["embedding"].shape == (5, 1)
        assert model.apply(params, pairs).shape == (3,)
        mask = recommender.decay_mask(params)
        decayed = {jax.tree_util.keystr(path) for path, on in jax.tree.leaves_with_path(mask) if on}
        assert decayed == {"['item']['embedding']", "['user']['embedding']"}
    params = mf.init(jax.random.key(0), pairs)
    params = jax.tree.map(np.zeros_like, params)
    params["bias"] = np.array(0.25, np.float32)
    params["user"]["embedding"][6] = [1, 2, 0, 0]
    params["item"]["embedding"][4] = [3, 1, 0, 0]
    np.testing.assert_allclose(mf.apply(params, pairs), [3.75, 3.75 + 5, 3.75])
    towers = two_tower.init(jax.random.key(0), pairs)["user_tower"]
    assert towers["dense_0"]["weight"].shape == (4, 6)  # [features, hidden]
    assert towers["dense_1"]["weight"].shape == (6, 4)


def test_generator_is_deterministic_with_the_stated_shapes(make_ratings):
    data = make_ratings.make_ratings(seed=0)
    again = make_ratings.make_ratings(seed=0)
    assert all(np.array_equal(data[name], again[name]) for name in data)
    other = make_ratings.make_ratings(seed=1)
    assert not np.array_equal(data["item"][:100], other["item"][:100])
    user, item, rating = data["user"], data["item"], data["rating"]
    assert len(user) == len(item) == len(rating) > 20_000
    assert (user.dtype, item.dtype, rating.dtype) == (np.int32, np.int32, np.int8)
    assert set(np.unique(rating)) <= {1, 2, 3, 4, 5}
    counts = np.bincount(user, minlength=600)
    assert len(counts) == 600 and counts.min() >= 8 and counts.max() <= 200
    assert len(np.unique(user * 400 + item)) == len(user)  # no pair rated twice
    assert np.all(np.diff(user * 400 + item) > 0)  # sorted by user, then item
    assert data["item_genre"].shape == (400,)
    assert np.bincount(data["item_genre"]).tolist() == [67] * 4 + [66] * 2
    assert data["user_taste"].shape == (600, 6)
    np.testing.assert_allclose(data["user_taste"].sum(axis=1), 1.0)
    # Missing not at random: the most rated tenth of the items holds far more than a tenth.
    popular = np.sort(np.bincount(item, minlength=400))[::-1]
    assert popular[:40].sum() > 0.25 * len(item)


def test_shipped_files_are_the_generators_output(make_ratings, recommender):
    data = make_ratings.make_ratings(seed=0)
    shipped = EXAMPLES / "data"
    made = gzip.decompress(make_ratings.ratings_csv(data, seed=0))
    assert made == gzip.decompress((shipped / make_ratings.RATINGS).read_bytes())
    assert make_ratings.items_csv(data) == (shipped / make_ratings.ITEMS).read_text()
    user, item, rating = recommender.load_ratings()
    assert np.array_equal(user, data["user"]) and np.array_equal(item, data["item"])
    assert np.array_equal(rating, data["rating"].astype(np.float32))
    assert np.array_equal(recommender.load_item_genres(), data["item_genre"])
    assert (shipped / make_ratings.RATINGS).stat().st_size < 200_000


def test_generator_writes_the_same_bytes_twice(make_ratings, tmp_path, capsys):
    for folder in ("a", "b"):
        make_ratings.main(["--seed", "3", "--output-dir", str(tmp_path / folder)])
    for name in (make_ratings.RATINGS, make_ratings.ITEMS):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert f"saved {(tmp_path / 'a' / make_ratings.RATINGS).resolve()}\n" in capsys.readouterr().out
