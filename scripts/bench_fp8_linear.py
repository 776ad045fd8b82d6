"""Benchmarks the Pallas FP8 linear against XLA bf16 / fp16 / fp8 on one GPU (issue 7).

Checks every shape against fp8_linear_reference (the bound derived in
onerec_kernels.gemm_mgpu.testing, poisoned output, no NaN),
then times, in one run: the kernel alone; XLA bf16, fp16 and fp8 dot; end to end, as
issue 7 defines it, RMSNorm + quantize + FP8 GEMM against RMSNorm + bf16 GEMM for every
shape ("e2e"), and with each Linear's producer in the model ("site": RMSNorm for qkv,
cross q and FFN gate_up, the attention output as is for o and cross o, SwiGLU of the
gate_up output for FFN down). The quantization is quantize_activations (the fused Triton
pass); "_xla_quant" variants quantize with the XLA reference instead. Kernel times come
from CUPTI (device time of every kernel a call launches), median over many calls, over
rotating input sets larger than L2. Prints a table last; writes JSON (--out).

  PYTHONPATH=<dir holding onerec_kernels> python scripts/bench_fp8_linear.py --out r.json
"""

import argparse
import dataclasses
import json
import sys

import jax
import jax.numpy as jnp

from bench_common import device_ms, header, num_sets, write_json
from onerec_kernels import backend
from onerec_kernels.fp8_linear import fp8_linear
from onerec_kernels.fp8_linear.pallas import default_config, fp8_linear_pallas
from onerec_kernels.fp8_linear.reference import fp8_linear_reference
from onerec_kernels.gemm_mgpu import core, testing
from onerec_kernels.quantize import (RMSNormOf, SwiGLUOf, quantize_activations,
                                     quantize_rows)

EPS = 1e-6

# name -> (K, N): moe-4b Linear shapes (d_model 1408) and the 1B preset's (d_model 1792).
SHAPES = {
    "moe4b.qkv": (1408, 4224), "moe4b.o": (1408, 1408), "moe4b.cross_q": (1408, 1408),
    "moe4b.cross_o": (1408, 1408), "moe4b.ffn_gate_up": (1408, 11264),
    "moe4b.ffn_down": (5632, 1408),
    "1b.qkv": (1792, 5376), "1b.o": (1792, 1792), "1b.ffn_gate_up": (1792, 14336),
    "1b.ffn_down": (7168, 1792),
    # Qwen3-1.7B (docs/qwen3.md): its decode steps run 256 rows (beam 256) a request.
    "qwen3.qkv": (2048, 4096), "qwen3.o": (2048, 2048), "qwen3.ffn_gate_up": (2048, 12288),
    "qwen3.ffn_down": (6144, 2048),
}
# Each Linear of one moe-4b decoder layer (a dense FFN layer).
MOE4B_LAYER = ["moe4b.qkv", "moe4b.o", "moe4b.cross_q", "moe4b.cross_o",
               "moe4b.ffn_gate_up", "moe4b.ffn_down"]
# The producer of each Linear's input in the model (the "site" end to end).
PRODUCER = {"qkv": "rmsnorm", "o": "plain", "cross_q": "rmsnorm", "cross_o": "plain",
            "ffn_gate_up": "rmsnorm", "ffn_down": "swiglu"}


def rmsnorm(x, g):
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + EPS)
  return (y * g).astype(x.dtype)


def swiglu(h):
  gate, up = jnp.split(h, 2, axis=-1)
  return jax.nn.silu(gate) * up


def producer_of(kind, x, g):
  """(the 16-bit activation, its producer for quantize_activations) of a site's input:
  x [M, K] for rmsnorm and plain, [M, 2K] for swiglu."""
  if kind == "rmsnorm":
    return rmsnorm(x, g), RMSNormOf(x, g, EPS)
  if kind == "swiglu":
    return swiglu(x), SwiGLUOf(x)
  return x, x


def check(m, k, n, key, cfg=None):
  """Kernel vs reference at one shape; returns (max err / bound, relative Frobenius err)."""
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, (m, k), jnp.float32) * 3.0
  x = x.at[m // 2].set(0.0).at[0, :8].set(1000.0)  # a zero row, values beyond 448
  w = jax.random.normal(kw, (n, k), jnp.float32) * 0.05
  x_q, x_s = quantize_rows(x)
  w_q, w_s = quantize_rows(w)
  f = jax.jit(lambda a, b, c, d: fp8_linear_pallas(a, b, c, d, out_dtype=jnp.float32,
                                                   config=cfg))
  out = testing.poisoned_call(lambda: f(x_q, x_s, w_q, w_s), (m, n), jnp.float32)
  ref = fp8_linear_reference(x_q, x_s, w_q, w_s, out_dtype=jnp.float32)
  ratio, rel = testing.assert_within(out, ref,
                                     testing.fp8_linear_error_bound(x_q, x_s, w_q, w_s),
                                     testing.fp8_linear_rel_tol(k))
  out_bf16 = testing.poisoned_call(
      lambda: jax.jit(fp8_linear_pallas)(x_q, x_s, w_q, w_s), (m, n), jnp.bfloat16)
  assert bool(jnp.all(jnp.isfinite(out_bf16.astype(jnp.float32))))
  return ratio, rel


_SHARED = {}  # (m, k, n) -> the times that do not depend on the site


def bench_shape(name, m, k, n, configs, gemm_only=False):
  """Same-run times (ms) of every variant at one shape; shapes of equal (m, k, n) share
  their GEMM and RMSNorm timings, measured once on the same inputs. gemm_only: the GEMMs
  alone (ours and XLA's), not the producers and quantization around them."""
  key = jax.random.key(m * 1_000_003 + k * 1009 + n)
  set_bytes = m * k * 2 + n * k * 2
  ns = num_sets(set_bytes)
  keys = jax.random.split(key, 2 * ns)
  xs = [jax.random.normal(keys[i], (m, k), jnp.bfloat16) for i in range(ns)]
  ws = [(jax.random.normal(keys[ns + i], (n, k), jnp.float32) * 0.05) for i in range(ns)]
  gs = [jax.random.uniform(keys[0], (k,), jnp.float32, 0.5, 2.0)] * ns
  wq = [quantize_rows(w) for w in ws]
  xq = [quantize_rows(x) for x in xs]
  wb = [w.astype(jnp.bfloat16) for w in ws]
  wh = [w.astype(jnp.float16) for w in ws]
  xh = [x.astype(jnp.float16) for x in xs]
  dims = (((1,), (1,)), ((), ()))
  dot = lambda a, w: jax.lax.dot_general(a, w, dims)

  def e2e(kind, impl, fp8=True):
    """One site end to end: producer, then (quantize +) GEMM."""
    if not fp8:
      return lambda x, g, w: dot(producer_of(kind, x, g)[0], w)

    def f(x, g, w_q, w_s):  # the model's entry point, its quantize pass pinned to impl
      with backend.use("auto" if impl is None else f"auto,quantize_activations={impl}"):
        return fp8_linear(producer_of(kind, x, g)[1], w_q, w_s, out_dtype=jnp.bfloat16,
                          impl="mosaic")
    return f

  def times_of(label, kind, inputs):
    sets = [(x, g, b[0], b[1]) for x, g, b in zip(inputs, gs, wq)]
    return {f"{label}_bf16": device_ms(e2e(kind, None, False), list(zip(inputs, gs, wb))),
            f"{label}_fp8": device_ms(e2e(kind, None), sets),
            f"{label}_fp8_xla_quant": device_ms(e2e(kind, "reference"), sets)}

  site = PRODUCER[name.split(".", 1)[1]]
  if (m, k, n) not in _SHARED:  # the GEMMs alone, RMSNorm end to end, the norm passes
    t = {}
    t["xla_bf16"] = device_ms(dot, list(zip(xs, wb)))
    t["xla_fp16"] = device_ms(dot, list(zip(xh, wh)))
    t["xla_fp8"] = device_ms(
        lambda x, w: jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.bfloat16),
        [(a[0], b[0]) for a, b in zip(xq, wq)])
    for label, cfg in configs.items():
      t[label] = device_ms(lambda a, b, c, d: fp8_linear_pallas(a, b, c, d, config=cfg),
                           [(a[0], a[1], b[0], b[1]) for a, b in zip(xq, wq)])
    if gemm_only:
      return t
    t.update(times_of("e2e", "rmsnorm", xs))
    t["rmsnorm_quant"] = device_ms(lambda x, g: quantize_activations(RMSNormOf(x, g, EPS)),
                                   list(zip(xs, gs)))
    t["rmsnorm_quant_xla"] = device_ms(
        lambda x, g: quantize_activations(RMSNormOf(x, g, EPS), impl="reference"),
        list(zip(xs, gs)))
    t["rmsnorm_bf16"] = device_ms(rmsnorm, list(zip(xs, gs)))
    _SHARED[m, k, n] = t
  t = dict(_SHARED[m, k, n])
  if site == "rmsnorm":
    t.update({c.replace("e2e", "site"): v for c, v in t.items() if c.startswith("e2e")})
  else:
    xs2 = [jnp.concatenate([x, x * 0.5 + 1], -1) for x in xs] if site == "swiglu" else xs
    t.update(times_of("site", site, xs2))
  return t


def candidate_configs(m, n, k):
  """The heuristic default plus alternatives timed in the same run."""
  cands = {"pallas_fp8": default_config(m, n, k)}
  if 64 < m <= 2048:  # few row tiles: narrower or K-split CTAs fill more of the SMs
    cands["alt_64x64_n"] = core.Config(tile_m=64, tile_n=64, wg_dimension="n",
                                       max_concurrent_steps=4)
    cands["alt_64x128_m"] = core.Config(tile_m=64, tile_n=128, wg_dimension="m",
                                        max_concurrent_steps=4)
    for splits in (2, 4):
      if -(-k // 128) % splits == 0:
        cands[f"alt_k_split{splits}"] = dataclasses.replace(cands["pallas_fp8"],
                                                            k_splits=splits)
  if m > 64 and n % 256 == 0:
    cands["alt_128x128_n"] = core.Config(tile_m=128, tile_n=128, wg_dimension="n",
                                         max_concurrent_steps=3)
    cands["alt_64x256_m"] = core.Config(tile_m=64, tile_n=256, wg_dimension="m",
                                        max_concurrent_steps=3, epi_tile_n=32)
  elif m <= 64:
    if cands["pallas_fp8"].k_splits > 1:
      cands["alt_no_k_split"] = dataclasses.replace(cands["pallas_fp8"], k_splits=1)
    cands["alt_64x32_n"] = core.Config(tile_m=64, tile_n=32, wg_dimension="n",
                                       max_concurrent_steps=6, epi_tile_n=32)
    cands["alt_64x128_n"] = core.Config(tile_m=64, tile_n=128, wg_dimension="n",
                                        max_concurrent_steps=4)
  default = cands["pallas_fp8"]
  return {label: cfg for label, cfg in cands.items()
          if label == "pallas_fp8" or cfg != default}


def _result(checks, rows, summary):
  return dict(header("CUPTI device time, median of 30 calls"), checks=checks, rows=rows,
              summary=summary)


def summarize(rows: list[dict]) -> dict:
  """The headline figures: at M >= 1024 our kernel against XLA's per-tensor FP8 dot (the
  machine's practical FP8 rate) per moe-4b layer shape, its minimum and the fastest
  config's; per M where every Linear of a moe-4b layer ran, the layer's totals."""
  summary = {}
  small = [r for r in rows if r["m"] < 1024]
  if small:  # few rows: the default tiling against the fastest one timed
    summary["small_m_default_vs_best"] = {
        f"{r['shape']}@{r['m']}": {"best_config": r["best_config"],
                                   "default_over_best": r["best_vs_xla_fp8"] / r["vs_xla_fp8"],
                                   "default_vs_xla_fp8": r["vs_xla_fp8"]} for r in small}
  big = [r for r in rows if r["m"] >= 1024 and r["shape"] in MOE4B_LAYER]
  if big:
    summary["linear_vs_xla_fp8"] = {r["shape"]: r["vs_xla_fp8"] for r in big}
    summary["linear_vs_xla_fp8_min"] = min(r["vs_xla_fp8"] for r in big)
    summary["best_config_vs_xla_fp8_min"] = min(r["best_vs_xla_fp8"] for r in big)
  for m in sorted({r["m"] for r in rows}):
    layer = [r for s in MOE4B_LAYER for r in rows
             if r["shape"] == s and r["m"] == m and "e2e_speedup" in r]
    if len(layer) == len(MOE4B_LAYER):
      total = lambda c: sum(r["times_ms"][c] for r in layer)
      s = {f"{c}_ms": total(c) for c in ("e2e_bf16", "e2e_fp8", "site_bf16", "site_fp8",
                                         "xla_bf16", "pallas_fp8")}
      s["e2e_speedup"] = s["e2e_bf16_ms"] / s["e2e_fp8_ms"]
      s["site_speedup"] = s["site_bf16_ms"] / s["site_fp8_ms"]
      s["gemm_speedup"] = s["xla_bf16_ms"] / s["pallas_fp8_ms"]
      s["min_shape_e2e_speedup"] = min(r["e2e_speedup"] for r in layer)
      summary[f"moe4b_layer_m{m}"] = s
  return summary


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="bench/results/fp8_linear.json")
  ap.add_argument("--ms", default="16384,32")
  ap.add_argument("--shapes", default=",".join(SHAPES))
  ap.add_argument("--gemm-only", action="store_true",
                  help="time the GEMMs alone (ours and XLA's), not the producers and "
                       "quantization around them")
  args = ap.parse_args()
  key = jax.random.key(0)
  rows, checks = [], []
  for m in [int(v) for v in args.ms.split(",")]:
    for name in args.shapes.split(","):
      k, n = SHAPES[name]
      key, kc = jax.random.split(key)
      ratio, rel = check(m, k, n, kc)
      checks.append(dict(shape=name, m=m, k=k, n=n, err_over_bound=ratio, rel_err=rel))
      t = bench_shape(name, m, k, n, candidate_configs(m, n, k), args.gemm_only)
      flops = 2 * m * n * k
      best = min((v, c) for c, v in t.items() if c.startswith(("pallas", "alt")))
      rows.append(dict(shape=name, m=m, k=k, n=n, times_ms=t,
                       tflops={c: flops / v / 1e9 for c, v in t.items()},
                       speedup_vs_bf16=t["xla_bf16"] / t["pallas_fp8"],
                       vs_xla_fp8=t["xla_fp8"] / t["pallas_fp8"],
                       best_vs_xla_fp8=t["xla_fp8"] / best[0],
                       best_config=best[1], best_speedup_vs_bf16=t["xla_bf16"] / best[0]))
      if not args.gemm_only:
        rows[-1].update(e2e_speedup=t["e2e_bf16"] / t["e2e_fp8"],
                        site_speedup=t["site_bf16"] / t["site_fp8"])
      print(json.dumps(rows[-1]), flush=True)
      write_json(args.out, _result(checks, rows, summarize(rows)))  # if cut off later
  summary = summarize(rows)
  write_json(args.out, _result(checks, rows, summary))
  print(f"\n{'shape':18} {'M':>6} {'bf16':>8} {'fp16':>8} {'xla8':>8} {'ours':>8} "
        f"{'x bf16':>7} {'best':>7} {'x xla8':>6} {'best cfg':>22} {'e2e bf16':>9} "
        f"{'e2e fp8':>8} {'e2e x':>6} {'site x':>6}")
  nan = float("nan")
  for r in rows:
    t = r["times_ms"]
    print(f"{r['shape']:18} {r['m']:6} {t['xla_bf16']*1e3:8.1f} {t['xla_fp16']*1e3:8.1f} "
          f"{t['xla_fp8']*1e3:8.1f} {t['pallas_fp8']*1e3:8.1f} "
          f"{r['speedup_vs_bf16']:7.2f} {r['best_speedup_vs_bf16']:7.2f} "
          f"{r['vs_xla_fp8']:6.2f} {r['best_config']:>22} "
          f"{t.get('e2e_bf16', nan)*1e3:9.1f} {t.get('e2e_fp8', nan)*1e3:8.1f} "
          f"{r.get('e2e_speedup', nan):6.2f} {r.get('site_speedup', nan):6.2f}")
  print("times in us;", json.dumps(summary))


if __name__ == "__main__":
  sys.exit(main())
