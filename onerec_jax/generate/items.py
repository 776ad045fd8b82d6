"""The valid-item table for constrained decoding, compiled into a trie in CSR form.

Items are tuples of semantic IDs (s_1 .. s_L). The nodes of level j are the distinct
length-j prefixes in sorted order (level 0 is the root alone; level L nodes are the items).
Node p of level j owns the contiguous run of level-(j+1) nodes
[offsets[j][p], offsets[j][p + 1]), whose last codes are codes[j][...]. A beam carries the
index of its node, so a decoding step needs no search: it gathers at most max_children[j]
children per beam. Memory: 4 bytes per node and per offset, about 16 bytes per item for
codebook-8192 triples (docs/generate.md).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from onerec_jax.errors import InputError


class GenerateInputError(InputError):
  """Input that generate refuses before anything runs on the device; says what and why."""


@flax.struct.dataclass
class ItemTable:
  """Device-side valid-item trie; build it with build_item_table."""

  offsets: tuple[jax.Array, ...]  # level j: [P_j + 1] int32 (P_0 = 1, the root)
  codes: tuple[jax.Array, ...]  # level j: [P_{j+1}] int32, last code of each child node
  item_ids: jax.Array  # [P_L] int32, the item of each leaf
  max_children: tuple[int, ...] = flax.struct.field(pytree_node=False)  # per level
  codebook_sizes: tuple[int, ...] = flax.struct.field(pytree_node=False)

  @property
  def num_items(self) -> int:
    return int(self.item_ids.shape[0])

  @property
  def nbytes(self) -> int:
    return sum(int(a.nbytes) for a in jax.tree.leaves(self))


def build_item_table(item_ids, semantic_ids, codebook_sizes) -> ItemTable:
  """Compiles item_ids [N] <-> semantic_ids [N, L] into an ItemTable.

  Refuses (GenerateInputError) codes outside their codebook, negative or non-int32 item
  ids, and repeated triples or item ids: the table must be a one-to-one map.
  """
  item_ids = np.asarray(item_ids)
  sem = np.asarray(semantic_ids)
  sizes = tuple(int(c) for c in codebook_sizes)
  levels = len(sizes)
  if sem.ndim != 2 or sem.shape[1] != levels:
    raise GenerateInputError(
        f"valid items: semantic_ids has shape {sem.shape}, expected [N, {levels}]")
  if item_ids.shape != sem.shape[:1]:
    raise GenerateInputError(f"valid items: item_ids has shape {item_ids.shape}, expected "
                             f"[{sem.shape[0]}] (one id per semantic-ID row)")
  if sem.shape[0] == 0:
    raise GenerateInputError("valid items: the table is empty")
  for name, a in (("semantic_ids", sem), ("item_ids", item_ids)):
    if not np.issubdtype(a.dtype, np.integer):
      raise GenerateInputError(f"valid items: {name} must be integers, got {a.dtype}")
  for j, size in enumerate(sizes):
    bad = np.flatnonzero((sem[:, j] < 0) | (sem[:, j] >= size))
    if bad.size:
      raise GenerateInputError(
          f"valid items: {bad.size} rows have level-{j} codes outside [0, {size}), e.g. row "
          f"{bad[0]}: {sem[bad[0]].tolist()}")
  bad = np.flatnonzero((item_ids < 0) | (item_ids > np.iinfo(np.int32).max))
  if bad.size:
    raise GenerateInputError(f"valid items: {bad.size} item ids outside [0, 2^31), e.g. "
                             f"row {bad[0]}: {item_ids[bad[0]]} (-1 marks empty beams)")
  sorted_ids = np.sort(item_ids)
  repeated = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
  if repeated.size:
    rows = np.flatnonzero(item_ids == repeated[0])
    raise GenerateInputError(f"valid items: item id {repeated[0]} is repeated (rows "
                             f"{rows[:5].tolist()}); {np.unique(repeated).size} ids repeat in all")
  radix = [math.prod(sizes[j + 1:]) for j in range(levels)]  # mixed-radix key, s_1 first
  if math.prod(sizes) >= 2**63:
    raise GenerateInputError(f"valid items: codebooks {sizes} do not fit a 64-bit key")
  key = sum(sem[:, j].astype(np.int64) * radix[j] for j in range(levels))
  order = np.argsort(key)  # one integer sort: several times faster than np.lexsort
  key, item_ids = key[order], item_ids[order]
  same = np.flatnonzero(key[1:] == key[:-1])
  if same.size:
    i = int(same[0]) + 1
    raise GenerateInputError(
        f"valid items: semantic IDs {[int(c) for c in np.unravel_index(key[i], sizes)]} belong to items "
        f"{item_ids[i - 1]} and {item_ids[i]}; each item needs its own")
  starts = [np.zeros(1, np.int64)]  # first sorted row of each node, level by level
  offsets, codes, max_children = [], [], []
  for j in range(levels):
    prefix = key // radix[j]
    starts.append(np.flatnonzero(np.append(True, prefix[1:] != prefix[:-1])))
    off = np.append(np.searchsorted(starts[j + 1], starts[j]), starts[j + 1].size)
    offsets.append(jnp.asarray(off, jnp.int32))
    codes.append(jnp.asarray(prefix[starts[j + 1]] % sizes[j], jnp.int32))
    max_children.append(int(np.diff(off).max()))
  return ItemTable(offsets=tuple(offsets), codes=tuple(codes),
                   item_ids=jnp.asarray(item_ids, jnp.int32),
                   max_children=tuple(max_children), codebook_sizes=sizes)
