"""MovieLens-100k reading and the dataset built from it, on a small synthetic wheel with
the real files' names and formats (the real data is never needed by the tests, nor
committed): parsing, timelines, splits, features, semantic IDs, the co-occurrence
baseline, the wheel's checksum, and the options file."""

import zipfile

import numpy as np
import pytest

from onerec_jax.config import preset
from onerec_jax.errors import InputError
from onerec_jax.lab import datasets, evaluate, movielens

CONFIG = preset("movielens")
N_USERS, N_ITEMS = 40, 90


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  """A zip holding ml-100k.inter and ml-100k.item in RecBole's atomic-file format: users
  rate 8-40 distinct items at random times (raw ids not dense, equal timestamps)."""
  rng = np.random.default_rng(0)
  lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
  for u in range(N_USERS):
    items = rng.choice(N_ITEMS, rng.integers(8, 41), replace=False)
    times = rng.integers(880000000, 880000100, items.size)  # many ties
    lines += [f"{3 * u + 7}\t{i + 1}\t{rng.integers(1, 6)}\t{t}"
              for i, t in zip(items, times)]
  item_lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
  for i in range(N_ITEMS):
    year = "unkonwn" if i == 5 else "V" if i == 6 else str(1950 + i % 48)
    genres = " ".join(rng.choice(movielens.GENRES, rng.integers(1, 4), replace=False))
    item_lines.append(f"{i + 1}\tMovie {i}\t{year}\t{genres}")
  path = tmp_path_factory.mktemp("wheel") / movielens.WHEEL
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(movielens.MEMBER.format("inter"), "\n".join(lines) + "\n")
    z.writestr(movielens.MEMBER.format("item"), "\n".join(item_lines) + "\n")
  return path


@pytest.fixture(scope="module")
def dataset(wheel):
  return movielens.make_movielens(movielens.MovieLensConfig(test_fraction=0.25), CONFIG,
                                  wheel)


def test_read_wheel_sorts_timelines_and_makes_ids_dense(wheel):
  raw = movielens.read_wheel(wheel)
  assert int(raw["n_users"]) == N_USERS and raw["genres"].shape == (N_ITEMS, 19)
  key = np.stack([raw["user"], raw["time"], raw["item"]])
  order = np.lexsort(key[::-1])
  np.testing.assert_array_equal(order, np.arange(order.size))  # sorted by user, time, item
  assert raw["item"].max() < N_ITEMS and raw["user"].max() == N_USERS - 1
  assert np.isnan(raw["year"][5]) and np.isnan(raw["year"][6]) and raw["year"][7] == 1957
  assert np.all(raw["genres"].sum(1) >= 1)


def test_examples_are_every_position_of_the_splits_users(dataset):
  s = dataset.splits
  assert not set(s["train"]) & set(s["test"]) and not set(s["val"]) & set(s["test"])
  assert sorted(np.concatenate(list(s.values()))) == list(range(N_USERS))
  assert len(s["test"]) == 10
  users, cuts = dataset.examples("test")
  assert len(users) == int((dataset.lengths[s["test"]] - 1).sum())
  for u in s["test"]:
    np.testing.assert_array_equal(cuts[users == u], np.arange(1, dataset.lengths[u]))
  last_u, last_c = dataset.examples("test", every_cut=False)
  np.testing.assert_array_equal(last_c, dataset.lengths[last_u] - 1)
  np.testing.assert_array_equal(dataset.targets(users, cuts), dataset.items[users, cuts])


def test_features_hold_the_history_before_the_cut(dataset):
  users, cuts = dataset.examples("train")
  f = dataset.features(users, cuts)
  assert f["static"].shape == (len(users), 1, movielens.STATIC_DIMS)
  assert f["short_term"].shape == (len(users), 16, movielens.TOKEN_DIMS)
  assert f["long_term"].shape == (len(users), 48, movielens.TOKEN_DIMS)
  i = int(np.argmax(cuts))  # a long history
  u, c = users[i], cuts[i]
  tokens = np.concatenate([f["long_term"][i], f["short_term"][i]])  # oldest first
  d = movielens.ITEM_DIMS
  recent = dataset.items[u, max(0, c - 64):c]
  np.testing.assert_allclose(tokens[-len(recent):, :d], dataset.item_vectors[recent])
  assert np.all(tokens[-len(recent):, -1] == 0) and np.all(tokens[:-len(recent), -1] == 1)
  assert np.all(tokens[:-len(recent), :-1] == 0)  # padding: zeros but the flag
  np.testing.assert_allclose(tokens[-len(recent):, d],
                             (dataset.ratings[u, max(0, c - 64):c] - 3) / 2)
  g = len(movielens.GENRES)
  whole = dataset.item_vectors[dataset.items[u, :c]]
  np.testing.assert_allclose(f["static"][i, 0, :g], whole[:, :g].mean(0), rtol=1e-5)
  np.testing.assert_allclose(f["static"][i, 0, g + 2:], whole[:, g + 1:].mean(0),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(f["static"][i, 0, g + 1], np.log1p(c) / 6, rtol=1e-6)


def test_semantic_ids_are_distinct_and_meaningful(dataset):
  sem = dataset.semantic_ids
  assert sem.shape == (N_ITEMS, 3) and len(np.unique(sem, axis=0)) == N_ITEMS
  assert (sem >= 0).all() and (sem < np.array(CONFIG.codebook_sizes)).all()


def test_residual_kmeans_codes_follow_the_structure():
  """Four far-apart blobs, each of two sub-blobs: level 1 finds the blobs, level 2 the
  sub-blobs within them (the residuals), level 3 makes every tuple distinct."""
  rng = np.random.default_rng(1)
  blob = np.repeat(np.eye(4) * 20, 40, axis=0)  # [160, 4]
  sub = np.tile(np.repeat([[0, 0, 0, 0], [3, 3, 3, 3]], 20, axis=0), (4, 1))
  x = blob + sub + 0.1 * rng.standard_normal((160, 4))
  codes = movielens.residual_kmeans_ids(x, (4, 2, 32), rng)
  assert len(np.unique(codes, axis=0)) == 160
  for b in range(4):
    assert len(set(codes[b * 40:(b + 1) * 40, 0])) == 1
  first, second = codes[:20, :2], codes[20:40, :2]
  assert len(np.unique(first, axis=0)) == len(np.unique(second, axis=0)) == 1
  assert not np.array_equal(first[0], second[0])


def test_cooccurrence_baseline_by_brute_force(dataset):
  users, cuts = dataset.examples("test")
  ranked = movielens.cooccurrence_ranking(dataset, users, cuts, 20, recent=8)
  # Cosine co-occurrence from each item's set of training users, pair by pair.
  holders = [set() for _ in range(N_ITEMS)]
  for u in dataset.splits["train"]:
    for item in dataset.items[u, :dataset.lengths[u]]:
      holders[item].add(u)
  sim = np.zeros((N_ITEMS, N_ITEMS))
  for a in range(N_ITEMS):
    for b in range(N_ITEMS):
      if a != b and holders[a] and holders[b]:
        sim[a, b] = len(holders[a] & holders[b]) / np.sqrt(len(holders[a]) * len(holders[b]))
  for i in (0, len(users) // 2, len(users) - 1):
    u, c = users[i], cuts[i]
    hist = dataset.items[u, :c]
    score = sum(0.9 ** age * sim[item] for age, item in enumerate(hist[::-1][:8]))
    score[hist] = -np.inf
    assert not set(ranked[i]) & set(hist)
    np.testing.assert_allclose(score[ranked[i]], np.sort(score)[::-1][:20], rtol=1e-5)


def test_history_items_leave_the_rankings(dataset):
  users, cuts = dataset.examples("test")
  seen = datasets.seen_items(dataset, users, cuts)
  ranked = np.tile(np.arange(64), (len(users), 1))
  dropped = evaluate.drop_seen(ranked, seen)
  i = len(users) - 1
  want = [x for x in range(64) if x not in set(dataset.items[users[i], :cuts[i]])]
  np.testing.assert_array_equal(dropped[i, :len(want)], want)
  assert np.all(dropped[i, len(want):] == -1)


def test_fetch_refuses_another_wheel(tmp_path):
  (tmp_path / movielens.WHEEL).write_bytes(b"not the wheel")
  with pytest.raises(movielens.MovieLensError, match="SHA-256"):
    movielens.fetch(tmp_path)


def test_options_file_names_the_dataset():
  opts = movielens.MovieLensConfig(seed=3)
  assert datasets.options_from_dict(opts.to_dict()) == opts
  assert isinstance(datasets.options_from_dict({"seed": 1}), datasets.data.DataConfig)
  with pytest.raises(ValueError, match="unknown dataset 'ml-1m'"):
    datasets.options_from_dict({"dataset": "ml-1m"})
  with pytest.raises(InputError, match="MovieLens features need pathways"):
    movielens.check_model(preset("demo"))
