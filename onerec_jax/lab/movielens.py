"""MovieLens-100k as the RecBole 1.2.1 wheel ships it, as a sequential-recommendation
dataset with the synthetic data's interface (onerec_jax.lab.data.Dataset).

The data's licence forbids redistribution, so nothing of it is committed: `fetch` runs
`pip download --no-deps recbole==1.2.1` into a folder (the user cache by default), checks
the wheel's SHA-256, and only ml-100k.inter (user, item, rating, timestamp) and
ml-100k.item (year, genres) are read from the zip; RecBole is never installed.

Every user's ratings sorted by time are a timeline; every position t >= 1 is a request
(history: the items before t, target: item t). Users are split into train / val / test.
Item vectors: genres, release year and an embedding of the item co-occurrence in the
training users' timelines (SVD of the positive PMI); semantic IDs are residual k-means
codes of those vectors, one distinct tuple per item. Model inputs: a static token (the
history's genre mix, mean rating, length, mean item embedding) and the short- and
long-term history (item vector, the user's rating, a recency code, a padding flag; no
masks, so that training, evaluation and generation see the same tokens).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import subprocess
import sys
import zipfile

import numpy as np

from onerec_jax.cache import cache_dir
from onerec_jax.config import Config
from onerec_jax.errors import InputError
from onerec_jax.lab.data import TIME_DIMS, kmeans, recency_code

NAME = "movielens-100k"
WHEEL = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western", "unknown")
EMBED_DIMS = 32  # co-occurrence embedding per item
# Item vector: genres, year, co-occurrence embedding.
ITEM_DIMS = len(GENRES) + 1 + EMBED_DIMS
# History token: item vector, rating, recency code, padding flag.
TOKEN_DIMS = ITEM_DIMS + 1 + TIME_DIMS + 1
# Static token: the history's genre mix, mean rating, log length, mean co-occurrence embedding.
STATIC_DIMS = len(GENRES) + 2 + EMBED_DIMS


class MovieLensError(InputError):
  """The MovieLens wheel cannot be fetched or read; the message says why."""


@dataclasses.dataclass(frozen=True)
class MovieLensConfig:
  """Split and item-vector options; the data itself comes from the wheel."""

  seed: int = 0
  val_fraction: float = 0.05
  test_fraction: float = 0.25
  genre_weight: float = 0.5  # of the genres and year against the unit-norm embedding
  dataset: str = NAME

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def fetch(folder: pathlib.Path | None = None) -> pathlib.Path:
  """The RecBole 1.2.1 wheel in folder (default: the user cache), downloaded by pip when
  absent; refused when its SHA-256 differs."""
  folder = pathlib.Path(folder or cache_dir() / "recbole")
  wheel = folder / WHEEL
  if not wheel.exists():
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                           "recbole==1.2.1", "-d", str(folder)], capture_output=True,
                          text=True)
    if done.returncode or not wheel.exists():
      raise MovieLensError(f"pip download recbole==1.2.1 failed: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
  digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
  if digest != WHEEL_SHA256:
    raise MovieLensError(f"{wheel}: SHA-256 {digest}, expected {WHEEL_SHA256}")
  return wheel


def _table(wheel: pathlib.Path, suffix: str) -> list[list[str]]:
  """Rows of a RecBole atomic file (tab-separated, one header line) inside the wheel."""
  with zipfile.ZipFile(wheel) as z:
    text = z.read(MEMBER.format(suffix)).decode("latin-1")
  return [line.split("\t") for line in text.splitlines()[1:] if line]


def read_wheel(wheel: pathlib.Path) -> dict[str, np.ndarray]:
  """Ratings and item features, ids made dense (item i is row i of the item arrays):
  user, item [R] int32, rating [R] f32, time [R] int64 sorted by (user, time, item);
  year [I] f32 (NaN where unknown), genres [I, len(GENRES)] f32."""
  inter = np.array(_table(wheel, "inter"))
  items = _table(wheel, "item")
  raw_items = {row[0]: i for i, row in enumerate(items)}
  users, user = np.unique(inter[:, 0].astype(np.int64), return_inverse=True)
  item = np.array([raw_items[r] for r in inter[:, 1]], np.int32)
  rating = inter[:, 2].astype(np.float32)
  time = inter[:, 3].astype(np.float64).astype(np.int64)
  order = np.lexsort((item, time, user))
  genres = np.zeros((len(items), len(GENRES)), np.float32)
  year = np.full(len(items), np.nan, np.float32)
  for i, (_, _, y, classes) in enumerate(items):
    year[i] = float(y) if y.isdigit() else np.nan  # the file has "unkonwn" and "V"
    for g in classes.split():
      genres[i, GENRES.index(g)] = 1.0
  return {"user": user[order].astype(np.int32), "item": item[order],
          "rating": rating[order], "time": time[order], "year": year, "genres": genres,
          "n_users": np.int64(len(users))}


def cooccurrence_embedding(timelines: list[np.ndarray], n_items: int, dims: int
                           ) -> np.ndarray:
  """Unit-norm item vectors [I, dims] from the positive PMI of items rated by the same
  user (SVD, singular values split evenly); items no timeline holds get zeros."""
  x = np.zeros((len(timelines), n_items), np.float64)
  for u, t in enumerate(timelines):
    x[u, t] = 1.0
  counts = x.T @ x  # [I, I]
  single = np.diag(counts).copy()
  np.fill_diagonal(counts, 0.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    pmi = np.log(counts * len(timelines) / np.outer(single, single))
  ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
  u, s, _ = np.linalg.svd(ppmi)
  emb = u[:, :dims] * np.sqrt(s[:dims])
  norm = np.linalg.norm(emb, axis=1, keepdims=True)
  return np.where(norm > 0, emb / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def residual_kmeans_ids(vectors: np.ndarray, codebook_sizes: tuple[int, ...],
                        rng: np.random.Generator) -> np.ndarray:
  """RQ-KMeans codes [I, levels]: level j clusters the residuals left by levels < j; an
  item whose tuple another nearer item holds takes the nearest free code of the last
  level under its prefix, so that every item gets a distinct tuple."""
  residual = vectors.astype(np.float64)
  codes, last_dist = [], None
  for size in codebook_sizes:
    labels, dist = kmeans(residual, size, rng)
    codes.append(labels)
    centres = np.stack([residual[labels == j].mean(0) if np.any(labels == j)
                        else np.zeros(residual.shape[1]) for j in range(dist.shape[1])])
    residual = residual - centres[labels]
    last_dist = dist
  codes = np.stack(codes, 1).astype(np.int32)
  prefix = [tuple(c) for c in codes[:, :-1]]
  taken: dict[tuple, set] = {}
  for i in np.argsort(last_dist[np.arange(len(codes)), codes[:, -1]], kind="stable"):
    used = taken.setdefault(prefix[i], set())
    free = [c for c in np.argsort(last_dist[i], kind="stable") if c not in used]
    if not free:
      raise ValueError(f"semantic IDs: more than {codebook_sizes[-1]} items share the "
                       f"prefix {prefix[i]}")
    codes[i, -1] = free[0]
    used.add(int(free[0]))
  return codes


@dataclasses.dataclass(frozen=True)
class MovieLens:
  """Timelines and item features. Example = (user, t): history timeline[:t], target
  timeline[t], for 1 <= t < length."""

  config: MovieLensConfig
  model_config: Config
  item_vectors: np.ndarray  # [I, ITEM_DIMS] f32
  semantic_ids: np.ndarray  # [I, levels] int32
  items: np.ndarray  # [U, L] int32 timelines, -1 past the end
  ratings: np.ndarray  # [U, L] f32
  lengths: np.ndarray  # [U] int32
  splits: dict[str, np.ndarray]  # split name -> user ids
  # [U, L + 1, ITEM_DIMS + 1] f32: sums of the item vectors and ratings of timeline[:t]
  prefix_sums: np.ndarray

  @property
  def item_ids(self) -> np.ndarray:
    return np.arange(len(self.item_vectors), dtype=np.int32)

  def examples(self, split: str, every_cut: bool | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(users [n], positions [n]): every position of the split's users (the default) or
    the last one of each."""
    users = self.splits[split]
    if every_cut is False:
      return users, self.lengths[users] - 1
    counts = self.lengths[users] - 1
    pos = np.concatenate([np.arange(1, c + 1) for c in counts]).astype(np.int32)
    return np.repeat(users, counts).astype(np.int32), pos

  def targets(self, users: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return self.items[users, cuts]

  def history(self, users: np.ndarray, cuts: np.ndarray, n: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The n items before each cut, oldest first: (items [m, n], -1 before the timeline's
    start; ratings [m, n])."""
    pos = cuts[:, None] - n + np.arange(n)  # [m, n]
    real = pos >= 0
    idx = np.maximum(pos, 0)
    return (np.where(real, self.items[users[:, None], idx], -1),
            np.where(real, self.ratings[users[:, None], idx], 0.0))

  def features(self, users: np.ndarray, cuts: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs: static [m, 1, STATIC_DIMS], short_term and long_term [m, n, TOKEN_DIMS]
    (the most recent items; padding tokens all zero but their flag)."""
    lens = {p.name: p.max_len for p in self.model_config.pathways}
    n = lens["short_term"] + lens["long_term"]
    items, ratings = self.history(users, cuts, n)
    real = items >= 0
    vec = np.where(real[..., None], self.item_vectors[np.maximum(items, 0)], 0.0)
    age = np.broadcast_to(recency_code(np.arange(n, 0, -1)), items.shape + (TIME_DIMS,))
    tokens = np.concatenate([vec, np.where(real, (ratings - 3.0) / 2.0, 0.0)[..., None],
                             np.where(real[..., None], age, 0.0),
                             (~real).astype(np.float32)[..., None]], axis=-1)
    # The static token summarises the whole history, not only its last n items.
    count = cuts[:, None].astype(np.float32)  # cuts >= 1
    mean = self.prefix_sums[users, cuts] / count  # [m, ITEM_DIMS + 1]
    g = len(GENRES)
    static = np.concatenate([mean[:, :g], (mean[:, -1:] - 3) / 2, np.log1p(count) / 6,
                             mean[:, g + 1:ITEM_DIMS]], -1)
    return {"static": static[:, None].astype(np.float32),
            "long_term": tokens[:, :lens["long_term"]].astype(np.float32),
            "short_term": tokens[:, lens["long_term"]:].astype(np.float32)}


def check_model(model_config: Config) -> None:
  """The model's pathways must take these features."""
  want = {"static": STATIC_DIMS, "short_term": TOKEN_DIMS, "long_term": TOKEN_DIMS}
  got = {p.name: p.width for p in model_config.pathways}
  if got != want or next(p for p in model_config.pathways if p.name == "static").max_len != 1:
    raise InputError(f"MovieLens features need pathways of widths {want} (static of one "
                     f"token); the model has {got}")


def make_movielens(config: MovieLensConfig, model_config: Config,
                   wheel: pathlib.Path | None = None) -> MovieLens:
  """The dataset from the wheel (fetched when not given)."""
  check_model(model_config)
  raw = read_wheel(wheel or fetch())
  rng = np.random.default_rng(config.seed)
  n_users, n_items = int(raw["n_users"]), len(raw["year"])
  lengths = np.bincount(raw["user"], minlength=n_users).astype(np.int32)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  col = np.arange(len(raw["user"])) - starts[raw["user"]]
  items = np.full((n_users, lengths.max()), -1, np.int32)
  ratings = np.zeros((n_users, lengths.max()), np.float32)
  items[raw["user"], col], ratings[raw["user"], col] = raw["item"], raw["rating"]

  order = rng.permutation(n_users)
  n_test = int(round(config.test_fraction * n_users))
  n_val = int(round(config.val_fraction * n_users))
  splits = {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}

  emb = cooccurrence_embedding([items[u, :lengths[u]] for u in splits["train"]], n_items,
                               EMBED_DIMS)
  year = np.nan_to_num((raw["year"] - 1990.0) / 20.0, nan=0.0)[:, None]
  genres = raw["genres"] / np.sqrt(np.maximum(raw["genres"].sum(1, keepdims=True), 1))
  vectors = np.concatenate([config.genre_weight * genres, config.genre_weight * year, emb],
                           axis=1).astype(np.float32)
  sem = residual_kmeans_ids(vectors, model_config.codebook_sizes, rng)
  per_rating = np.concatenate([np.where((items >= 0)[..., None],
                                        vectors[np.maximum(items, 0)], 0.0),
                               ratings[..., None]], -1)
  prefix = np.concatenate([np.zeros_like(per_rating[:, :1]), np.cumsum(per_rating, 1)], 1)
  return MovieLens(config, model_config, vectors, sem, items, ratings, lengths, splits,
                   prefix.astype(np.float32))


def cooccurrence_ranking(dataset: MovieLens, users: np.ndarray, cuts: np.ndarray, k: int,
                         recent: int = 32, decay: float = 0.9, chunk: int = 512
                         ) -> np.ndarray:
  """The item co-occurrence baseline: each item scored by its cosine co-occurrence (in the
  training users' timelines) with the request's `recent` last items, weighted decay^age;
  items already in the history excluded. -> item ids [n, k], best first."""
  n_items = len(dataset.item_ids)
  x = np.zeros((len(dataset.splits["train"]), n_items), np.float32)
  for r, u in enumerate(dataset.splits["train"]):
    x[r, dataset.items[u, :dataset.lengths[u]]] = 1.0
  counts = x.T @ x
  norm = np.sqrt(np.maximum(np.diag(counts), 1.0))
  sim = counts / norm[:, None] / norm[None, :]
  np.fill_diagonal(sim, 0.0)
  sim = np.concatenate([sim, np.zeros((1, n_items), np.float32)])  # row -1: padding
  weights = decay ** np.arange(recent - 1, -1, -1, dtype=np.float32)  # oldest first
  out = []
  for lo in range(0, len(users), chunk):
    u, c = users[lo:lo + chunk], cuts[lo:lo + chunk]
    scores = np.einsum("mr,mri->mi", np.broadcast_to(weights, (len(u), recent)),
                       sim[dataset.history(u, c, recent)[0]])
    seen, _ = dataset.history(u, c, dataset.items.shape[1])
    rows = np.repeat(np.arange(len(u)), seen.shape[1])
    cols = seen.ravel()
    scores[rows[cols >= 0], cols[cols >= 0]] = -np.inf
    out.append(np.argsort(-scores, axis=1, kind="stable")[:, :k])
  return np.concatenate(out).astype(np.int32)


def describe(dataset: MovieLens) -> dict[str, int]:
  """Counts for logs and docs."""
  return {split: int(len(dataset.examples(split)[0])) for split in dataset.splits} | {
      "users": int(len(dataset.lengths)), "items": int(len(dataset.item_ids)),
      "ratings": int(dataset.lengths.sum()),
      "max_history": int(dataset.lengths.max())}
