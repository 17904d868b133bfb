"""Make ``ratings.csv.gz`` and ``ratings_items.csv``: simulated ratings for
``examples/recommender.py``.

Nothing here is real data; every number comes from the seeded NumPy generator below, so
the files can be shipped and shared under the repository's MIT licence. The simulation:

* **Items** (400) each belong to one of 6 latent genres, balanced and shuffled. An item's
  taste vector is its genre's unit vector plus a little noise of its own (standard
  deviation 0.25 per genre).
* **Popularity** follows a power law: the item of popularity rank ``r`` (a random
  permutation) has weight ``r ** -0.8``, so the most popular item is seen about 120 times
  as often as the least. Popular items are also better on the whole: the item's quality
  ``b_i`` is ``0.3 * z + 0.4 * (its standardized log weight)``, ``z`` standard normal.
* **Users** (600) like a few genres: a taste vector drawn from ``Dirichlet(0.3, ..., 0.3)``
  over the 6 genres. Their leniency ``b_u`` is normal with standard deviation 0.35, and
  their activity (how many items they rate) log-normal around 35, cut to [8, 200].
* **Ratings** come from a noisy latent model,
  ``2.8 + b_u + b_i + 3 * (taste_u . taste_i - 1/6) + noise`` with noise of standard
  deviation 0.5, rounded and clipped to the stars 1-5.
* **Missing not at random.** Each user rates ``activity_u`` distinct items, drawn without
  replacement with probability proportional to ``popularity_i * exp(3.5 * taste_u .
  taste_i)``: popular items are rated more, and so are items of the user's genres.

``ratings.csv.gz`` has one row ``user,item,rating`` per rating (ids from 0), sorted by user
then item, after a comment line naming this script and its seed. ``ratings_items.csv``
has ``item,genre``: the latent genre each item was made from, which the recommender never
sees; the example uses it only to colour its picture of the learned item embeddings.
The gzip header carries no time stamp, so the same seed gives the same bytes (with the
same zlib).

Run:  python examples/data/make_ratings.py            (rewrites the two files next to it)
      python examples/data/make_ratings.py --seed 1 --output-dir /tmp/ratings
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATINGS, ITEMS = "ratings.csv.gz", "ratings_items.csv"
NUM_USERS, NUM_ITEMS, NUM_GENRES = 600, 400, 6


def make_ratings(
    seed: int = 0,
    num_users: int = NUM_USERS,
    num_items: int = NUM_ITEMS,
    num_genres: int = NUM_GENRES,
) -> dict[str, np.ndarray]:
    """Simulate the ratings (see the module docstring), deterministically from ``seed``.

    Returns:
      ``user``, ``item`` (int32) and ``rating`` (int8, 1-5), one entry per rating, sorted
      by user then item; ``item_genre`` ``[num_items]`` (int32) and ``user_taste``
      ``[num_users, num_genres]`` (float64), the latent truth.
    """
    rng = np.random.default_rng(seed)
    item_genre = rng.permutation(np.arange(num_items) % num_genres).astype(np.int32)
    item_taste = np.eye(num_genres)[item_genre] + 0.25 * rng.standard_normal(
        (num_items, num_genres)
    )
    log_weight = -0.8 * np.log1p(rng.permutation(num_items))  # rank r has weight r ** -0.8
    popularity = np.exp(log_weight)
    standardized = (log_weight - log_weight.mean()) / log_weight.std()
    item_bias = 0.3 * rng.standard_normal(num_items) + 0.4 * standardized

    user_taste = rng.dirichlet(np.full(num_genres, 0.3), size=num_users)
    user_bias = 0.35 * rng.standard_normal(num_users)
    activity = np.clip(np.round(rng.lognormal(np.log(35.0), 0.7, num_users)), 8, 200)

    affinity = user_taste @ item_taste.T  # [users, items]
    users, items = [], []
    for user in range(num_users):
        weight = popularity * np.exp(3.5 * affinity[user])
        chosen = rng.choice(
            num_items, size=int(activity[user]), replace=False, p=weight / weight.sum()
        )
        users.append(np.full(len(chosen), user))
        items.append(np.sort(chosen))
    user, item = np.concatenate(users), np.concatenate(items)
    latent = (
        2.8
        + user_bias[user]
        + item_bias[item]
        + 3.0 * (affinity[user, item] - 1.0 / num_genres)
        + 0.5 * rng.standard_normal(len(user))
    )
    rating = np.clip(np.round(latent), 1, 5)
    return {
        "user": user.astype(np.int32),
        "item": item.astype(np.int32),
        "rating": rating.astype(np.int8),
        "item_genre": item_genre,
        "user_taste": user_taste,
    }


def ratings_csv(data: dict[str, np.ndarray], seed: int) -> bytes:
    """The gzipped text of ``ratings.csv.gz`` (no time stamp in the header)."""
    lines = [f"# simulated by examples/data/make_ratings.py --seed {seed}", "user,item,rating"]
    lines += [
        f"{u},{i},{r}" for u, i, r in zip(data["user"], data["item"], data["rating"], strict=True)
    ]
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as file:
        file.write(("\n".join(lines) + "\n").encode())
    return buffer.getvalue()


def items_csv(data: dict[str, np.ndarray]) -> str:
    """The text of ``ratings_items.csv``."""
    rows = [f"{item},{genre}" for item, genre in enumerate(data["item_genre"])]
    return "\n".join(["item,genre", *rows]) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=HERE,
        help="folder for the two files (default: examples/data, next to this script)",
    )
    return parser


def main(argv=None) -> dict[str, np.ndarray]:
    args = build_parser().parse_args(argv)
    data = make_ratings(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / RATINGS).write_bytes(ratings_csv(data, args.seed))
    (args.output_dir / ITEMS).write_text(items_csv(data))
    for name in (RATINGS, ITEMS):
        print(f"saved {(args.output_dir / name).resolve()}")
    print(
        f"{len(data['rating']):,} ratings of {NUM_ITEMS} items by {NUM_USERS} users "
        f"({len(data['rating']) / (NUM_USERS * NUM_ITEMS):.1%} observed), mean "
        f"{data['rating'].mean():.2f} stars"
    )
    return data


if __name__ == "__main__":
    main()
