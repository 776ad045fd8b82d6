"""generate(): input checks, batch-size buckets and padding around the jitted beam search.

Every input error is raised on the host before anything runs on the device. Shapes are
static: each pathway is padded to its max_len (masked out) and the batch to the smallest
bucket that holds it (larger batches run as chunks of the largest bucket), so a warmed-up
bucket never recompiles; padding rows are dropped from the results. Over a device mesh
(sharding) the buckets are multiples of its devices and the requests are split over them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from onerec_jax.config import Config
from onerec_jax.generate import compile_cache, sharding
from onerec_jax.generate.beam import Result, compiled_search, search_program
from onerec_jax.generate.items import GenerateInputError, ItemTable

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def check_inputs(config: Config, features: Mapping[str, Any],
                 mask: Mapping[str, Any] | None, beam_width: int,
                 valid_items: ItemTable | None) -> int:
  """Validates a request batch (shapes only, plus the masks' values); returns B."""
  def fail(msg):
    raise GenerateInputError(msg)

  if not isinstance(beam_width, int) or beam_width < 1:
    fail(f"beam_width must be a positive integer, got {beam_width!r}")
  if valid_items is not None:
    if not isinstance(valid_items, ItemTable):
      fail("valid_items must be an ItemTable from build_item_table, got "
           f"{type(valid_items).__name__}")
    if valid_items.codebook_sizes != config.codebook_sizes:
      fail(f"valid_items was built for codebooks {valid_items.codebook_sizes}, the model has "
           f"{config.codebook_sizes}")
    candidates, what = valid_items.num_items, "valid items"
  else:
    candidates, what = math.prod(config.codebook_sizes), "semantic-ID tuples"
  if beam_width > candidates:
    fail(f"beam_width={beam_width} exceeds the {candidates} {what} to choose from")
  if not isinstance(features, Mapping):
    fail(f"features must map pathway name -> [B, n, width], got {type(features).__name__}")
  names = [p.name for p in config.pathways]
  missing, unknown = sorted(set(names) - set(features)), sorted(set(features) - set(names))
  if missing or unknown:
    fail(f"features: missing pathways {missing}, unknown {unknown}; expected {names}")
  mask = mask or {}
  if not isinstance(mask, Mapping) or set(mask) - set(names):
    fail(f"mask must map pathway names {names} -> [B, n] bool")
  batches = set()
  for p in config.pathways:
    shape = tuple(np.shape(features[p.name]))
    if p.width == 0:  # token ids
      ids = np.asarray(features[p.name])
      if len(shape) != 2 or not np.issubdtype(ids.dtype, np.integer):
        fail(f"features[{p.name!r}] has shape {shape} and dtype {ids.dtype}, expected "
             f"[B, n] integer token ids")
      bad = (ids < 0) | (ids >= config.vocab_size)
      if p.name in mask and tuple(np.shape(mask[p.name])) == shape:
        bad &= np.asarray(mask[p.name], bool)  # padding ids are never read
      if bad.any():
        row, col = np.argwhere(bad)[0]
        fail(f"features[{p.name!r}][{row}, {col}] = {ids[row, col]}: token ids must lie "
             f"in [0, {config.vocab_size})")
    elif len(shape) != 3 or shape[2] != p.width:
      fail(f"features[{p.name!r}] has shape {shape}, expected [B, n, {p.width}]")
    if shape[1] > p.max_len:
      fail(f"features[{p.name!r}] has {shape[1]} tokens, more than the pathway's max_len "
           f"{p.max_len}")
    if p.name in mask and tuple(np.shape(mask[p.name])) != shape[:2]:
      fail(f"mask[{p.name!r}] has shape {tuple(np.shape(mask[p.name]))}, expected "
           f"{shape[:2]}")
    batches.add(shape[0])
  if len(batches) > 1:
    fail(f"pathways disagree on the batch size: {sorted(batches)}")
  batch = batches.pop()
  if batch == 0:
    fail("empty batch: no requests")
  tokens = sum(np.asarray(mask[p.name], bool).sum(axis=1) if p.name in mask
               else np.shape(features[p.name])[1] for p in config.pathways)
  empty = np.flatnonzero(np.broadcast_to(tokens, (batch,)) == 0)
  if empty.size:
    fail(f"requests {empty[:10].tolist()} have no context tokens")
  return batch


def chunks(batch: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
  """(start, stop, bucket) per chunk: full chunks of the largest bucket, then the smallest
  bucket that holds the rest."""
  top = max(buckets)
  out = [(lo, lo + top, top) for lo in range(0, batch - batch % top, top)]
  if batch % top:
    lo = batch - batch % top
    out.append((lo, batch, min(b for b in buckets if b >= batch - lo)))
  return out


def pad_batch(config: Config, features: Mapping[str, Any], mask: Mapping[str, Any] | None,
              start: int, stop: int, bucket: int):
  """Rows [start, stop) padded to `bucket` rows and every pathway to max_len tokens:
  float32 features (int32 token ids where the width is 0) and bool masks (False on
  padding) as host arrays."""
  feats, masks = {}, {}
  for p in config.pathways:
    x = np.asarray(features[p.name])[start:stop]  # host first: no device slicing ops
    m = (np.ones(x.shape[:2], bool) if mask is None or p.name not in mask
         else np.asarray(mask[p.name])[start:stop])
    rows, n = x.shape[:2]
    feats[p.name] = (np.zeros((bucket, p.max_len), np.int32) if p.width == 0 else
                     np.zeros((bucket, p.max_len, p.width), np.float32))
    feats[p.name][:rows, :n] = x
    masks[p.name] = np.zeros((bucket, p.max_len), bool)
    masks[p.name][:rows, :n] = m
    masks[p.name][rows:, 0] = True  # padding rows attend to one (zero) token
  return feats, masks


def generate(params: Any, config: Config, features: Mapping[str, Any], *, beam_width: int,
             mask: Mapping[str, Any] | None = None, valid_items: ItemTable | None = None,
             rules=None, batch_buckets: Sequence[int] = DEFAULT_BUCKETS,
             mesh: Mesh | None = None) -> Result:
  """Top beam_width semantic-ID tuples per request by beam search.

  features: pathway name -> [B, n, width] (n <= the pathway's max_len), or token ids
  [B, n] for a pathway of width 0 (a Qwen3 prompt, its padding anywhere); mask: optional
  pathway name -> [B, n] bool (True = real token). valid_items: an ItemTable to decode
  only real items (and return their ids). rules: FP8 quantization rules (onerec_jax.quant)
  or None. mesh: the devices the requests are split over (sharding.make_mesh; an EXPERT
  axis longer than 1 also splits the MoE layers' experts); None: every device when there
  are several (sharding.default_mesh), else one. Over a mesh, buckets are rounded up to
  multiples of its devices; pass params placed there (sharding.place_params) to save
  their transfer on every call. Raises GenerateInputError on bad input before any device
  work.
  """
  batch = check_inputs(config, features, mask, beam_width, valid_items)
  mesh = sharding.resolve(mesh, config)
  if mesh is not None:
    params = sharding.place_params(params, mesh)
  outs = []
  for start, stop, bucket in chunks(batch, sharding.round_buckets(batch_buckets, mesh)):
    f, m = pad_batch(config, features, mask, start, stop, bucket)  # dispatch all, then fetch
    run, _ = compiled_search(params, f, m, valid_items, config=config,
                             beam_width=beam_width, rules=rules, mesh=mesh)
    outs.append((stop - start, run(params, f, m, valid_items)))
  cat = lambda i: np.concatenate([np.asarray(o[i])[:rows] for rows, o in outs])
  return Result(cat(0), cat(1), None if valid_items is None else cat(2))


def warmup(params: Any, config: Config, *, beam_width: int,
           valid_items: ItemTable | None = None, rules=None,
           batch_buckets: Sequence[int] = DEFAULT_BUCKETS, mesh: Mesh | None = None,
           progress: Callable[[int, float, str], None] | None = None) -> dict[int, float]:
  """Compiles the beam search for every bucket ahead of traffic and runs it once (the
  first call also sets up the fast dispatch path); returns the compile seconds per bucket
  (rounded as generate rounds them for the mesh, which is generate's), and calls
  progress(bucket, seconds, how) after each (how: compile_cache.program's).
  Later generate calls in these buckets do not compile; with the persistent compilation
  cache on, a restarted process's warmup neither traces nor compiles them."""
  mesh = sharding.resolve(mesh, config)
  if mesh is not None:
    params = sharding.place_params(params, mesh)
  seconds = {}
  for bucket in sharding.round_buckets(batch_buckets, mesh):
    f, m = _empty_batch(config, bucket)
    t0 = time.perf_counter()
    run, how = compiled_search(params, f, m, valid_items, config=config,
                               beam_width=beam_width, rules=rules, mesh=mesh)
    seconds[bucket] = time.perf_counter() - t0
    jax.block_until_ready(run(params, f, m, valid_items))
    if progress:
      progress(bucket, seconds[bucket], how)
  return seconds


def preload(params: Any, config: Config, *, beam_width: int,
            valid_items: ItemTable | None = None, rules=None,
            batch_buckets: Sequence[int] = DEFAULT_BUCKETS, mesh: Mesh | None = None
            ) -> compile_cache.Preload | None:
  """Starts compiling, in the background, the GPU kernels of the searches that warmup
  would read from the persistent compilation cache for these arguments (a restarted
  process compiles those kernels again at their first use: compile_cache.preload); params
  may be the weights' jax.ShapeDtypeStructs (checkpoint.abstract_params), so the weights
  can load meanwhile. None when no such search is stored."""
  mesh = sharding.resolve(mesh, config)
  return compile_cache.preload([
      search_program(params, *_empty_batch(config, bucket), valid_items, config=config,
                     beam_width=beam_width, rules=rules, mesh=mesh)
      for bucket in sharding.round_buckets(batch_buckets, mesh)])


def _empty_batch(config: Config, bucket: int):
  """(features, masks) of a batch of padding rows: the shapes a bucket compiles for."""
  empty = {p.name: np.zeros((0, 1) if p.width == 0 else (0, 1, p.width), np.float32)
           for p in config.pathways}
  return pad_batch(config, empty, None, 0, 0, bucket)
