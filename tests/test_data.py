"""The synthetic data generator: determinism, disjoint splits, meaningful semantic IDs."""

import numpy as np
import pytest

from onerec_jax.lab import data
from onerec_jax.config import preset

CONFIG = preset("tiny-moe")  # codebooks of 16, pathways static 4x16, 8 + 12 history tokens
OPTIONS = data.DataConfig(n_items=256, n_users=300, n_topics=4, subtopics_per_topic=4)


@pytest.fixture(scope="module")
def dataset():
  return data.make_dataset(OPTIONS, CONFIG)


def _arrays(ds):
  return [ds.item_vectors, ds.semantic_ids, ds.popularity, ds.profiles, ds.sequences,
          *ds.splits.values()]


def test_same_seed_same_data(dataset):
  again = data.make_dataset(OPTIONS, CONFIG)
  for a, b in zip(_arrays(dataset), _arrays(again)):
    np.testing.assert_array_equal(a, b)


def test_other_seed_other_data(dataset):
  other = data.make_dataset(OPTIONS.__class__(**{**OPTIONS.to_dict(), "seed": 1}), CONFIG)
  assert not np.array_equal(dataset.sequences, other.sequences)


def test_splits_are_disjoint_and_cover_all_users(dataset):
  s = dataset.splits
  assert not set(s["train"]) & set(s["val"])
  assert not set(s["train"]) & set(s["test"])
  assert not set(s["val"]) & set(s["test"])
  np.testing.assert_array_equal(np.sort(np.concatenate(list(s.values()))),
                                np.arange(OPTIONS.n_users))
  assert len(s["test"]) == int(OPTIONS.test_fraction * OPTIONS.n_users)
  for split in ("train", "val", "test"):  # examples come from the split's users only
    assert set(dataset.examples(split)[0]) <= set(s[split])


def test_semantic_ids_are_distinct_in_range_and_meaningful(dataset):
  sem = dataset.semantic_ids
  assert sem.shape == (OPTIONS.n_items, 3)
  assert len(np.unique(sem, axis=0)) == OPTIONS.n_items
  assert (sem >= 0).all() and (sem < np.array(CONFIG.codebook_sizes)).all()
  # Items sharing a level-1 code are closer than random pairs.
  v = dataset.item_vectors
  d = np.sum((v[:, None] - v[None]) ** 2, axis=-1)
  same = sem[:, None, 0] == sem[None, :, 0]
  np.fill_diagonal(same, False)
  assert d[same].mean() < 0.5 * d.mean()


def test_examples_features_and_targets(dataset):
  users, cuts = dataset.examples("train")
  assert len(users) == len(dataset.splits["train"]) * OPTIONS.train_targets_per_user
  feats = dataset.features(users[:5], cuts[:5])
  assert {k: v.shape for k, v in feats.items()} == {
      p.name: (5, p.max_len, p.width) for p in CONFIG.pathways}
  assert all(v.dtype == np.float32 for v in feats.values())
  # The newest short-term token is the item just before the target.
  last = dataset.sequences[users[:5], cuts[:5] + dataset.history_len - 1]
  item_dim = dataset.item_vectors.shape[1]
  np.testing.assert_array_equal(feats["short_term"][:, -1, :item_dim],
                                dataset.item_vectors[last])
  np.testing.assert_array_equal(dataset.targets(users[:5], cuts[:5]),
                                dataset.sequences[users[:5], cuts[:5] + dataset.history_len])
  test_users, test_cuts = dataset.examples("test")
  assert (test_cuts + dataset.history_len == dataset.sequences.shape[1] - 1).all()
  every_users, every_cuts = dataset.examples("test", every_cut=True)
  assert len(every_users) == len(test_users) * OPTIONS.train_targets_per_user
  assert set(every_users) == set(test_users) and every_cuts.max() == test_cuts[0]


def test_histories_follow_interests(dataset):
  """Consecutive items share a level-1 code far more often than chance (sticky interests),
  which is what the model can learn and the popularity baseline cannot."""
  sem0 = dataset.semantic_ids[dataset.sequences, 0]
  same_next = np.mean(sem0[:, 1:] == sem0[:, :-1])
  chance = np.sum(np.bincount(dataset.semantic_ids[:, 0]) ** 2) / OPTIONS.n_items ** 2
  assert same_next > 3 * chance


def test_batches_and_popularity_ranking(dataset):
  it = data.batches(dataset, "train", 8, np.random.default_rng(0))
  feats, ids = next(it)
  assert ids.shape == (8, 3) and feats["static"].shape == (8, 4, 16)
  ranking = data.popularity_ranking(dataset)
  counts = np.bincount(dataset.targets(*dataset.examples("train")), minlength=OPTIONS.n_items)
  assert sorted(ranking.tolist()) == list(range(OPTIONS.n_items))
  assert (np.diff(counts[ranking]) <= 0).all()


def test_refuses_other_pathways():
  with pytest.raises(ValueError, match="pathways"):
    data.make_dataset(OPTIONS, CONFIG.replace(pathways=CONFIG.pathways[:2]))
