"""Benchmarks quantize_activations, the fused FP8 activation quantization, on one GPU.

At the moe-4b MoE layer's passes (16384 tokens, top-3): the Triton kernel against the
XLA reference (the same producer and quantization, fused by XLA) in the same run, and
against the HBM time of the bytes the pass must move (its source read once, FP8 values
and FP32 scales written) at the device's HBM rate. --configs also times the kernel at
each tuning Config (rows a program x warps) beside its default_config. CUPTI device
time, median of calls, rotating random inputs larger than L2. Prints a table last;
writes JSON (--out) with a top-level "summary".

  PYTHONPATH=<dir holding onerec_kernels> python scripts/bench_quantize.py --out r.json
"""

import argparse
import itertools
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import device_ms, header, num_sets, parse_args, write_json  # noqa: E402

from onerec_kernels import backend  # noqa: E402
from onerec_kernels.quantize import (RMSNormOf, RowsOf, SwiGLUOf,  # noqa: E402
                                     quantize_activations)

HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}  # by device kind, SXM parts
TOKENS, TOP_K, D, F = 16384, 3, 1408, 1408

# name -> (producer, source rows, source columns, gathered rows or None, 1x128 blocks)
CASES = {
    "plain_per_token": ("plain", TOKENS, D, None, False),  # the o-projections' input
    "rmsnorm_per_token": ("rmsnorm", TOKENS, D, None, False),
    "gather_1x128": ("plain", TOKENS, D, TOKENS * TOP_K, True),  # routed gate/up input
    "swiglu_1x128": ("swiglu", TOKENS * TOP_K, 2 * F, None, True),  # routed down input
    "swiglu_per_token": ("swiglu", TOKENS, 2 * F, None, False),  # shared down input
}
MODES = {"plain": 0, "rmsnorm": 1, "swiglu": 2}


def producer(kind, x, w, rows):
  src = RMSNormOf(x, w) if kind == "rmsnorm" else SwiGLUOf(x) if kind == "swiglu" else x
  return src if rows is None else RowsOf(src, rows)


def width(kind, c):
  """Columns of the quantized output of a source c wide (SwiGLU halves [gate; up])."""
  return c // 2 if kind == "swiglu" else c


def min_bytes(kind, r0, c, rows, per_block):
  """Bytes the pass must move: each source element read once (bf16), FP8 out, scales."""
  out_rows = r0 if rows is None else rows
  k = width(kind, c)
  scales = out_rows * (-(-k // 128) if per_block else 1) * 4
  return r0 * c * 2 + out_rows * k + scales


def _kernel_at(config, kind, x, w, rows, block):
  """The Triton kernel (triton_gpu.quantize) at one tuning Config."""
  from onerec_kernels.quantize import triton_gpu
  return triton_gpu.quantize(x, w if kind == "rmsnorm" else None, rows,
                             k=width(kind, x.shape[1]), mode=MODES[kind], eps=1e-6,
                             per_block=block is not None, config=config)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="bench/results/quantize.json")
  ap.add_argument("--configs", action="store_true",
                  help="also every Config of rows 1, 2, 4, 8 a program x 4, 8 warps")
  ap.add_argument("--tokens", type=int, default=TOKENS)
  args = parse_args(ap, ("--tokens", "256"))
  if not backend.triton_available():
    raise SystemExit("the Triton kernel needs jax_triton (the `triton` extra)")
  from onerec_kernels.quantize import triton_gpu
  kind_of = jax.devices()[0].device_kind
  hbm = next((v for name, v in HBM_BYTES_PER_S.items() if name in kind_of), 3.35e12)
  key = jax.random.key(0)
  rows = []
  for name, (kind, r0, c, gathered, per_block) in CASES.items():
    r0 = r0 * args.tokens // TOKENS
    gathered = gathered and gathered * args.tokens // TOKENS
    ns = num_sets(r0 * c * 2)
    key, kx, kw, kr = jax.random.split(key, 4)
    xs = [jax.random.normal(k, (r0, c), jnp.bfloat16) for k in jax.random.split(kx, ns)]
    w = jax.random.uniform(kw, (c,), jnp.float32, 0.5, 1.5).astype(jnp.bfloat16)
    idx = None if gathered is None else jax.random.randint(kr, (gathered,), 0, r0)
    block = 128 if per_block else None
    t = {impl: device_ms(
        lambda x, impl=impl: quantize_activations(producer(kind, x, w, idx), block=block,
                                                  impl=impl), [(x,) for x in xs])
         for impl in ("triton", "reference")}
    hbm_ms = min_bytes(kind, r0, c, gathered, per_block) / hbm * 1e3
    row = dict(case=name, producer=kind, source_shape=[r0, c], gathered_rows=gathered,
               block=block, times_ms=t, hbm_floor_ms=hbm_ms,
               default_config=vars(triton_gpu.default_config(width(kind, c))),
               triton_vs_xla=t["reference"] / t["triton"],
               triton_over_hbm_floor=t["triton"] / hbm_ms)
    if args.configs:
      row["configs"] = [
          dict(rows=n, num_warps=warps, ms=device_ms(
              lambda x, cfg=triton_gpu.Config(n, warps): _kernel_at(cfg, kind, x, w, idx,
                                                                      block),
              [(x,) for x in xs]))
          for n, warps in itertools.product((1, 2, 4, 8), (4, 8))]
      best = min(row["configs"], key=lambda c: c["ms"])
      row["best_config"] = best
      row["default_over_best"] = t["triton"] / best["ms"]
    rows.append(row)
    print(rows[-1], flush=True)
  summary = {"device": kind_of, "tokens": args.tokens, "hbm_bytes_per_s": hbm,
             "triton_over_hbm_floor": {r["case"]: r["triton_over_hbm_floor"] for r in rows},
             "triton_vs_xla": {r["case"]: r["triton_vs_xla"] for r in rows},
             "triton_ms_total": sum(r["times_ms"]["triton"] for r in rows),
             "hbm_floor_ms_total": sum(r["hbm_floor_ms"] for r in rows)}
  if args.configs:
    summary["default_over_best"] = {r["case"]: r["default_over_best"] for r in rows}
  write_json(args.out, dict(header("CUPTI device time, median of 30 calls"),
                            summary=summary, rows=rows))
  print(f"\n{'case':20} {'triton us':>10} {'xla us':>8} {'floor us':>9} {'x xla':>6} "
        f"{'/floor':>6} {'best cfg':>9}")
  for r in rows:
    t = r["times_ms"]
    best = r.get("best_config") or {}
    cfg = f"{best['rows']}x{best['num_warps']}" if best else ""
    print(f"{r['case']:20} {t['triton']*1e3:10.1f} {t['reference']*1e3:8.1f} "
          f"{r['hbm_floor_ms']*1e3:9.1f} {r['triton_vs_xla']:6.2f} "
          f"{r['triton_over_hbm_floor']:6.2f} {cfg:>9}")
  print("summary:", summary)


if __name__ == "__main__":
  sys.exit(main())
