"""The two datasets behind one options file: data.json beside a trained model names the
synthetic generator's DataConfig (no "dataset" key) or MovieLens-100k's options
("dataset": "movielens-100k"); `make` rebuilds the dataset from it."""

from __future__ import annotations

from typing import Any

import numpy as np

from onerec_jax.config import Config
from onerec_jax.lab import data, movielens

Options = data.DataConfig | movielens.MovieLensConfig
Dataset = data.Dataset | movielens.MovieLens


def options_from_dict(d: dict[str, Any]) -> Options:
  """The options a data.json holds (TypeError or ValueError for anything else)."""
  if not isinstance(d, dict):
    raise TypeError(f"data options must be a JSON object, got {type(d).__name__}")
  if "dataset" not in d:
    return data.DataConfig(**d)
  if d["dataset"] == movielens.NAME:
    return movielens.MovieLensConfig(**d)
  raise ValueError(f"unknown dataset {d['dataset']!r}; known: {movielens.NAME!r}, or the "
                   f"synthetic generator's options without a dataset key")


def make(options: Options, model_config: Config) -> Dataset:
  if isinstance(options, movielens.MovieLensConfig):
    return movielens.make_movielens(options, model_config)
  return data.make_dataset(options, model_config)


def extra_baselines(dataset: Dataset, users: np.ndarray, cuts: np.ndarray, k: int
                    ) -> dict[str, np.ndarray]:
  """Baselines beside popularity, by name -> item ids [n, k]: the item co-occurrence
  baseline on MovieLens (the synthetic data has none)."""
  if isinstance(dataset, movielens.MovieLens):
    return {"co-occurrence": movielens.cooccurrence_ranking(dataset, users, cuts, k)}
  return {}


def seen_items(dataset: Dataset, users: np.ndarray, cuts: np.ndarray) -> np.ndarray | None:
  """Items each request's history holds, [n, L] (-1 padding), where a user never takes an
  item twice (MovieLens: one rating per user and movie), so that rankings leave them out;
  None where history items can be the next one (the synthetic walk revisits items)."""
  if isinstance(dataset, movielens.MovieLens):
    return dataset.history(users, cuts, dataset.items.shape[1])[0]
  return None
