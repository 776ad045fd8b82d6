"""Synthetic sequential-recommendation data with structure a model can learn.

Items are vectors drawn around a topic -> subtopic hierarchy; their 3-level semantic IDs come
from hierarchical k-means of those vectors (so, as with RQ-KMeans, nearby items share ID
prefixes). Each user has a few interest subtopics with weights; a history is a sticky walk
over them (the current interest persists with probability `stickiness`), items drawn by
popularity within the interest. The next item of the walk is the target. Model inputs are the
three context pathways: static profile tokens (noisy projections of the user's interests),
short-term and long-term histories (item vector plus a recency code per token).
Users are split into train / val / test; everything is a function of DataConfig (seeded).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from onerec_jax.config import Config

PATHWAYS = ("static", "short_term", "long_term")
TIME_DIMS = 8  # recency code appended to every history token


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Sizes and the generating process; the model config fixes the feature shapes."""

  seed: int = 0
  n_items: int = 4096
  n_users: int = 16000
  n_topics: int = 16
  subtopics_per_topic: int = 8
  interests_per_user: int = 3
  stickiness: float = 0.8  # P(next item stays in the current interest)
  explore: float = 0.05  # P(next item is drawn by global popularity instead)
  train_targets_per_user: int = 4  # train examples per user (consecutive cut points)
  val_fraction: float = 0.05
  test_fraction: float = 0.15
  leaf_size: int = 8  # target items per level-2 cluster in the semantic-ID tree

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Items, users and their histories. Example = (user, cut): history is
  sequences[user, cut:cut + history_len], target sequences[user, cut + history_len]."""

  config: DataConfig
  model_config: Config
  item_vectors: np.ndarray  # [I, item_dim] f32
  semantic_ids: np.ndarray  # [I, levels] int32, one distinct tuple per item
  popularity: np.ndarray  # [I] f32, sums to 1
  profiles: np.ndarray  # [U, n_static, static_width] f32
  sequences: np.ndarray  # [U, history_len + train_targets_per_user] int32 item ids
  splits: dict[str, np.ndarray]  # split name -> user ids

  @property
  def history_len(self) -> int:
    return _history_len(self.model_config)

  @property
  def item_ids(self) -> np.ndarray:
    return np.arange(len(self.item_vectors), dtype=np.int32)

  def examples(self, split: str, every_cut: bool | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(users [n], cuts [n]) of a split's users: every cut point (the default for train;
    train_targets_per_user per user) or only the last (the default for val and test)."""
    users = self.splits[split]
    if every_cut or (every_cut is None and split == "train"):
      cuts = np.arange(self.config.train_targets_per_user)
      return np.repeat(users, cuts.size), np.tile(cuts, users.size)
    last = self.sequences.shape[1] - self.history_len - 1
    return users, np.full(users.size, last)

  def targets(self, users: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Target item ids [n]."""
    return self.sequences[users, cuts + self.history_len]

  def features(self, users: np.ndarray, cuts: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs: pathway name -> [n, max_len, width] f32 (all tokens real)."""
    cfg = self.model_config
    lens = {p.name: p.max_len for p in cfg.pathways}
    hist = self.sequences[users[:, None], cuts[:, None] + np.arange(self.history_len)]
    n_long = lens["long_term"]
    age = np.arange(self.history_len, 0, -1)  # oldest first; 1 = most recent
    tokens = np.concatenate(  # [n, history_len, item_dim + TIME_DIMS]
        [self.item_vectors[hist], np.broadcast_to(
            recency_code(age), (len(users),) + (self.history_len, TIME_DIMS))], axis=-1)
    return {"static": self.profiles[users],
            "long_term": tokens[:, :n_long].astype(np.float32),
            "short_term": tokens[:, n_long:].astype(np.float32)}


def _history_len(cfg: Config) -> int:
  lens = {p.name: p.max_len for p in cfg.pathways}
  return lens["short_term"] + lens["long_term"]


def recency_code(age: np.ndarray) -> np.ndarray:
  """Sinusoidal code of a token's age: [T] -> [T, TIME_DIMS]."""
  freqs = 1.0 / (4.0 ** np.arange(TIME_DIMS // 2))
  angles = age[:, None] * freqs[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 25
            ) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with k-means++ seeding: (labels [n] in [0, k), squared distances to
  the centres [n, k])."""
  n = len(x)
  k = min(k, n)
  centers = [x[rng.integers(n)]]
  d2 = np.sum((x - centers[0]) ** 2, axis=1)
  for _ in range(1, k):
    c = x[rng.choice(n, p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(n)]
    centers.append(c)
    d2 = np.minimum(d2, np.sum((x - c) ** 2, axis=1))
  centers = np.stack(centers)
  for _ in range(iters):
    dist = np.sum((x[:, None] - centers[None]) ** 2, axis=-1)  # [n, k]
    labels = np.argmin(dist, axis=1)
    for j in range(k):
      members = labels == j
      # An emptied cluster takes the point farthest from its center.
      centers[j] = x[members].mean(0) if members.any() else x[np.argmax(dist.min(1))]
  dist = np.sum((x[:, None] - centers[None]) ** 2, axis=-1)
  return np.argmin(dist, axis=1), dist


def _cap(labels: np.ndarray, dist: np.ndarray, capacity: int) -> np.ndarray:
  """Moves the farthest members of clusters over capacity to the nearest cluster with
  room (needs k * capacity >= n)."""
  labels = labels.copy()
  counts = np.bincount(labels, minlength=dist.shape[1])
  for j in np.flatnonzero(counts > capacity):
    members = np.flatnonzero(labels == j)
    for i in members[np.argsort(-dist[members, j], kind="stable")][:counts[j] - capacity]:
      c = next(c for c in np.argsort(dist[i], kind="stable") if counts[c] < capacity)
      labels[i], counts[j], counts[c] = c, counts[j] - 1, counts[c] + 1
  return labels


def semantic_ids(vectors: np.ndarray, codebook_sizes: tuple[int, ...], leaf_size: int,
                 rng: np.random.Generator) -> np.ndarray:
  """Hierarchical k-means codes [n, levels]: level 0 splits all items into codebook_sizes[0]
  clusters, each further level splits its parent into about len/leaf_size clusters (those
  above the last level capped at its codebook size), and the last level numbers a leaf's
  items by distance to the leaf centre, so every item gets a distinct tuple."""
  levels = len(codebook_sizes)
  codes = np.zeros((len(vectors), levels), np.int32)
  # Most items a node at each level can hold.
  room = [math.prod(codebook_sizes[j + 1:]) for j in range(levels)]
  if len(vectors) > math.prod(codebook_sizes):
    raise ValueError(f"{len(vectors)} items exceed the {math.prod(codebook_sizes)} "
                     f"semantic-ID tuples")

  def split(idx: np.ndarray, level: int):
    size = codebook_sizes[level]
    if level == levels - 1:
      d = np.sum((vectors[idx] - vectors[idx].mean(0)) ** 2, axis=1)
      codes[idx[np.argsort(d, kind="stable")], level] = np.arange(len(idx))
      return
    k = size if level == 0 else min(size, max(math.ceil(len(idx) / leaf_size),
                                              math.ceil(len(idx) / room[level])))
    labels = _cap(*kmeans(vectors[idx], k, rng), room[level])
    codes[idx, level] = labels
    for j in np.unique(labels):
      split(idx[labels == j], level + 1)

  split(np.arange(len(vectors)), 0)
  return codes


def make_dataset(config: DataConfig, model_config: Config) -> Dataset:
  """Builds the dataset; feature shapes follow model_config's three pathways."""
  widths = {p.name: p.width for p in model_config.pathways}
  if sorted(widths) != sorted(PATHWAYS) or widths["short_term"] != widths["long_term"]:
    raise ValueError(f"the synthetic data needs pathways {PATHWAYS} with equal short_term "
                     f"and long_term widths; the model has {widths}")
  item_dim = widths["short_term"] - TIME_DIMS
  rng = np.random.default_rng(config.seed)

  # Items around a topic -> subtopic hierarchy; log-normal popularity.
  n_sub = config.n_topics * config.subtopics_per_topic
  topics = rng.standard_normal((config.n_topics, item_dim))
  subtopics = (np.repeat(topics, config.subtopics_per_topic, axis=0)
               + 0.6 * rng.standard_normal((n_sub, item_dim)))
  item_sub = rng.integers(0, n_sub, config.n_items)
  vectors = (subtopics[item_sub] + 0.3 * rng.standard_normal((config.n_items, item_dim))
             ).astype(np.float32)
  popularity = np.exp(1.2 * rng.standard_normal(config.n_items))
  popularity /= popularity.sum()
  sem = semantic_ids(vectors, model_config.codebook_sizes, config.leaf_size, rng)

  # Per subtopic, its items and their within-subtopic popularity (for sampling).
  by_sub = [np.flatnonzero(item_sub == s) for s in range(n_sub)]
  sub_weight = np.array([popularity[m].sum() for m in by_sub])
  occupied = np.flatnonzero(sub_weight > 0)

  # Users: interests (subtopics, popular ones more often) with Dirichlet weights.
  k = config.interests_per_user
  interests = np.stack([rng.choice(occupied, k, replace=False,
                                   p=sub_weight[occupied] / sub_weight[occupied].sum())
                        for _ in range(config.n_users)])  # [U, k]
  weights = rng.dirichlet(np.ones(k), config.n_users)  # [U, k]

  # Histories: a sticky walk over the user's interests.
  length = _history_len(model_config) + config.train_targets_per_user
  state = np.array([rng.choice(k, p=w) for w in weights])
  seq = np.zeros((config.n_users, length), np.int32)
  # Item of subtopic s at uniform draw u: searchsorted(s + within-subtopic CDF, s + u).
  sub_items = np.concatenate(by_sub)
  sub_cdf = np.concatenate([s + np.cumsum(popularity[m]) / popularity[m].sum()
                            for s, m in enumerate(by_sub)])
  for t in range(length):
    switch = rng.random(config.n_users) > config.stickiness
    redraw = (weights.cumsum(1) > rng.random(config.n_users)[:, None]).argmax(1)
    state = np.where(switch, redraw, state)
    sub = interests[np.arange(config.n_users), state]
    pos = np.searchsorted(sub_cdf, sub + rng.random(config.n_users))
    within = sub_items[np.minimum(pos, len(sub_items) - 1)]
    explore = rng.random(config.n_users) < config.explore
    seq[:, t] = np.where(explore, rng.choice(config.n_items, config.n_users, p=popularity),
                         within)

  # Static profile: noisy random projections of the weighted interest centre.
  static = next(p for p in model_config.pathways if p.name == "static")
  centre = np.einsum("uk,ukd->ud", weights, subtopics[interests])  # [U, item_dim]
  proj = rng.standard_normal((static.max_len, static.width, item_dim)) / math.sqrt(item_dim)
  profiles = (np.einsum("swd,ud->usw", proj, centre)
              + 0.5 * rng.standard_normal((config.n_users, static.max_len, static.width))
              ).astype(np.float32)

  # Split by user.
  order = rng.permutation(config.n_users)
  n_val = int(config.val_fraction * config.n_users)
  n_test = int(config.test_fraction * config.n_users)
  splits = {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}
  return Dataset(config, model_config, vectors, sem, popularity.astype(np.float32),
                 profiles, seq, splits)


def batches(dataset: Dataset, split: str, batch_size: int, rng: np.random.Generator):
  """Endless shuffled training batches: (features, semantic-ID targets [B, levels])."""
  users, cuts = dataset.examples(split)
  while True:
    order = rng.permutation(len(users))
    for lo in range(0, len(order) - batch_size + 1, batch_size):
      i = order[lo:lo + batch_size]
      yield (dataset.features(users[i], cuts[i]),
             dataset.semantic_ids[dataset.targets(users[i], cuts[i])])


def popularity_ranking(dataset: Dataset) -> np.ndarray:
  """Item ids by how often they are a training target, most frequent first: the
  popularity baseline's recommendation for every user."""
  counts = np.bincount(dataset.targets(*dataset.examples("train")),
                       minlength=len(dataset.item_ids))
  return np.argsort(-counts, kind="stable").astype(np.int32)
