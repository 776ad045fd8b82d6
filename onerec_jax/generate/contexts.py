"""Request-context files and synthetic contexts.

File format (.npz, written by save_contexts): one array per pathway, named after it,
float [B, n, width] with n <= the pathway's max_len (int token ids [B, n] for a pathway of
width 0, a Qwen3 prompt); optionally `<pathway>_mask` [B, n]
bool (True = real token; absent = all real) and `request_ids` [B] int (default 0..B-1).
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any

import numpy as np

from onerec_jax.config import Config
from onerec_jax.generate.items import GenerateInputError

MASK_SUFFIX = "_mask"


def _read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
  """Every array of an .npz file; a missing, unreadable or pickled file is refused with
  its name (allow_pickle stays off: no object arrays are ever unpickled)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      if not hasattr(data, "files"):
        raise GenerateInputError(f"{path}: {what} must be an .npz archive, not one array")
      return {k: data[k] for k in data.files}
  except FileNotFoundError:
    raise GenerateInputError(f"{path}: {what} not found") from None
  except GenerateInputError:
    raise
  except (OSError, ValueError, EOFError) as e:  # truncated, not a zip, object arrays
    raise GenerateInputError(f"{path}: cannot read {what} ({e})") from None


def load_contexts(path: str | os.PathLike, config: Config):
  """(features, mask or None, request_ids) from an .npz context file."""
  arrays = _read_npz(path, "context file")
  names = [p.name for p in config.pathways]
  known = set(names) | {n + MASK_SUFFIX for n in names} | {"request_ids"}
  unknown = sorted(set(arrays) - known)
  if unknown:
    raise GenerateInputError(f"{path}: unknown arrays {unknown}; expected pathways {names}, "
                             f"optional '<pathway>{MASK_SUFFIX}' and 'request_ids'")
  features = {n: arrays[n] for n in names if n in arrays}
  mask = {n: arrays[n + MASK_SUFFIX] for n in names if n + MASK_SUFFIX in arrays} or None
  batch = len(next(iter(features.values()))) if features else 0
  request_ids = arrays.get("request_ids", np.arange(batch))
  if np.shape(request_ids) != (batch,):
    raise GenerateInputError(f"{path}: request_ids has shape {np.shape(request_ids)}, "
                             f"expected [{batch}] (one per request)")
  return features, mask, request_ids


def load_valid_items(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(item_ids [N], semantic_ids [N, levels]) from a valid-item .npz file."""
  arrays = _read_npz(path, "valid-item file")
  missing = sorted({"item_ids", "semantic_ids"} - set(arrays))
  if missing:
    raise GenerateInputError(f"{path}: valid-item file lacks {missing}; it needs item_ids "
                             f"[N] and semantic_ids [N, levels]")
  return arrays["item_ids"], arrays["semantic_ids"]


def save_contexts(path: str | os.PathLike, features: dict[str, Any],
                  mask: dict[str, Any] | None = None, request_ids=None) -> None:
  """Writes contexts in the format load_contexts reads."""
  arrays = {n: np.asarray(x) for n, x in features.items()}
  arrays.update({n + MASK_SUFFIX: np.asarray(m, bool) for n, m in (mask or {}).items()})
  if request_ids is not None:
    arrays["request_ids"] = np.asarray(request_ids)
  np.savez(path, **arrays)


def random_contexts(config: Config, batch: int, seed: int = 0, start: int = 0
                    ) -> dict[str, np.ndarray]:
  """Full-length random inputs for requests start .. start + batch - 1 of every pathway:
  standard-normal features [batch, max_len, width], or token ids [batch, max_len] uniform
  over the vocabulary where the width is 0. Request i is drawn from its own stream (the
  seed's i-th spawned one), so a slice of requests can be drawn on its own and equals
  those rows of a larger draw."""
  out = {p.name: np.empty((batch, p.max_len) + ((p.width,) if p.width else ()),
                          np.int32 if p.width == 0 else np.float32) for p in config.pathways}

  def draw(row: int) -> None:  # one request's pathways, in config order
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(start + row,)))
    for p in config.pathways:
      if p.width == 0:
        out[p.name][row] = rng.integers(0, config.vocab_size, p.max_len, dtype=np.int32)
      else:
        rng.standard_normal(dtype=np.float32, out=out[p.name][row])

  # numpy draws without the interpreter lock: the requests fill in parallel (a batch of
  # moe-4b's is 92 MB of features).
  with concurrent.futures.ThreadPoolExecutor(max(1, min(batch, os.cpu_count() or 1))) as pool:
    list(pool.map(draw, range(batch)))
  return out


def random_items(config: Config, count: int, seed: int = 0):
  """(item_ids [count], semantic_ids [count, levels]): distinct uniform random tuples."""
  rng = np.random.default_rng(seed)
  total = int(np.prod(config.codebook_sizes, dtype=np.float64))
  if count > total:
    raise GenerateInputError(f"{count} random items exceed the {total} semantic-ID tuples")
  keys = np.empty(0, np.int64)
  while keys.size < count:  # draws collide rarely unless the codebook space is nearly full
    keys = np.sort(np.append(keys, rng.integers(0, total, size=count + 16, dtype=np.int64)))
    keys = keys[np.append(True, keys[1:] != keys[:-1])]  # sort-based unique: fast
  keys = rng.permutation(keys)[:count]
  sem = np.stack(np.unravel_index(keys, config.codebook_sizes), axis=1).astype(np.int32)
  return np.arange(count, dtype=np.int32), sem
