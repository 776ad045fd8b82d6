"""Exact top-k by bounded filtering and radix select over order-preserving integer keys.

The algorithm, shared by the plain-JAX backend here (it runs anywhere and is what CPU tests
exercise) and the Triton backend (triton_gpu.py), which supplies the same primitives as
GPU kernels:

1. Keys: each float maps to an unsigned integer whose order is jax.lax.top_k's total order
   (see reference.py). Ties are broken by the composite key (key, rank) with
   rank = N - index in [1, N], so all composite keys of a row are distinct.
2. Bound (one read): the row is cut into P chunks of `chunk` elements and each chunk's
   largest key is kept. The k-th largest of those P maxima is a lower bound L on the row's
   k-th largest key, since k distinct elements reach it.
3. Filter: elements with composite key >= threshold (L, 0) are compacted into `buffer`
   slots per row; a row's count is exact even when it exceeds the buffer. Only chunks whose
   maximum key reaches the threshold key can hold such elements (about k of the P chunks
   for the bound L), so the filter reads only those: skipping the others never changes its
   output, for this threshold or any later one.
4. Radix refinement, only when some row has more than `capacity` candidates (a loose
   bound: top values packed into few chunks, heavy ties, all-equal rows): radix select
   over the composite key, `digit_bits` per round from the top, counting keys >= each of
   the 2**digit_bits pivots, until at most `capacity` keys reach the threshold; then
   filter again. It runs over the buffer when every row's candidates fit there, else over
   the whole rows. After all bits the threshold is the exact k-th composite key, which
   exactly k keys reach, so it ends.
5. Final small sort of the <= capacity candidates by (key desc, index asc); the first k
   are the answer.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

_MAX_CHUNKS = 8192  # largest bound sort (step 2)
DIRECT_SORT = 8192  # rows up to this length skip the bound and sort whole
_BUFFER = 32768  # default candidate buffer per row


@dataclasses.dataclass(frozen=True)
class Config:
  """Tunables; `Config.default(n, k)` is the heuristic. capacity and buffer are powers of
  two, k <= capacity <= buffer."""

  chunk: int  # elements per chunk whose maximum feeds the bound
  capacity: int  # candidate slots per row for the final sort
  buffer: int = 0  # candidate slots per row of the first filter; 0 means capacity
  block: int = 2048  # elements per program in the GPU kernels that read every element
  digit_bits: int = 4  # radix digit of the refinement rounds
  span: int = 16384  # elements per program of the GPU filter that skips chunks (step 3)

  def __post_init__(self):
    if self.buffer == 0:
      object.__setattr__(self, "buffer", self.capacity)

  @classmethod
  def default(cls, n: int, k: int) -> "Config":
    if n <= DIRECT_SORT:
      return cls(chunk=16, capacity=_pow2(max(n, k)))
    capacity = max(_pow2(k), min(8192, max(2048, 8 * _pow2(k))))  # k fits, any k
    return cls(chunk=max(16, _pow2(-(-n // _MAX_CHUNKS))), capacity=capacity,
               buffer=max(capacity, min(_BUFFER, _pow2(n))))


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def key_bits(dtype) -> int:
  """Bits of the order-preserving key of a float dtype (16 or 32)."""
  return 8 * jnp.dtype(dtype).itemsize


def to_keys(x: jax.Array) -> jax.Array:
  """Order-preserving uint32 keys of float x: flip all bits of negatives, the sign of
  positives (16-bit floats use the low 16 bits)."""
  bits = key_bits(x.dtype)
  u = jax.lax.bitcast_convert_type(x, jnp.uint32 if bits == 32 else jnp.uint16)
  u = u.astype(jnp.uint32)
  top = jnp.uint32(1 << (bits - 1))
  return u ^ jnp.where(u >= top, jnp.uint32((1 << bits) - 1), top)


def from_keys(keys: jax.Array, dtype) -> jax.Array:
  """Inverse of to_keys."""
  bits = key_bits(dtype)
  top = jnp.uint32(1 << (bits - 1))
  u = keys ^ jnp.where(keys >= top, top, jnp.uint32((1 << bits) - 1))
  if bits == 16:
    u = u.astype(jnp.uint16)
  return jax.lax.bitcast_convert_type(u, dtype)


# Candidates: (keys [R, C] uint32, indices [R, C] int32, count [R] int32); slots past
# min(count, C) are unspecified.
Candidates = tuple[jax.Array, jax.Array, jax.Array]


def select(n: int, k: int, cfg: Config, ops: Any, maxima: jax.Array,
           filter_fn: Callable[[jax.Array, jax.Array], Candidates],
           materialize: Callable[[], jax.Array], bits: int,
           chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """Steps 2-5 for rows of length n with `bits`-bit keys, given the chunk maxima [R, P]
  (P may be 0).

  filter_fn(th_key [R], th_rank [R]) compacts the rows' composite keys >= the threshold
  into cfg.buffer slots; materialize() gives the rows [R, n] as floats for a refinement
  over whole rows; chunk > 0 says that maxima are those rows' chunk maxima (chunks of
  `chunk`), so that the refinement's filter skips chunks too. ops supplies the backend's
  primitives (see JaxOps). Returns (keys [R, k] uint32, indices [R, k] int32).
  """
  cap = cfg.capacity
  if not k <= cap <= cfg.buffer or cap & (cap - 1) or cfg.buffer & (cfg.buffer - 1):
    raise ValueError(f"{cfg}: needs powers of two k={k} <= capacity <= buffer")
  if maxima.shape[1] < k or n <= cap:  # no bound, or every element fits
    th = jnp.zeros(maxima.shape[:1], jnp.uint32)
  else:
    th = ops.kth_largest(maxima, k)  # [R]
  keys, idx, count = filter_fn(th, jnp.zeros_like(th))  # [R, buffer]
  rows = th.shape[0]

  def fits(_):
    return keys[:, :cap], idx[:, :cap], count

  def refine_buffer(_):
    counts = lambda pk, pr: ops.buffer_counts(keys, idx, count, n, pk, pr)
    th_key, th_rank = radix_threshold(counts, rows, bits, n, k, cfg)
    return ops.buffer_filter(keys, idx, count, n, th_key, th_rank, cap)

  def refine_rows(_):
    x = materialize()  # [R, n]
    counts = lambda pk, pr: ops.counts(x, pk, pr)
    th_key, th_rank = radix_threshold(counts, rows, bits, n, k, cfg)
    return ops.filter(x, th_key, th_rank, cap, *((maxima, chunk) if chunk else ()))

  most = jnp.max(count)
  branch = (most > cap).astype(jnp.int32) + (most > cfg.buffer).astype(jnp.int32)
  cand = jax.lax.switch(branch, (fits, refine_buffer, refine_rows), None)
  return ops.sort_select(*cand, n, k)


def radix_threshold(counts_fn: Callable[[jax.Array, jax.Array], jax.Array], rows: int,
                    bits: int, n: int, k: int, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """Step 4: a composite threshold (key [R], rank [R]) that at least k and at most
  cfg.capacity composite keys of each row reach; counts_fn(pivot keys [R, D], pivot ranks
  [R, D]) counts the keys >= each pivot."""
  b = cfg.digit_bits
  # (half, shift) of each digit, most significant first: key bits, then rank bits.
  digits = ([(0, s) for s in range(bits - b, -1, -b)]
            + [(1, s) for s in range(b * math.ceil(n.bit_length() / b) - b, -1, -b)])
  halves = jnp.array([h for h, _ in digits], jnp.int32)
  shifts = jnp.array([s for _, s in digits], jnp.uint32)
  steps = jnp.arange(1 << b, dtype=jnp.uint32)  # [D]

  def cond(state):
    i, _, _, done = state
    return (i < len(digits)) & ~jnp.all(done)

  def body(state):
    i, th_key, th_rank, done = state
    step = steps << shifts[i]  # [D]
    in_key = halves[i] == 0
    piv_key = jnp.where(in_key, th_key[:, None] | step, th_key[:, None])  # [R, D]
    piv_rank = jnp.where(in_key, th_rank[:, None], th_rank[:, None] | step)
    counts = counts_fn(piv_key, piv_rank)  # [R, D], non-increasing along D
    j = jnp.sum(counts >= k, axis=1, keepdims=True) - 1  # [R, 1]; counts[:, 0] >= k
    pick = lambda a: jnp.take_along_axis(a, j, axis=1)[:, 0]
    keep = lambda old, new: jnp.where(done, old, new)
    return (i + 1, keep(th_key, pick(piv_key)), keep(th_rank, pick(piv_rank)),
            done | (pick(counts) <= cfg.capacity))

  zero = jnp.zeros((rows,), jnp.uint32)
  _, th_key, th_rank, _ = jax.lax.while_loop(
      cond, body, (0, zero, zero, jnp.zeros((rows,), bool)))
  return th_key, th_rank


def _reaches(keys, ranks, th_key, th_rank):
  """Composite (key, rank) >= (th_key, th_rank), thresholds broadcast against keys."""
  return (keys > th_key) | ((keys == th_key) & (ranks >= th_rank))


def _compact(keys, idx, valid, n, th_key, th_rank, capacity) -> Candidates:
  """Keys [R, M] (and their indices) of valid slots reaching the thresholds [R], packed
  into capacity slots in order."""
  r = keys.shape[0]
  ranks = (n - idx).astype(jnp.uint32)
  sel = valid & _reaches(keys, ranks, th_key[:, None], th_rank[:, None])  # [R, M]
  pos = jnp.cumsum(sel, axis=1, dtype=jnp.int32) - 1
  dest = jnp.where(sel & (pos < capacity), pos, capacity)  # capacity: dropped
  rows = jnp.arange(r)[:, None]
  put = lambda v: jnp.zeros((r, capacity), v.dtype).at[rows, dest].set(v, mode="drop")
  return put(keys), put(idx), pos[:, -1] + 1


def _count(keys, idx, valid, n, piv_key, piv_rank) -> jax.Array:
  """Number of valid composite keys [R, M] >= each pivot [R, D]."""
  ranks = (n - idx).astype(jnp.uint32)[:, :, None]
  sel = valid[:, :, None] & _reaches(keys[:, :, None], ranks, piv_key[:, None, :],
                                     piv_rank[:, None, :])  # [R, M, D]
  return jnp.sum(sel, axis=1, dtype=jnp.int32)


def _row_slots(x: jax.Array):
  """(keys, indices, valid) of whole rows x [R, N]."""
  idx = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape)
  return to_keys(x), idx, jnp.ones(x.shape, bool)


def _buffer_slots(keys, idx, count):
  """(keys, indices, valid) of a candidate buffer [R, M] holding count [R] entries."""
  return keys, idx, jnp.arange(keys.shape[1]) < count[:, None]


class JaxOps:
  """The algorithm's primitives in plain jax.numpy (runs on any backend)."""

  @staticmethod
  def chunk_max(x: jax.Array, chunk: int) -> jax.Array:
    """Largest key of each chunk: x [R, N] -> [R, ceil(N / chunk)]."""
    r, n = x.shape
    p = -(-n // chunk)
    keys = jnp.pad(to_keys(x), ((0, 0), (0, p * chunk - n)))
    return jnp.max(keys.reshape(r, p, chunk), axis=2)

  @staticmethod
  def kth_largest(maxima: jax.Array, k: int) -> jax.Array:
    """k-th largest entry of each row of maxima [R, P]."""
    return jnp.sort(maxima, axis=1)[:, maxima.shape[1] - k]

  @staticmethod
  def filter(x, th_key, th_rank, capacity, maxima=None, chunk=0) -> Candidates:
    """Compacts the composite keys of rows x [R, N] >= (th_key, th_rank) [R]; given x's
    chunk maxima [R, P] (chunks of `chunk`), only chunks whose maximum reaches th_key take
    part, as on the GPU (the same output)."""
    keys, idx, valid = _row_slots(x)
    if maxima is not None:
      valid = maxima[:, idx[0] // chunk] >= th_key[:, None]  # [R, N]
    return _compact(keys, idx, valid, x.shape[1], th_key, th_rank, capacity)

  @staticmethod
  def buffer_filter(keys, idx, count, n, th_key, th_rank, capacity) -> Candidates:
    """filter over a candidate buffer of rows of length n."""
    return _compact(*_buffer_slots(keys, idx, count), n, th_key, th_rank, capacity)

  @staticmethod
  def counts(x, piv_key, piv_rank) -> jax.Array:
    """Number of composite keys of each row of x [R, N] >= each pivot [R, D]."""
    return _count(*_row_slots(x), x.shape[1], piv_key, piv_rank)

  @staticmethod
  def buffer_counts(keys, idx, count, n, piv_key, piv_rank) -> jax.Array:
    """counts over a candidate buffer."""
    return _count(*_buffer_slots(keys, idx, count), n, piv_key, piv_rank)

  @staticmethod
  def sort_select(keys: jax.Array, idx: jax.Array, count: jax.Array, n: int,
                  k: int) -> tuple[jax.Array, jax.Array]:
    """First k candidates by (key desc, index asc); slots past count sort last."""
    del n  # the indices are stored, not their ranks
    valid = jnp.arange(keys.shape[1]) < count[:, None]  # [R, C]
    inv = jnp.where(valid, ~keys, jnp.uint32(0xFFFFFFFF))
    idx = jnp.where(valid, idx, jnp.iinfo(jnp.int32).max)
    inv, idx = jax.lax.sort((inv, idx), dimension=1, num_keys=2)
    return ~inv[:, :k], idx[:, :k]


def top_k(x: jax.Array, k: int, cfg: Config | None = None, ops: Any = JaxOps
          ) -> tuple[jax.Array, jax.Array]:
  """The algorithm on rows x [R, N] (float32, bfloat16 or float16) with a backend's ops.

  Returns (values [R, k] in x.dtype, indices [R, k] int32), as jax.lax.top_k.
  """
  r, n = x.shape
  cfg = cfg or Config.default(n, k)
  bound = n > cfg.capacity  # else short rows: every element fits
  maxima = ops.chunk_max(x, cfg.chunk) if bound else jnp.zeros((r, 0), jnp.uint32)  # [R, P]
  chunk = cfg.chunk if bound else 0
  skip = (maxima, chunk) if bound else ()
  filter_fn = lambda th_key, th_rank: ops.filter(x, th_key, th_rank, cfg.buffer, *skip)
  keys, idx = select(n, k, cfg, ops, maxima, filter_fn, lambda: x, key_bits(x.dtype), chunk)
  return from_keys(keys, x.dtype), idx


def top_k_rounds(x: jax.Array, k: int) -> jax.Array:
  """Indices [R, k] of the k largest of short rows x [R, E] by k rounds of a row maximum
  over the composite key (key, rank): the router kernel's algorithm (k <= 16)."""
  e = x.shape[1]
  keys, ranks = to_keys(x), (e - jnp.arange(e)).astype(jnp.uint32)  # [R, E], [E]
  live = jnp.ones(x.shape, bool)
  ids = []
  for _ in range(k):
    top = jnp.max(jnp.where(live, keys, 0), axis=1, keepdims=True)  # [R, 1]
    rank = jnp.max(jnp.where(live & (keys == top), ranks, 0), axis=1, keepdims=True)
    ids.append(e - rank.astype(jnp.int32))
    live = live & (ranks != rank)
  return jnp.concatenate(ids, axis=1)
