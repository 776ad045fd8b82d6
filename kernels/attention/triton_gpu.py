"""GPU backend of the attention op: one Triton kernel, flash-attention style.

A program owns BLOCK_M query rows of one (request, K/V head): the request's Q rows times
the R query heads of that K/V head, flattened. It walks the request's N keys in blocks of
BLOCK_N with an FP32 online softmax, so no [.., N] score tensor exists in memory, and
reads K and V of the (request, head) pair from memory once per row block: with the beam
search's Q = W rows of one request all sharing its context, that is the same K/V for
every beam, read from L2 after the first block. Triton, not Pallas Mosaic GPU, for the
same reason as the quantization pass: rows of any length and masks are plain masked
loads, and the kernel runs in Triton's CPU interpreter for the tests. The *_plan function
gives the launch its grid and constexprs, so the CPU tests launch what the GPU runs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from onerec_kernels import backend, triton_launch
from onerec_kernels.attention.reference import MASKED


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, lse_ptr, m_ptr, l_ptr,
                      Q: tl.constexpr, N: tl.constexpr, G: tl.constexpr, R: tl.constexpr,
                      D: tl.constexpr, SCALE: tl.constexpr, MASKED_SCORE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      SPLITS: tl.constexpr, CHUNK: tl.constexpr, HAS_MASK: tl.constexpr,
                      CAUSAL: tl.constexpr, WRITE_LSE: tl.constexpr, IEEE: tl.constexpr):
  """q [B, Q, G, R, D], k, v [B, N, G, D], mask [B, N] int8 (1: attend) -> o like q, and
  with WRITE_LSE the rows' log-sum-exp [B, Q, G, R] f32. CAUSAL: query position i sees
  keys up to i + N - Q. Grid (row blocks of Q * R, B * G, SPLITS). SPLITS > 1: split s
  takes keys [s * CHUNK, (s + 1) * CHUNK) and writes its unnormalized FP32 sum to o
  [SPLITS, B * Q * G * R, D], its running max and sum of weights to m and l
  [SPLITS, B * Q * G * R] (a split with no key a row sees: -inf and 0), merged after."""
  bg = tl.program_id(1)
  b, g = bg // G, bg % G
  rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] (query, head) rows
  row_ok = rows < Q * R
  d = tl.arange(0, BLOCK_D)
  d_ok = d < D
  # Row (b, q, g, r) of q viewed as [B * Q * G * R, D].
  q_row = ((b * Q + rows // R) * G + g).to(tl.int64) * R + rows % R
  q_mask = row_ok[:, None] & d_ok[None, :]
  q = tl.load(q_ptr + q_row[:, None] * D + d[None, :], mask=q_mask, other=0.0)
  m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)
  l_i = tl.zeros((BLOCK_M,), tl.float32)
  acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
  last_key = rows // R + (N - Q)  # [BM] the last key each row sees when causal
  if CAUSAL:  # key blocks past the block's last query are skipped
    hi = tl.minimum(N, (tl.minimum(tl.program_id(0) * BLOCK_M + BLOCK_M, Q * R) - 1) // R
                    + (N - Q) + 1)
  else:
    hi = N
  lo = tl.program_id(2) * CHUNK
  hi = tl.minimum(hi, lo + CHUNK)
  for start in range(lo, hi, BLOCK_N):
    n = start + tl.arange(0, BLOCK_N)  # [BN]
    n_ok = n < N
    kv_row = ((b * N + n) * G + g).to(tl.int64)
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + kv_row[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
    if IEEE:
      s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
      s = tl.dot(q, tl.trans(k))
    s = s * SCALE  # [BM, BN] f32
    if HAS_MASK:
      keep = tl.load(mask_ptr + b * N + n, mask=n_ok, other=0) != 0
      s = tl.where(keep[None, :], s, MASKED_SCORE)
    if CAUSAL:  # after the row's position: no weight at all, as past the keys
      s = tl.where(n[None, :] <= last_key[:, None], s, -float("inf"))
    s = tl.where(n_ok[None, :], s, -float("inf"))  # past the keys: no weight at all
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_use = tl.where(m_new == -float("inf"), 0.0, m_new)  # no key seen yet: weights 0
    alpha = tl.exp(m_i - m_use)
    p = tl.exp(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_ptr + kv_row[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
    if IEEE:
      pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
      pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    m_i = m_new
  if SPLITS == 1:
    o = acc / l_i[:, None]
    tl.store(o_ptr + q_row[:, None] * D + d[None, :], o.to(o_ptr.dtype.element_ty),
             mask=q_mask)
    if WRITE_LSE:
      tl.store(lse_ptr + q_row, m_i + tl.log(l_i), mask=row_ok)
  else:
    part = tl.program_id(2).to(tl.int64) * (tl.num_programs(1) * (Q * R)) + q_row  # [BM]
    tl.store(o_ptr + part[:, None] * D + d[None, :], acc, mask=q_mask)
    tl.store(m_ptr + part, m_i, mask=row_ok)
    tl.store(l_ptr + part, l_i, mask=row_ok)


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Config:
  """The kernel's tiling: block_m (query, head) rows a program (a power of two from 16,
  tl.dot's least), block_n keys a step, warps, software-pipeline stages, and key_splits:
  the keys cut into this many ranges, each a program of its own, merged after (for grids
  of few (request, head) pairs and rows, which would leave most SMs idle)."""

  block_m: int
  block_n: int
  warps: int
  stages: int
  key_splits: int = 1


def default_config(rows: int, d: int, dtype=jnp.bfloat16, *, programs: int | None = None,
                   n: int = 0) -> Config:
  """Row blocks of 64 (fewer rows: the smallest power of two from 16) and key blocks of 64
  at head widths up to 128 (32 beyond), 4 warps, 3 stages for 16-bit operands (2 for FP32,
  whose tiles are twice the bytes): the fastest of eight tilings at every Qwen3-1.7B
  prefill shape on an H200 and within 1.4x of the fastest at its decode steps
  (bench/results/attention_h200.json). programs (the (request, K/V head) pairs) and n
  (keys): where those pairs' row blocks give fewer than 1.5 programs an SM, the keys are
  split, the fewest splits that reach it, at least 8 key blocks a split (several resident
  programs an SM hide each other's load latency: at one request of 5000 keys, 4 splits
  beat 2 by 1.7x)."""
  block_d = max(16, _pow2(d))
  block_m = 64 if rows >= 64 else max(16, _pow2(rows))
  block_n = 64 if block_d <= 128 else 32
  splits = 1
  if programs:
    tiles, enough = programs * -(-rows // block_m), backend.num_sms() * 3 // 2
    while tiles * splits < enough and -(-n // (2 * splits * block_n)) >= 8:
      splits *= 2
  return Config(block_m=block_m, block_n=block_n, warps=4,
                stages=2 if jnp.dtype(dtype).itemsize > 2 else 3, key_splits=splits)


def attention_plan(b: int, q: int, g: int, r: int, n: int, d: int, dtype,
                   config: Config | None = None
                   ) -> tuple[tuple[int, int, int], int, int, dict]:
  """(grid, warps, stages, constexprs but HAS_MASK) of _attention_kernel under config
  (default_config when None); fp32 operands multiply in IEEE FP32 (Triton's default
  would be TF32), as the FP32 reference does. constexprs["SPLITS"]: the key ranges
  launched (key_splits, fewer where a range would hold no key)."""
  rows = q * r
  cfg = config or default_config(rows, d, dtype, programs=b * g, n=n)
  chunk = -(-(-(-n // cfg.key_splits)) // cfg.block_n) * cfg.block_n  # keys a split
  splits = -(-n // chunk)
  meta = dict(Q=q, N=n, G=g, R=r, D=d, SCALE=d ** -0.5, MASKED_SCORE=float(MASKED),
              BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=max(16, _pow2(d)),
              SPLITS=splits, CHUNK=chunk, IEEE=jnp.dtype(dtype) == jnp.float32)
  return (-(-rows // cfg.block_m), b * g, splits), cfg.warps, cfg.stages, meta


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, *,
              causal: bool = False, lse: bool = False, config: Config | None = None):
  """q [B, Q, G, R, dh], k, v [B, N, G, dh] (one dtype), key_mask [B, N] bool or None ->
  [B, Q, G, R, dh] in q's dtype (and the log-sum-exp [B, Q, G, R] f32 with lse); as
  attention_reference with that key mask. config: the tiling (default_config if None)."""
  b, nq, g, r, d = q.shape
  n = k.shape[1]
  grid, warps, stages, meta = attention_plan(b, nq, g, r, n, d, q.dtype, config)
  mask = (jnp.zeros((1,), jnp.int8) if key_mask is None
          else key_mask.astype(jnp.int8))
  splits, rows = meta["SPLITS"], b * nq * g * r
  one = triton_launch.shape((1,), jnp.float32)
  if splits == 1:
    out = (triton_launch.shape(q.shape, q.dtype),
           triton_launch.shape((b, nq, g, r), jnp.float32) if lse else one, one, one)
  else:
    out = (triton_launch.shape((splits, rows, d), jnp.float32), one,
           triton_launch.shape((splits, rows), jnp.float32),
           triton_launch.shape((splits, rows), jnp.float32))
  o, row_lse, m, l = triton_launch.triton_call(
      _attention_kernel, q, k, v, mask, out=out, grid=grid, num_warps=warps,
      num_stages=stages, HAS_MASK=key_mask is not None, CAUSAL=causal, WRITE_LSE=lse,
      **meta)
  if splits > 1:
    o, row_lse = merge_splits(o, m, l)
    o, row_lse = o.astype(q.dtype).reshape(q.shape), row_lse.reshape(b, nq, g, r)
  return (o, row_lse) if lse else o


def merge_splits(acc: jax.Array, m: jax.Array, l: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The key splits' unnormalized sums acc [S, rows, D], maxima m and weight sums l
  [S, rows] -> (out [rows, D], log-sum-exp [rows]) f32: each split weighted by exp(its
  max - the rows' max), so equal maxima (a row of masked keys) weigh by their counts."""
  top = jnp.max(m, axis=0)  # [rows]; finite: the first split holds key 0
  w = jnp.exp(m - top)  # [S, rows]
  total = jnp.sum(w * l, axis=0)
  return jnp.sum(w[..., None] * acc, axis=0) / total[:, None], top + jnp.log(total)
