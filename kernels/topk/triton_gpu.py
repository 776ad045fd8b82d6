"""GPU backend: the primitives of radix.py as Triton kernels, called through jax-triton.

Triton, not Pallas Mosaic GPU: stream compaction needs a per-row atomic counter that
returns its old value (per element, or per block after an in-block prefix sum), and the
counting steps scatter-free cross-warp reductions; Triton has tl.atomic_add, tl.cumsum
and tl.sum for these. (tl.sort was measured slow for the bound and the final sort: 0.20
and 0.18 ms at B=32, W=512; selection by counting replaced it.) Importing this module needs
only triton; a launch needs jax_triton (onerec_kernels.triton_launch). The *_plan functions
give kernels their grids and constexprs, so the CPU tests launch the same configurations
in Triton's interpreter.
"""

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from onerec_kernels.topk import radix
from onerec_kernels.triton_launch import shape, triton_call

_WARPS = 8
_STEP = 512  # fewest elements a chunk-skipping filter reads at once
_MAX_STEPS = 64  # steps of a chunk-skipping filter program: bits of its int64 mask
ROUTER_METHODS = ("rounds", "composite", "bitonic")  # see _router_kernel


def _none() -> jax.Array:
  """Placeholder for a pointer argument the kernel does not read."""
  return jnp.zeros((1,), jnp.int32)


@triton.jit
def _to_key(x, BITS: tl.constexpr):
  """radix.to_keys in Triton: order-preserving uint32 key of an fp32/bf16/fp16 tensor."""
  if BITS == 32:
    u = x.to(tl.uint32, bitcast=True)
  else:
    u = x.to(tl.uint16, bitcast=True).to(tl.uint32)
  return tl.where((u >> (BITS - 1)) != 0, u ^ ((1 << BITS) - 1), u ^ (1 << (BITS - 1)))


@triton.jit
def _reaches(keys, ranks, th_key, th_rank):
  return (keys > th_key) | ((keys == th_key) & (ranks >= th_rank))


@triton.jit
def _compact(keys, idx, inb, n, row, th_key, th_rank, key_ptr, idx_ptr, cnt_ptr,
             C: tl.constexpr):
  """Appends the (key, index) pairs whose composite key reaches the row's threshold to the
  row's candidate slots; the row's count grows by all of them, stored or not. A block
  with few of them takes one slot per element, else one range for the block."""
  ranks = (n - idx).to(tl.uint32)
  sel = inb & _reaches(keys, ranks, th_key, th_rank)
  sel_i = sel.to(tl.int32)
  n_sel = tl.sum(sel_i, axis=0)
  if n_sel > 0:
    if n_sel <= 16:
      pos = tl.atomic_add(cnt_ptr + row + 0 * sel_i, 1, mask=sel, sem="relaxed")
      _store_slots(keys, idx, sel & (pos < C), pos, row, key_ptr, idx_ptr, C)
    else:
      pos = tl.atomic_add(cnt_ptr + row, n_sel, sem="relaxed") + tl.cumsum(sel_i, 0) - 1
      _store_slots(keys, idx, sel & (pos < C), pos, row, key_ptr, idx_ptr, C)


@triton.jit
def _store_slots(keys, idx, ok, pos, row, key_ptr, idx_ptr, C: tl.constexpr):
  tl.store(key_ptr + row * C + pos, keys, mask=ok)
  tl.store(idx_ptr + row * C + pos, idx, mask=ok)


@triton.jit
def _chunk_max_kernel(x_ptr, out_ptr, N: tl.constexpr, P: tl.constexpr,
                      CHUNK: tl.constexpr, GROUP: tl.constexpr, BITS: tl.constexpr):
  row = tl.program_id(0).to(tl.int64)
  c = tl.program_id(1) * GROUP + tl.arange(0, GROUP)  # [G] chunk ids
  offs = c[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]  # [G, S]
  inb = offs < N
  keys = tl.where(inb, _to_key(tl.load(x_ptr + row * N + offs, mask=inb), BITS), 0)
  tl.store(out_ptr + row * P + c, tl.max(keys, axis=1), mask=c < P)


@triton.jit
def _kth_kernel(m_ptr, out_ptr, P: tl.constexpr, K: tl.constexpr, SUB: tl.constexpr):
  """k-th largest of a row of P keys: radix select in one program, 4 bits a round; the
  largest of 16 pivots that at least K keys reach extends the prefix."""
  row = tl.program_id(0)
  d = tl.arange(0, 16).to(tl.uint32)
  prefix = tl.max(d * 0, axis=0)  # uint32 zero
  for r in tl.static_range(8):
    piv = prefix | (d << (28 - 4 * r))  # [16]
    acc = tl.zeros((16,), tl.int32)
    for start in range(0, P, SUB):
      offs = start + tl.arange(0, SUB)
      v = tl.load(m_ptr + row * P + offs, mask=offs < P, other=0)
      acc += tl.sum((v[:, None] >= piv[None, :]).to(tl.int32), axis=0)
    prefix = tl.max(tl.where(acc >= K, piv, 0), axis=0)
  tl.store(out_ptr + row, prefix)


@triton.jit
def _load_slots(src_ptr, idx_ptr, cnt_ptr, row, offs, N: tl.constexpr, M: tl.constexpr,
                BITS: tl.constexpr, FROM_BUFFER: tl.constexpr):
  """(keys, indices, valid) at offs of a row: of the floats src [R, N] or, FROM_BUFFER, of
  the candidate buffer (keys src, indices idx) [R, M] holding cnt[row] entries."""
  if FROM_BUFFER:
    inb = offs < tl.minimum(tl.load(cnt_ptr + row), M)
    keys = tl.load(src_ptr + row * M + offs, mask=inb, other=0)
    idx = tl.load(idx_ptr + row * M + offs, mask=inb, other=0)
  else:
    inb = offs < N
    keys = _to_key(tl.load(src_ptr + row.to(tl.int64) * N + offs, mask=inb), BITS)
    idx = offs
  return keys, idx, inb


@triton.jit
def _live_steps(max_ptr, row, first, th_key, P: tl.constexpr, STEPS: tl.constexpr,
                PER_STEP: tl.constexpr, SKIP: tl.constexpr):
  """Mask whose bit j says that step j, the PER_STEP chunks from chunk first + j * PER_STEP
  of the row's P chunk maxima, has a maximum >= th_key: only such a step can hold a key
  reaching the threshold. Without SKIP all bits are set."""
  if SKIP:
    s = tl.arange(0, STEPS)
    c = first + s[:, None] * PER_STEP + tl.arange(0, PER_STEP)[None, :]  # [S, PS]
    m = tl.max(tl.load(max_ptr + row * P + c, mask=c < P, other=0), axis=1)  # [S]
    bits = tl.full((STEPS,), 1, tl.int64) << s.to(tl.int64)
    live = tl.sum(tl.where(m >= th_key, bits, 0), axis=0)
  else:
    live = -1
  return live


@triton.jit
def _filter_kernel(src_ptr, sidx_ptr, scnt_ptr, max_ptr, thk_ptr, thr_ptr, key_ptr,
                   idx_ptr, cnt_ptr, N: tl.constexpr, M: tl.constexpr, C: tl.constexpr,
                   P: tl.constexpr, STEP: tl.constexpr, STEPS: tl.constexpr,
                   PER_STEP: tl.constexpr, BITS: tl.constexpr, FROM_BUFFER: tl.constexpr,
                   SKIP: tl.constexpr):
  """Compacts the row's composite keys >= its threshold, STEPS steps of STEP slots a
  program; with SKIP, given chunk maxima [R, P] (PER_STEP chunks a step), it reads only
  the steps that can hold such a key."""
  row = tl.program_id(0)
  th_key, th_rank = tl.load(thk_ptr + row), tl.load(thr_ptr + row)
  first = tl.program_id(1) * STEPS
  live = _live_steps(max_ptr, row, first * PER_STEP, th_key, P, STEPS, PER_STEP, SKIP)
  for j in range(STEPS):
    if ((live >> j) & 1) != 0:
      offs = (first + j) * STEP + tl.arange(0, STEP)
      keys, idx, inb = _load_slots(src_ptr, sidx_ptr, scnt_ptr, row, offs, N, M, BITS,
                                   FROM_BUFFER)
      _compact(keys, idx, inb, N, row, th_key, th_rank, key_ptr, idx_ptr, cnt_ptr, C)


def _filter_plan(m: int, block: int, span: int = 0, chunk: int = 0
                 ) -> tuple[int, int, dict]:
  """(programs per row, warps, constexprs) of _filter_kernel over rows of m slots: without
  chunk maxima, `block` slots a program; with maxima over chunks of `chunk` (a power of
  two), `span` slots a program in steps of max(chunk, _STEP) that it reads only where
  they can hold candidates."""
  if not chunk:
    step = min(block, radix._pow2(m))
    return -(-m // step), _WARPS, dict(P=1, STEP=step, STEPS=1, PER_STEP=1, SKIP=False)
  step = max(chunk, _STEP)
  steps = max(1, min(_MAX_STEPS, span // step, radix._pow2(-(-m // step))))
  return -(-m // (steps * step)), 4, dict(P=-(-m // chunk), STEP=step, STEPS=steps,
                                          PER_STEP=step // chunk, SKIP=True)


@triton.jit
def _counts_kernel(src_ptr, sidx_ptr, scnt_ptr, pk_ptr, pr_ptr, out_ptr, N: tl.constexpr,
                   M: tl.constexpr, D: tl.constexpr, SPAN: tl.constexpr, SUB: tl.constexpr,
                   BITS: tl.constexpr, FROM_BUFFER: tl.constexpr):
  """Counts of the row's composite keys >= each of its D pivots, SPAN slots a program."""
  row = tl.program_id(0)
  d = tl.arange(0, D)
  pk, pr = tl.load(pk_ptr + row * D + d)[None, :], tl.load(pr_ptr + row * D + d)[None, :]
  acc = tl.zeros((D,), tl.int32)
  for start in range(0, SPAN, SUB):
    offs = tl.program_id(1) * SPAN + start + tl.arange(0, SUB)
    keys, idx, inb = _load_slots(src_ptr, sidx_ptr, scnt_ptr, row, offs, N, M, BITS,
                                 FROM_BUFFER)
    ranks = (N - idx).to(tl.uint32)[:, None]
    sel = inb[:, None] & _reaches(keys[:, None], ranks, pk, pr)  # [SUB, D]
    acc += tl.sum(sel.to(tl.int32), axis=0)
  tl.atomic_add(out_ptr + row * D + d, acc)


@triton.jit
def _composite(key_ptr, idx_ptr, row, slot, valid, N: tl.constexpr, C: tl.constexpr):
  """64-bit composite keys (key, N - index) of candidate slots; 0 where not valid."""
  keys = tl.load(key_ptr + row * C + slot, mask=valid, other=0).to(tl.uint64)
  ranks = tl.where(valid, N - tl.load(idx_ptr + row * C + slot, mask=valid), 0)
  return (keys << 32) | ranks.to(tl.uint64)


@triton.jit
def _rank_kernel(key_ptr, idx_ptr, cnt_ptr, okey_ptr, oidx_ptr, N: tl.constexpr,
                 K: tl.constexpr, C: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
  """Final sort by counting: a candidate's place is the number of larger composite keys
  (all distinct); the first K places are written. BI candidates a program."""
  row = tl.program_id(0)
  count = tl.minimum(tl.load(cnt_ptr + row), C)
  i = tl.program_id(1) * BI + tl.arange(0, BI)
  if tl.program_id(1) * BI < count:
    ci = _composite(key_ptr, idx_ptr, row, i, i < count, N, C)  # [BI]
    place = tl.zeros((BI,), tl.int32)
    for start in range(0, count, BJ):
      j = start + tl.arange(0, BJ)
      cj = _composite(key_ptr, idx_ptr, row, j, j < count, N, C)  # [BJ]
      place += tl.sum((cj[None, :] > ci[:, None]).to(tl.int32), axis=1)
    out = (i < count) & (place < K)
    tl.store(okey_ptr + row * K + place, (ci >> 32).to(tl.uint32), mask=out)
    tl.store(oidx_ptr + row * K + place, N - (ci & 0xFFFFFFFF).to(tl.int32), mask=out)


class TritonOps:
  """radix.py's primitives on the GPU; x is [R, N] float32, bfloat16 or float16. cfg's
  block and span size the programs."""

  def __init__(self, cfg: radix.Config):
    self.cfg = cfg

  @staticmethod
  def chunk_max(x: jax.Array, chunk: int) -> jax.Array:
    r, n = x.shape
    p = -(-n // chunk)
    group = max(1, 4096 // chunk)
    return triton_call(_chunk_max_kernel, x, out=shape((r, p), jnp.uint32),
                       grid=(r, -(-p // group)), num_warps=_WARPS, N=n, P=p, CHUNK=chunk,
                       GROUP=group, BITS=radix.key_bits(x.dtype))

  @staticmethod
  def kth_largest(maxima: jax.Array, k: int) -> jax.Array:
    r, p = maxima.shape
    return triton_call(_kth_kernel, maxima, out=shape((r,), jnp.uint32), grid=(r,),
                       num_warps=16, P=p, K=k, SUB=min(2048, radix._pow2(p)))

  def filter(self, x, th_key, th_rank, capacity, maxima=None, chunk=0
             ) -> radix.Candidates:
    n = x.shape[1]
    skip = (maxima, chunk) if chunk else (_none(), 0)
    return self._filter((x, _none(), _none()), skip, n, n, th_key, th_rank, capacity,
                        radix.key_bits(x.dtype), False)

  def buffer_filter(self, keys, idx, count, n, th_key, th_rank,
                    capacity) -> radix.Candidates:
    return self._filter((keys, idx, count), (_none(), 0), n, keys.shape[1], th_key,
                        th_rank, capacity, 32, True)

  def counts(self, x, piv_key, piv_rank) -> jax.Array:
    n = x.shape[1]
    return self._counts((x, _none(), _none()), n, n, piv_key, piv_rank,
                        radix.key_bits(x.dtype), False)

  def buffer_counts(self, keys, idx, count, n, piv_key, piv_rank) -> jax.Array:
    return self._counts((keys, idx, count), n, keys.shape[1], piv_key, piv_rank, 32, True)

  def _filter(self, slots, skip, n, m, th_key, th_rank, capacity, bits, from_buffer):
    """slots: (floats [R, n], -, -) or a buffer (keys, indices [R, m], count [R]); skip:
    (chunk maxima [R, P], chunk) of the floats, or (-, 0)."""
    r = th_key.shape[0]
    maxima, chunk = skip
    programs, warps, meta = _filter_plan(m, self.cfg.block, self.cfg.span, chunk)
    return triton_call(_filter_kernel, *slots, maxima, th_key, th_rank,
                       out=_candidates(r, capacity), grid=(r, programs), num_warps=warps,
                       zeroed=(2,), N=n, M=m, C=capacity, BITS=bits,
                       FROM_BUFFER=from_buffer, **meta)

  def _counts(self, slots, n, m, piv_key, piv_rank, bits, from_buffer):
    r, d = piv_key.shape
    block = self.cfg.block
    return triton_call(_counts_kernel, *slots, piv_key, piv_rank,
                       out=shape((r, d), jnp.int32), grid=(r, -(-m // block)),
                       num_warps=_WARPS, zeroed=(0,), N=n, M=m, D=d, SPAN=block,
                       SUB=max(16, 4096 // d), BITS=bits, FROM_BUFFER=from_buffer)

  @staticmethod
  def sort_select(keys: jax.Array, idx: jax.Array, count: jax.Array, n: int,
                  k: int) -> tuple[jax.Array, jax.Array]:
    r, c = keys.shape
    bi = min(64, c)
    return triton_call(_rank_kernel, keys, idx, count,
                       out=(shape((r, k), jnp.uint32), shape((r, k), jnp.int32)),
                       grid=(r, c // bi), num_warps=4, N=n, K=k, C=c, BI=bi,
                       BJ=min(128, c))


def _candidates(rows: int, capacity: int):
  return (shape((rows, capacity), jnp.uint32), shape((rows, capacity), jnp.int32),
          shape((rows,), jnp.int32))


# Fused beam search: candidate (b, w, v) scores log_softmax(logits[b, w]) [v] + beam[b, w],
# never written to memory on the fast path. One program per (b, w) row of V logits.


@triton.jit
def _beam_row(logits_ptr, beam_ptr, mask_ptr, bw, offs, inb, mx, ls, V: tl.constexpr,
              HAS_MASK: tl.constexpr):
  """Scores of logits row bw at offs; the same float operations in every kernel, so the
  scores are bit-identical wherever they are recomputed."""
  x = tl.load(logits_ptr + bw * V + offs, mask=inb, other=-float("inf")).to(tl.float32)
  score = ((x - mx) - ls) + tl.load(beam_ptr + bw).to(tl.float32)
  if HAS_MASK:
    score = tl.where(tl.load(mask_ptr + bw * V + offs, mask=inb, other=0) != 0, score,
                     -float("inf"))
  return score


@triton.jit
def _beam_stats_kernel(logits_ptr, beam_ptr, mask_ptr, max_ptr, mx_ptr, ls_ptr,
                       V: tl.constexpr, G: tl.constexpr, CHUNK: tl.constexpr,
                       HAS_MASK: tl.constexpr):
  """Row max and log-sum-exp of one (b, w) row, and its G chunk maxima of score keys."""
  bw = tl.program_id(0).to(tl.int64)
  g = tl.arange(0, G)
  offs = g[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]  # [G, S]
  inb = offs < V
  x = tl.load(logits_ptr + bw * V + offs, mask=inb, other=-float("inf")).to(tl.float32)
  mx = tl.max(tl.max(x, axis=1), axis=0)
  ls = tl.log(tl.sum(tl.sum(tl.exp(x - mx), axis=1), axis=0))
  score = _beam_row(logits_ptr, beam_ptr, mask_ptr, bw, offs, inb, mx, ls, V, HAS_MASK)
  keys = tl.where(inb, _to_key(score, 32), 0)
  tl.store(max_ptr + bw * G + g, tl.max(keys, axis=1))
  tl.store(mx_ptr + bw, mx)
  tl.store(ls_ptr + bw, ls)


@triton.jit
def _beam_filter_kernel(logits_ptr, beam_ptr, mask_ptr, mx_ptr, ls_ptr, max_ptr, thk_ptr,
                        thr_ptr, key_ptr, idx_ptr, cnt_ptr, W: tl.constexpr,
                        V: tl.constexpr, G: tl.constexpr, STEP: tl.constexpr,
                        STEPS: tl.constexpr, C: tl.constexpr, HAS_MASK: tl.constexpr):
  """_filter_kernel on the scores of one (b, w) row, STEPS steps of STEP; reads only the
  steps whose chunk maxima (G a row) can reach request b's threshold."""
  bw = tl.program_id(0)
  b, w = bw // W, bw % W
  th_key, th_rank = tl.load(thk_ptr + b), tl.load(thr_ptr + b)
  live = _live_steps(max_ptr, b, w * G, th_key, W * G, STEPS, G // STEPS, True)
  mx, ls = tl.load(mx_ptr + bw), tl.load(ls_ptr + bw)
  for j in range(STEPS):
    if ((live >> j) & 1) != 0:
      v = j * STEP + tl.arange(0, STEP)
      inb = v < V
      score = _beam_row(logits_ptr, beam_ptr, mask_ptr, bw.to(tl.int64), v, inb, mx, ls,
                        V, HAS_MASK)
      _compact(_to_key(score, 32), w * V + v, inb, W * V, b, th_key, th_rank, key_ptr,
               idx_ptr, cnt_ptr, C)


@triton.jit
def _beam_scores_kernel(logits_ptr, beam_ptr, mask_ptr, mx_ptr, ls_ptr, out_ptr,
                        V: tl.constexpr, BLOCK_V: tl.constexpr, HAS_MASK: tl.constexpr):
  bw = tl.program_id(0).to(tl.int64)
  v = tl.arange(0, BLOCK_V)
  inb = v < V
  score = _beam_row(logits_ptr, beam_ptr, mask_ptr, bw, v, inb, tl.load(mx_ptr + bw),
                    tl.load(ls_ptr + bw), V, HAS_MASK)
  tl.store(out_ptr + bw * V + v, score, mask=inb)


def _beam_plan(v: int, chunk: int) -> dict:
  """Sizes of the fused kernels for rows of v logits, padded to BLOCK_V: G chunk maxima of
  CHUNK a row, and the filter's STEPS steps of STEP a row (at least _STEP each, where the
  row has that many)."""
  block_v = radix._pow2(v)
  chunk = min(chunk, block_v)
  steps = max(1, min(_MAX_STEPS, block_v // max(chunk, _STEP)))
  return dict(BLOCK_V=block_v, CHUNK=chunk, G=block_v // chunk, STEP=block_v // steps,
              STEPS=steps)


def beam_top_k(logits: jax.Array, beam_scores: jax.Array, k: int,
               valid_mask: jax.Array | None, cfg: radix.Config
               ) -> tuple[jax.Array, jax.Array]:
  """radix.select on the fused beam scores: logits [B, W, V] -> (scores [B, k] f32,
  flat indices [B, k])."""
  b, w, v = logits.shape
  n, plan = w * v, _beam_plan(v, cfg.chunk)
  has_mask = valid_mask is not None
  mask = valid_mask if has_mask else _none()
  inputs, rows = (logits, beam_scores, mask), (b * w,)
  meta = dict(V=v, HAS_MASK=has_mask)
  maxima, mx, ls = triton_call(
      _beam_stats_kernel, *inputs,
      out=(shape((b, w * plan["G"]), jnp.uint32), shape((b * w,), jnp.float32),
           shape((b * w,), jnp.float32)),
      grid=rows, num_warps=_WARPS, G=plan["G"], CHUNK=plan["CHUNK"], **meta)
  filter_fn = lambda th_key, th_rank: triton_call(
      _beam_filter_kernel, *inputs, mx, ls, maxima, th_key, th_rank,
      out=_candidates(b, cfg.buffer), grid=rows, num_warps=4, zeroed=(2,), W=w,
      G=plan["G"], STEP=plan["STEP"], STEPS=plan["STEPS"], C=cfg.buffer, **meta)
  materialize = lambda: triton_call(
      _beam_scores_kernel, *inputs, mx, ls, out=shape((b, n), jnp.float32), grid=rows,
      num_warps=_WARPS, BLOCK_V=plan["BLOCK_V"], **meta)
  # With v a power of two the maxima of row b are those of its materialized scores.
  chunk = plan["CHUNK"] if v == plan["BLOCK_V"] else 0
  keys, idx = radix.select(n, k, cfg, TritonOps(cfg), maxima, filter_fn, materialize, 32,
                           chunk)
  return radix.from_keys(keys, jnp.float32), idx


# Router: E <= 256 experts, k <= 16; BLOCK_T tokens a program. Experts are chosen on keys of
# the choice scores (scores + bias), ties to the lowest expert, by one of ROUTER_METHODS:
# "rounds": k rounds of a 32-bit row maximum, then the lowest expert holding it;
# "composite": k rounds of a 64-bit row maximum of (key, E - expert);
# "bitonic": tl.topk (bitonic) over those 64-bit keys.
# The gates re-read the chosen logits and recompute their scores with the same float
# operations, so they equal the scores the choice was made on.


@triton.jit
def _router_score(x, mx, denom, SOFTMAX: tl.constexpr):
  """Scores of float32 logits x: softmax given the row's max and sum of exponentials, or
  sigmoid."""
  if SOFTMAX:
    score = tl.exp(x - mx) / denom
  else:
    score = tl.sigmoid(x)
  return score


@triton.jit
def _select_rounds(keys, e, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                   K: tl.constexpr, BLOCK_K: tl.constexpr):
  """Experts [BT, BK] of the K largest keys [BT, BE] (0 in padding), 32 bits a round: a
  chosen expert's key drops to 0 and its index to BLOCK_E, so a live expert wins any tie
  at 0."""
  idx = tl.zeros((BLOCK_T, BLOCK_E), tl.int32) + e  # [BT, BE]
  slot = tl.arange(0, BLOCK_K)[None, :]  # [1, BK]
  ids = tl.zeros((BLOCK_T, BLOCK_K), tl.int32)
  for i in tl.static_range(K):
    top = tl.max(keys, axis=1)[:, None]  # [BT, 1]
    best = tl.min(tl.where(keys == top, idx, BLOCK_E), axis=1)[:, None]  # [BT, 1]
    ids = tl.where(slot == i, best, ids)
    hit = idx == best
    keys = tl.where(hit, 0, keys)
    idx = tl.where(hit, BLOCK_E, idx)
  return ids


@triton.jit
def _composite_keys(keys, e, E: tl.constexpr):
  """64-bit keys (key, E - expert) of keys [BT, BE], distinct within a row; 0 in padding."""
  return tl.where(e < E, (keys.to(tl.uint64) << 32) | (E - e).to(tl.uint64), 0)


@triton.jit
def _select_composite(keys, e, E: tl.constexpr, BLOCK_T: tl.constexpr, K: tl.constexpr,
                      BLOCK_K: tl.constexpr):
  comp = _composite_keys(keys, e, E)  # [BT, BE]
  slot = tl.arange(0, BLOCK_K)[None, :]  # [1, BK]
  ids = tl.zeros((BLOCK_T, BLOCK_K), tl.int32)
  for i in tl.static_range(K):
    best = tl.max(comp, axis=1)[:, None]  # [BT, 1]
    ids = tl.where(slot == i, E - (best & 0xFFFFFFFF).to(tl.int32), ids)
    comp = tl.where(comp == best, 0, comp)
  return ids


@triton.jit
def _select_bitonic(keys, e, E: tl.constexpr, BLOCK_K: tl.constexpr):
  top = tl.topk(_composite_keys(keys, e, E), BLOCK_K)  # [BT, BK], descending
  return E - (top & 0xFFFFFFFF).to(tl.int32)


@triton.jit
def _router_kernel(logits_ptr, bias_ptr, ids_ptr, gates_ptr, T: tl.constexpr,
                   E: tl.constexpr, K: tl.constexpr, SCALING: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                   BLOCK_K: tl.constexpr, METHOD: tl.constexpr, SOFTMAX: tl.constexpr,
                   HAS_BIAS: tl.constexpr, NORM: tl.constexpr):
  t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT]
  e = tl.arange(0, BLOCK_E)[None, :]  # [1, BE]
  rows = logits_ptr + t[:, None].to(tl.int64) * E  # [BT, 1]
  x = tl.load(rows + e, mask=(t[:, None] < T) & (e < E),
              other=-float("inf")).to(tl.float32)  # [BT, BE]
  if SOFTMAX:
    mx = tl.max(x, axis=1)[:, None]  # [BT, 1]
    denom = tl.sum(tl.exp(x - mx), axis=1)[:, None]
  else:
    mx, denom = 0.0, 1.0
  choice = _router_score(x, mx, denom, SOFTMAX)
  if HAS_BIAS:
    choice = choice + tl.load(bias_ptr + e, mask=e < E, other=0).to(tl.float32)
  keys = tl.where(e < E, _to_key(choice, 32), 0)  # [BT, BE]
  if METHOD == 0:
    ids = _select_rounds(keys, e, BLOCK_T, BLOCK_E, K, BLOCK_K)
  elif METHOD == 1:
    ids = _select_composite(keys, e, E, BLOCK_T, K, BLOCK_K)
  else:
    ids = _select_bitonic(keys, e, E, BLOCK_K)
  slot = tl.arange(0, BLOCK_K)[None, :]  # [1, BK]
  out = (t[:, None] < T) & (slot < K)  # [BT, BK]
  x_ids = tl.load(rows + ids, mask=out, other=0).to(tl.float32)
  gates = tl.where(out, _router_score(x_ids, mx, denom, SOFTMAX), 0.0)
  if NORM:
    gates = gates / (tl.sum(gates, axis=1)[:, None] + 1e-20)
  tl.store(ids_ptr + t[:, None] * K + slot, ids, mask=out)
  tl.store(gates_ptr + t[:, None] * K + slot, gates * SCALING, mask=out)


def _router_plan(t: int, e: int, k: int, method: str | None = None, tokens: int = 0,
                 warps: int = 0) -> tuple[tuple[int], int, dict]:
  """(grid, warps, constexprs but the score's) of _router_kernel for logits [t, e]. None
  and 0 pick "rounds" (the fewest integer operations and none of 64 bits: fastest of the
  three methods at both benchmark shapes on the H100), one warp, so that a row's
  reductions stay in the warp (Triton spreads a row over 32 lanes and, past them, over
  warps), and 1024 // E tokens (E rounded up to a power of two), 32 elements a thread:
  within about 10% of the best tiling measured (bench/results/topk_h100.json)."""
  method = method or "rounds"
  if method not in ROUTER_METHODS:
    raise ValueError(f"method={method!r}: must be one of {ROUTER_METHODS}")
  block_e = radix._pow2(e)
  block_t = tokens or max(1, 1024 // block_e)
  return (-(-t // block_t),), warps or 1, dict(
      T=t, E=e, K=k, BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=radix._pow2(k),
      METHOD=ROUTER_METHODS.index(method))


def router_top_k(logits: jax.Array, bias: jax.Array | None, k: int, score: str,
                 norm_topk_prob: bool, scaling: float, method: str | None = None,
                 tokens: int = 0, warps: int = 0) -> tuple[jax.Array, jax.Array]:
  """One kernel: scores, bias, top-k and gates; logits [T, E] -> (ids, gates) [T, k].
  method, tokens a program and warps: see _router_plan."""
  t, e = logits.shape
  grid, warps, meta = _router_plan(t, e, k, method, tokens, warps)
  has_bias = bias is not None
  return triton_call(
      _router_kernel, logits, bias if has_bias else _none(),
      out=(shape((t, k), jnp.int32), shape((t, k), jnp.float32)), grid=grid,
      num_warps=warps, SCALING=float(scaling), SOFTMAX=score == "softmax",
      HAS_BIAS=has_bias, NORM=norm_topk_prob, **meta)
