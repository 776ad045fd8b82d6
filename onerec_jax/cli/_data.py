"""The dataset options beside a trained model (data.json, written by the training
scripts), for the commands that rebuild its test split (eval, stats --test-requests)."""

import json
import pathlib

from onerec_jax import checkpoint
from onerec_jax.errors import InputError
from onerec_jax.lab import datasets

DATA_NAME = "data.json"


def data_options(model: pathlib.Path | None, data: pathlib.Path | None) -> datasets.Options:
  """The options in `data`, else in MODEL/data.json (default: the shipped demo's)."""
  path = data or pathlib.Path(model or checkpoint.DEMO_SOURCE) / DATA_NAME
  if not path.exists():
    raise InputError(f"{path}: data options not found (the test split is rebuilt from the "
                     f"data.json written by scripts/train_demo.py or "
                     f"scripts/train_movielens.py; --data names another)")
  try:
    return datasets.options_from_dict(json.loads(path.read_text()))
  except (ValueError, TypeError) as e:
    raise InputError(f"{path}: not data options ({e})") from None
