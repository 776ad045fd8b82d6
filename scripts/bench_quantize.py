"""Benchmarks quantize_activations, the fused FP8 activation quantization, on one GPU.

At the moe-4b MoE layer's passes (16384 tokens, top-3): the Triton kernel against the
XLA reference (the same producer and quantization, fused by XLA) in the same run, and
against the HBM time of the bytes the pass must move (its source read once, FP8 values
and FP32 scales written) at 3.35 TB/s. CUPTI device time, median of calls, rotating
random inputs larger than L2. Prints a table last; writes JSON (--out).

  PYTHONPATH=<dir holding onerec_kernels> python scripts/bench_quantize.py --out r.json
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import device_ms, header, num_sets, write_json  # noqa: E402

from onerec_kernels import backend  # noqa: E402
from onerec_kernels.quantize import (RMSNormOf, RowsOf, SwiGLUOf,  # noqa: E402
                                     quantize_activations)

HBM_BYTES_PER_S = 3.35e12  # H100 SXM
TOKENS, TOP_K, D, F = 16384, 3, 1408, 1408

# name -> (producer, source rows, source columns, gathered rows or None, 1x128 blocks)
CASES = {
    "plain_per_token": ("plain", TOKENS, D, None, False),  # the shared expert's input
    "rmsnorm_per_token": ("rmsnorm", TOKENS, D, None, False),
    "gather_1x128": ("plain", TOKENS, D, TOKENS * TOP_K, True),  # routed gate/up input
    "swiglu_1x128": ("swiglu", TOKENS * TOP_K, 2 * F, None, True),  # routed down input
    "swiglu_per_token": ("swiglu", TOKENS, 2 * F, None, False),  # shared down input
}


def producer(kind, x, w, rows):
  src = RMSNormOf(x, w) if kind == "rmsnorm" else SwiGLUOf(x) if kind == "swiglu" else x
  return src if rows is None else RowsOf(src, rows)


def min_bytes(kind, r0, c, rows, per_block):
  """Bytes the pass must move: each source element read once (bf16), FP8 out, scales."""
  out_rows = r0 if rows is None else rows
  k = c // 2 if kind == "swiglu" else c
  scales = out_rows * (-(-k // 128) if per_block else 1) * 4
  return r0 * c * 2 + out_rows * k + scales


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="bench/results/quantize.json")
  args = ap.parse_args()
  if not backend.triton_available():
    raise SystemExit("the Triton kernel needs jax_triton (the `triton` extra)")
  key = jax.random.key(0)
  rows = []
  for name, (kind, r0, c, gathered, per_block) in CASES.items():
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
    hbm_ms = min_bytes(kind, r0, c, gathered, per_block) / HBM_BYTES_PER_S * 1e3
    rows.append(dict(case=name, producer=kind, source_shape=[r0, c], gathered_rows=gathered,
                     block=block, times_ms=t, hbm_floor_ms=hbm_ms,
                     triton_vs_xla=t["reference"] / t["triton"],
                     triton_over_hbm_floor=t["triton"] / hbm_ms))
    print(rows[-1], flush=True)
  write_json(args.out, dict(header("CUPTI device time, median of 30 calls"), rows=rows))
  print(f"\n{'case':20} {'triton us':>10} {'xla us':>8} {'floor us':>9} {'x xla':>6} "
        f"{'/floor':>6}")
  for r in rows:
    t = r["times_ms"]
    print(f"{r['case']:20} {t['triton']*1e3:10.1f} {t['reference']*1e3:8.1f} "
          f"{r['hbm_floor_ms']*1e3:9.1f} {r['triton_vs_xla']:6.2f} "
          f"{r['triton_over_hbm_floor']:6.2f}")


if __name__ == "__main__":
  sys.exit(main())
