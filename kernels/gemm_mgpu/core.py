"""The GEMM core of the FP8 linear and grouped-GEMM kernels (Pallas Mosaic GPU, Hopper).

One warp-specialised kernel family: a memory warpgroup streams K-major tiles of
a [M, K] and b [G, N, K] through shared memory with TMA; two or three compute warpgroups
run wgmma with FP32 accumulation (int32 for int8 operands) over a persistent grid (one CTA
per SM, one pipeline across all of its tiles). Both operands stay K-major because FP8 wgmma rejects
transposed operands (docs/kernels_gemm.md). Variants, chosen statically:
- rows: dense (every row tile uses group 0), or ragged (a tile schedule maps each row tile
  to one group and the rows it owns; tiles never straddle two groups);
- scaling: none, "rowcol" (y = s_a[m] * s_b[g, n] * acc in the epilogue: per-token x
  per-channel FP8 or INT8, dense or ragged), or "block" (each 128-wide K block's product scaled by
  s_a[m, kb] * s_b[g, kb, n] and added into the FP32 accumulator: 1x128 / 128x128 FP8;
  a warpgroup's columns lie in one 128-block, so s_b is one scalar per step).
Callers pad M, N and K to the tiles; padding rows and columns are sliced off outside.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from onerec_kernels import backend

MEMORY_REGISTERS = 40  # per thread of the memory warpgroup, which only issues TMA
REGISTERS_PER_THREAD_SLOT = 512  # 64K registers / 128 threads: shared by the warpgroups
ROW_ALIGN = 8  # ragged tiles start at multiples of 8 rows (the shared-memory tiling)


# The longest K an int8 split may sum: |sum| <= K * 128^2 <= 2^24, so its int32 sum is
# exact in the FP32 partial it writes.
INT8_SPLIT_K = 2**24 // 128**2

@dataclasses.dataclass(frozen=True)
class Config:
  """Tiling of one compute warpgroup and how the CTA and the grid are laid out."""
  tile_m: int = 128  # rows of one compute warpgroup's tile (64 or 128)
  tile_n: int = 128  # columns of one compute warpgroup's tile
  tile_k: int = 128  # K per pipeline step; "block" scaling needs the 128 of the scales
  max_concurrent_steps: int = 3  # pipeline stages in shared memory
  wg_dimension: str = "m"  # the compute warpgroups split the CTA tile along m or n
  epi_tile_n: int = 64  # columns per epilogue store of a 16-bit output (half for FP32)
  grid_minor_dim: int = 1  # 0: walk m fastest, 1: walk n fastest (planar snake)
  grid_tile_width: int = 4
  k_splits: int = 1  # dense only: K cut into this many ranges, FP32 partials summed after
  compute_wgs: int = 2  # 2 or 3: more hide each other's waits but get fewer registers

  @property
  def cta_m(self) -> int:
    return self.tile_m * (self.compute_wgs if self.wg_dimension == "m" else 1)

  @property
  def cta_n(self) -> int:
    return self.tile_n * (self.compute_wgs if self.wg_dimension == "n" else 1)

  @property
  def compute_registers(self) -> int:
    """Registers per compute thread: what the memory warpgroup leaves, split evenly and
    rounded down to 8 (setmaxnreg's granularity): 232 for two warpgroups, 152 for three."""
    return (REGISTERS_PER_THREAD_SLOT - MEMORY_REGISTERS) // self.compute_wgs // 8 * 8


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def pad_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Zero-pads x at the end of each axis up to shape (no copy when already there)."""
  if x.shape == tuple(shape):
    return x
  return jnp.pad(x, [(0, t - s) for s, t in zip(x.shape, shape)])


def _epilogue_cols(cfg: Config, out_dtype) -> int:
  """Columns of one epilogue store: epi_tile_n 16-bit columns' worth of bytes."""
  return min(cfg.epi_tile_n * 2 // jnp.dtype(out_dtype).itemsize, cfg.tile_n)


def tile_schedule(group_sizes: jax.Array, num_rows: int, tile: int) -> jax.Array:
  """Row tiles of a ragged product: [4, T] int32 of (row_start, group, lo, hi).

  Slot t computes rows [row_start, row_start + tile) and stores [row_start + lo,
  row_start + hi), all of one group. A group's tiles start at its first row rounded down
  to ROW_ALIGN (about half a tile wasted per group, not one), shifted back where they
  would pass the rows padded to the tile. Rows past sum(group_sizes) form a last
  pseudo-group G whose output is zero. T is a static bound; unused slots have lo == hi.
  """
  g = group_sizes.shape[0]
  sizes = group_sizes.astype(jnp.int32)
  sizes = jnp.concatenate([sizes, jnp.maximum(num_rows - sizes.sum(), 0)[None]])
  ends = jnp.cumsum(sizes)
  starts = ends - sizes
  base = starts // ROW_ALIGN * ROW_ALIGN
  count = jnp.where(sizes > 0, -(-(ends - base) // tile), 0)
  cum = jnp.cumsum(count)
  # sum_e ceil((size_e + ROW_ALIGN - 1) / tile) over the G + 1 groups bounds the slots.
  num_slots = pl.cdiv(num_rows + (ROW_ALIGN - 1) * (g + 1), tile) + g + 1
  slots = jnp.arange(num_slots, dtype=jnp.int32)
  # compare_all: one fused comparison of the few slots against the G + 1 ends; the
  # default binary search is a while loop, a host round trip an iteration on the GPU.
  grp = jnp.minimum(jnp.searchsorted(cum, slots, side="right", method="compare_all"),
                    g).astype(jnp.int32)
  used = slots < cum[-1]
  row0 = base[grp] + (slots - (cum - count)[grp]) * tile
  row_start = jnp.minimum(row0, round_up(num_rows, tile) - tile)
  lo = jnp.where(used, jnp.maximum(starts[grp], row0) - row_start, 0)
  hi = jnp.where(used, jnp.minimum(ends[grp], row0 + tile) - row_start, 0)
  return jnp.stack([jnp.where(used, row_start, 0), grp, lo, hi]).astype(jnp.int32)


def _store_rows(o_smem, o_gmem, row0, col0, lo, hi, max_rows):
  """TMA-stores rows [lo, hi) of o_smem to o_gmem rows row0 + [lo, hi): a ladder of
  power-of-two row counts, since a TMA box has a static shape."""
  count = hi - lo
  start = lo
  size = 1 << int(math.log2(max_rows))
  while size >= 1:
    @pl.when(count & size != 0)
    def _():
      plgpu.copy_smem_to_gmem(
          o_smem.at[pl.ds(start, size)],
          o_gmem.at[pl.ds(row0 + start, size), pl.ds(col0, o_smem.shape[1])])
    start = start + (count & size)
    size //= 2


def _kernel(*refs, cfg: Config, scaling: str, ragged: bool, num_groups: int,
            m_tiles: int, n_tiles: int, k_iters: int, num_rows: int):
  """Kernel body; refs = [schedule num_row_tiles] a b [s_a s_b] out.

  One pipeline per SM across all its output tiles: the memory warpgroup walks the SM's
  tiles and their K steps without a break, so the next tile's operands stream in while
  the compute warpgroups finish and store the current one (a pipeline per tile drained
  and refilled at every tile boundary: 8% slower at moe-4b gate_up, K = 1408).
  """
  refs = list(refs)
  sched_gmem, row_tiles_gmem = (refs.pop(0), refs.pop(0)) if ragged else (None, None)
  a_gmem, b_gmem = refs.pop(0), refs.pop(0)
  sa_gmem, sb_gmem = (refs.pop(0), refs.pop(0)) if scaling != "none" else (None, None)
  (out_gmem,) = refs
  dtype, out_dtype = a_gmem.dtype, out_gmem.dtype
  acc_dtype = jnp.int32 if jnp.issubdtype(dtype, jnp.integer) else jnp.float32
  tm, tn, tk = cfg.tile_m, cfg.tile_n, cfg.tile_k
  stages = cfg.max_concurrent_steps
  wgs = cfg.compute_wgs
  swizzle = plgpu.find_swizzle(tk * jnp.dtype(dtype).itemsize * 8)
  transforms = (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
                plgpu.SwizzleTransform(swizzle))
  epi_n = _epilogue_cols(cfg, out_dtype)
  out_swizzle = plgpu.find_swizzle(epi_n * jnp.dtype(out_dtype).itemsize * 8)
  out_transforms = (
      plgpu.TilingTransform((8, out_swizzle // jnp.dtype(out_dtype).itemsize)),
      plgpu.SwizzleTransform(out_swizzle))
  split_m = cfg.wg_dimension == "m"
  block = scaling == "block"
  num_copies = 4 if block else 2  # TMA copies landing on a stage's barrier

  scoped = dict(
      a_smem=plgpu.SMEM((stages, cfg.cta_m, tk), dtype, transforms=transforms),
      b_smem=plgpu.SMEM((stages, cfg.cta_n, tk), dtype, transforms=transforms),
      produced=plgpu.Barrier(num_arrivals=num_copies, num_barriers=stages),
      consumed=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
      # Ragged stores slice rows at any offset: no tiled (swizzled) layout there (an
      # 8-row aligned swizzled path for aligned tiles measured no faster).
      out_smem=plgpu.SMEM((wgs, 2, tm, epi_n), out_dtype,
                          transforms=() if ragged else out_transforms))
  if block:  # one K block's scales per stage: s_a [Kb, M], s_b [G + 1, Kb, N]
    scoped.update(sa_smem=plgpu.SMEM((stages, cfg.cta_m), jnp.float32),
                  sb_smem=plgpu.SMEM((stages, cfg.cta_n), jnp.float32))
  if scaling == "rowcol":
    scoped.update(sa_smem=plgpu.SMEM((wgs, tm), jnp.float32),
                  sb_smem=plgpu.SMEM((wgs, tn), jnp.float32),
                  s_barrier=plgpu.Barrier(num_arrivals=2, num_barriers=wgs))

  @functools.partial(pl.run_scoped, **scoped, collective_axes="wg")
  def _scope(a_smem, b_smem, produced, consumed, out_smem, sa_smem=None, sb_smem=None,
             s_barrier=None):
    wg = lax.axis_index("wg")
    row_tiles = row_tiles_gmem[0] if ragged else m_tiles
    num_tiles = row_tiles * n_tiles * cfg.k_splits

    def tile_at(index):
      """(split, row_start, group, lo, hi, n tile) of output tile `index`."""
      split, index = lax.div(index, row_tiles * n_tiles), lax.rem(index, row_tiles * n_tiles)
      mi, ni = plgpu.planar_snake(index, (row_tiles, n_tiles), cfg.grid_minor_dim,
                                  cfg.grid_tile_width)
      if ragged:
        return (split, pl.multiple_of(sched_gmem[0, mi], ROW_ALIGN), sched_gmem[1, mi],
                sched_gmem[2, mi], sched_gmem[3, mi], ni)
      return split, mi * cfg.cta_m, 0, 0, cfg.cta_m, ni

    def memory():
      plgpu.set_max_registers(MEMORY_REGISTERS, action="decrease")

      @plgpu.nd_loop((num_tiles,), collective_axes="sm", init_carry=jnp.int32(0))
      def _tiles(info, carry):  # carry: the SM's pipeline steps so far
        split, row_start, grp, _, _, ni = tile_at(info.index[0])
        expert = jnp.minimum(grp, num_groups - 1)  # the zero tail group reads any weights
        rows, cols = pl.ds(row_start, cfg.cta_m), pl.ds(ni * cfg.cta_n, cfg.cta_n)

        def k_step(kk, step):
          stage = lax.rem(step, stages)

          @pl.when(step >= stages)
          def _():  # the compute warpgroups are done with this stage's last contents
            plgpu.barrier_wait(consumed.at[stage])

          kb = split * k_iters + kk
          ks = pl.ds(kb * tk, tk)
          bar = produced.at[stage]
          plgpu.copy_gmem_to_smem(a_gmem.at[rows, ks], a_smem.at[stage], bar)
          plgpu.copy_gmem_to_smem(b_gmem.at[expert, cols, ks], b_smem.at[stage], bar)
          if block:
            plgpu.copy_gmem_to_smem(sa_gmem.at[kb, rows], sa_smem.at[stage], bar)
            plgpu.copy_gmem_to_smem(sb_gmem.at[grp, kb, cols], sb_smem.at[stage], bar)
          return step + 1

        return lax.fori_loop(0, k_iters, k_step, carry)

      for j in range(stages):  # the last stages' releases, observed before the exit
        @pl.when(_tiles > j)
        def _():
          plgpu.barrier_wait(consumed.at[lax.rem(_tiles - 1 - j, stages)])

    def compute():
      plgpu.set_max_registers(cfg.compute_registers, action="increase")
      m_wg = wg * tm if split_m else 0
      n_wg = 0 if split_m else wg * tn
      a_rows, b_cols = pl.ds(m_wg, tm), pl.ds(n_wg, tn)

      def wgmma(acc_ref, stage):
        plgpu.wgmma(acc_ref, a_smem.at[stage].at[a_rows], b_smem.at[stage].at[b_cols].T)

      @plgpu.nd_loop((num_tiles,), collective_axes="sm", init_carry=jnp.int32(0))
      def _tiles(info, carry):  # carry: the SM's pipeline steps so far
        split, row_start, grp, lo, hi, ni = tile_at(info.index[0])
        row0 = row_start + m_wg  # first row of this warpgroup's tile
        out_row0 = split * num_rows + row0  # split s writes its partial at s * num_rows
        col0 = ni * cfg.cta_n + n_wg

        def epilogue(acc):
          """acc [tm, tn] f32 or int32 -> scaled, cast, TMA-stored (only this group's
          rows)."""
          if scaling == "rowcol":
            plgpu.barrier_wait(s_barrier.at[wg])
            acc = acc.astype(jnp.float32) * sa_smem[wg][:, None] * sb_smem[wg][None, :]
          elif scaling == "none" and ragged:
            acc = acc * jnp.where(grp < num_groups, 1.0, 0.0).astype(jnp.float32)
          acc = acc.astype(out_dtype)
          r_lo = jnp.clip(lo - m_wg, 0, tm)
          r_hi = jnp.clip(hi - m_wg, 0, tm)

          plgpu.wait_smem_to_gmem(0, wait_read_only=True)
          for e in range(tn // epi_n):
            slot = e % 2
            plgpu.wait_smem_to_gmem(1, wait_read_only=True)
            out_smem[wg, slot] = acc[:, e * epi_n:(e + 1) * epi_n]
            plgpu.commit_smem()
            if ragged:
              _store_rows(out_smem.at[wg, slot], out_gmem, out_row0, col0 + e * epi_n,
                          r_lo, r_hi, tm)
            else:
              plgpu.copy_smem_to_gmem(
                  out_smem.at[wg, slot],
                  out_gmem.at[pl.ds(out_row0, tm), pl.ds(col0 + e * epi_n, epi_n)])

        if block:
          def k_step(_, state):
            step, acc = state
            stage = lax.rem(step, stages)
            plgpu.barrier_wait(produced.at[stage])

            def product(part_ref):  # this K block's product in a fresh accumulator
              wgmma(part_ref, stage)
              plgpu.wgmma_wait(0)
              return part_ref[...]
            part = pl.run_scoped(product, plgpu.ACC((tm, tn), jnp.float32))
            # One weight block covers the warpgroup's columns: one FMA per element.
            scale = sa_smem[stage, a_rows] * sb_smem[stage, n_wg]  # [tm]
            plgpu.barrier_arrive(consumed.at[stage])
            return step + 1, acc + part * scale[:, None]

          step, acc = lax.fori_loop(0, k_iters, k_step,
                                    (carry, jnp.zeros((tm, tn), jnp.float32)))
          epilogue(acc)
          return step

        if scaling == "rowcol":  # scales land while the main loop runs
          plgpu.copy_gmem_to_smem(sa_gmem.at[pl.ds(row0, tm)], sa_smem.at[wg],
                                  s_barrier.at[wg])
          plgpu.copy_gmem_to_smem(sb_gmem.at[grp, pl.ds(col0, tn)], sb_smem.at[wg],
                                  s_barrier.at[wg])

        def accumulate(acc_ref):
          # Each step's wgmma overlaps the wait for the next stage; a stage is released
          # once the wgmma after it is issued (the one reading it has completed).
          def k_step(kk, step):
            stage = lax.rem(step, stages)
            plgpu.barrier_wait(produced.at[stage])
            wgmma(acc_ref, stage)
            plgpu.wgmma_wait(1)

            @pl.when(kk > 0)
            def _():
              plgpu.barrier_arrive(consumed.at[lax.rem(step - 1, stages)])
            return step + 1

          step = lax.fori_loop(0, k_iters, k_step, carry)
          acc = acc_ref[...]  # waits for the last wgmma
          plgpu.barrier_arrive(consumed.at[lax.rem(step - 1, stages)])
          epilogue(acc)
          return step

        return pl.run_scoped(accumulate, plgpu.ACC((tm, tn), acc_dtype))

      plgpu.wait_smem_to_gmem(0)  # the last stores complete before the kernel exits

    lax.cond(wg == wgs, memory, compute)


@functools.partial(jax.jit, static_argnames=("out_dtype", "cfg", "scaling"))
def gemm(a: jax.Array, b: jax.Array, a_scale: jax.Array | None = None,
         b_scale: jax.Array | None = None, schedule: jax.Array | None = None, *,
         out_dtype, cfg: Config, scaling: str = "none") -> jax.Array:
  """out[m, n] = sum_k a[m, k] b[g(m), n, k], scaled as `scaling` says.

  Jitted on its own: however many call sites a program has, each distinct (shapes,
  dtypes, Config, scaling) kernel is traced and lowered once per process (the lowering
  of a Mosaic GPU kernel costs about a second), and XLA inlines the one lowered body at
  every site.

  a [M, K] and b [G, N, K] in one dtype (fp8 e4m3, int8 or 16-bit); M a multiple of
  cfg.cta_m, N of cfg.cta_n, K of cfg.tile_k. a_scale / b_scale: "rowcol" [M] and [1, N]
  dense, [M] and [G + 1, N] ragged (group G all zero, for the tail rows); "block"
  [K / 128, M] and [G + 1, K / 128, N]. int8 accumulates in int32 (exact), scaled in FP32:
  "rowcol" only.
  schedule: tile_schedule(...) for a ragged product (rows sorted by group); None: dense,
  group 0 only. cfg.k_splits > 1 (dense, K / tile_k a multiple of it): each split
  writes its FP32 partial product, summed here (few-row products, whose tiles alone
  would leave most SMs idle); int8 splits write their unscaled sums, exact in FP32 when
  a split's K is at most INT8_SPLIT_K, summed in int32 and then scaled, so a split
  product stays exact. -> [M, N] out_dtype.
  """
  m, k = a.shape
  g, n, k2 = b.shape
  assert k == k2 and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
  assert m % cfg.cta_m == 0 and n % cfg.cta_n == 0 and k % cfg.tile_k == 0, (m, n, k, cfg)
  if scaling == "block" and (cfg.tile_m != 64 or 128 % cfg.tile_n):
    raise ValueError(f"block scaling needs tile_m == 64 (a partial and a full FP32 "
                     f"accumulator fit the registers) and a tile_n within one 128-wide "
                     f"weight block: {cfg}")
  integer = jnp.issubdtype(a.dtype, jnp.integer)
  if integer and scaling != "rowcol":
    raise ValueError(f"int8 operands need rowcol scaling (per-token x per-channel), not "
                     f"{scaling!r}")
  if integer and cfg.k_splits > 1 and k // cfg.k_splits > INT8_SPLIT_K:
    raise ValueError(f"an int8 split of K = {k // cfg.k_splits} (K = {k} in "
                     f"{cfg.k_splits}) could sum past 2^24, where FP32 partials stop being "
                     f"exact: at most {INT8_SPLIT_K} a split")
  if cfg.compute_wgs not in (2, 3):
    raise ValueError(f"compute_wgs={cfg.compute_wgs}: 2 or 3 (one would take more "
                     f"registers than setmaxnreg's 256, four get 112 a thread)")
  ragged = schedule is not None
  epi_bytes = _epilogue_cols(cfg, out_dtype) * jnp.dtype(out_dtype).itemsize
  if ragged and epi_bytes % 128:  # ragged stores start at any row of the buffer
    raise ValueError(f"a ragged product stores rows of epilogue tiles by TMA, which needs "
                     f"128-byte aligned rows: epi_tile_n={cfg.epi_tile_n} gives "
                     f"{epi_bytes}-byte rows of {jnp.dtype(out_dtype).name}")
  splits = cfg.k_splits
  assert splits == 1 or not ragged and scaling != "block", (cfg, scaling)
  assert (k // cfg.tile_k) % splits == 0, (k, cfg)
  m_tiles = schedule.shape[1] if ragged else m // cfg.cta_m
  n_tiles = n // cfg.cta_n
  kernel = plgpu.kernel(
      functools.partial(_kernel, cfg=cfg, scaling=scaling, ragged=ragged, num_groups=g,
                        m_tiles=m_tiles, n_tiles=n_tiles,
                        k_iters=k // cfg.tile_k // splits, num_rows=m),
      out_type=jax.ShapeDtypeStruct((splits * m, n),
                                    out_dtype if splits == 1 else jnp.float32),
      grid=(min(backend.num_sms(), m_tiles * n_tiles * splits),),
      grid_names=("sm",),
      num_threads=cfg.compute_wgs + 1,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
  )
  args = [a, b]
  if ragged:  # the used row tiles come first in the schedule; the kernel walks only them
    args = [schedule, jnp.sum(schedule[3] > schedule[2], dtype=jnp.int32)[None]] + args
  if scaling != "none":  # int8 splits: unit scales, the sums leave the kernel exact
    exact_splits = integer and splits > 1
    args += ([jnp.ones_like(a_scale), jnp.ones_like(b_scale)] if exact_splits
             else [a_scale, b_scale])
  out = kernel(*args)
  if splits == 1:
    return out
  parts = out.reshape(splits, m, n)  # [S, M, N] f32
  if integer:  # summed exactly, then scaled as the reference scales
    acc = parts.astype(jnp.int32).sum(0).astype(jnp.float32)
    return (acc * a_scale[:, None] * b_scale[0][None, :]).astype(out_dtype)
  return parts.sum(0).astype(out_dtype)


def rowcol_linear(x_q: jax.Array, x_scale: jax.Array, w_q: jax.Array, w_scale: jax.Array,
                  *, out_dtype, cfg: Config) -> jax.Array:
  """y = x_scale[m] * w_scale[n] * (x_q @ w_q.T): x_q [M, K], w_q [N, K] (FP8 or int8),
  x_scale [M], w_scale [N] -> [M, N]; M, N, K zero-padded to the tiles (no copy at the
  model's shapes, multiples of 128 in N and K) and the padding sliced off."""
  m, k = x_q.shape
  n = w_q.shape[0]
  mp, np_, kp = round_up(m, cfg.cta_m), round_up(n, cfg.cta_n), round_up(k, cfg.tile_k)
  y = gemm(pad_to(x_q, (mp, kp)), pad_to(w_q, (np_, kp))[None],
           pad_to(x_scale.astype(jnp.float32), (mp,)),
           pad_to(w_scale.astype(jnp.float32), (np_,))[None],
           out_dtype=out_dtype, cfg=cfg, scaling="rowcol")
  return y if (mp, np_) == (m, n) else y[:m, :n]
