"""Benchmarks the Pallas grouped GEMM (bf16, and FP8 with block scales) on one GPU.

Checks each shape against the reference (the bound derived in
onerec_kernels.gemm_mgpu.testing, poisoned output, no NaN), then
times in one run: our FP8 and bf16 kernels, jax.lax.ragged_dot bf16, jax's upstream
Pallas ragged_dot_mgpu bf16, a dense cuBLAS bf16 matmul of equal FLOPs and XLA's fp8 dot
of equal FLOPs. CUPTI device time, median over many calls, rotating input sets larger
than L2. Prints a table last; writes JSON (--out).

  PYTHONPATH=<dir holding onerec_kernels> python scripts/bench_grouped_gemm.py --out r.json
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import device_ms, header, moe_block, num_sets, write_json  # noqa: E402

from onerec_kernels import backend  # noqa: E402
from onerec_kernels.gemm_mgpu import core, testing  # noqa: E402
from onerec_kernels.grouped_gemm.pallas import (  # noqa: E402
    default_config,
    fp8_grouped_gemm_pallas,
    grouped_gemm_pallas,
)
from onerec_kernels.grouped_gemm.reference import fp8_grouped_gemm_reference  # noqa: E402
from onerec_kernels.quantize import quantize_blocks  # noqa: E402
from onerec_jax import quant  # noqa: E402
from onerec_jax.config import preset  # noqa: E402
from onerec_jax.model import default_rules  # noqa: E402

# name -> (tokens, top_k, experts, K, N, routing)
SHAPES = {
    "moe4b.gate_up.uniform": (16384, 3, 53, 1408, 2816, "uniform"),
    "moe4b.down.uniform": (16384, 3, 53, 1408, 1408, "uniform"),
    "moe4b.gate_up.zipf": (16384, 3, 53, 1408, 2816, "zipf"),
    "moe4b.down.zipf": (16384, 3, 53, 1408, 1408, "zipf"),
    "moe4b.gate_up.t32": (32, 3, 53, 1408, 2816, "uniform"),
    "moe4b.down.t32": (32, 3, 53, 1408, 1408, "uniform"),
    "deepseek.8x4096": (32768, 1, 8, 7168, 4096, "even"),
}


def route(key, tokens, top_k, experts, kind):
  """Group sizes of tokens * top_k rows routed to distinct experts per token."""
  if kind == "even":
    return jnp.full((experts,), tokens * top_k // experts, jnp.int32)
  logits = jnp.zeros((experts,))
  if kind == "zipf":  # expert of rank r drawn with probability ~ 1 / r^1.2
    logits = -1.2 * jnp.log(jnp.arange(1, experts + 1, dtype=jnp.float32))
  gumbel = jax.random.gumbel(key, (tokens, experts))
  _, ids = jax.lax.top_k(logits + gumbel, top_k)
  return jnp.bincount(ids.reshape(-1), length=experts).astype(jnp.int32)


def check(m, k, n, gs, key):
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, (m, k), jnp.float32) * 3.0
  x = x.at[m // 3].set(0.0).at[1, :8].set(1000.0)
  w = jax.random.normal(kw, (gs.shape[0], n, k), jnp.float32) * 0.05
  x_q, x_s = quantize_blocks(x, 1, 128)
  w_q, w_s = quantize_blocks(w, 128, 128)
  f = jax.jit(functools.partial(fp8_grouped_gemm_pallas, out_dtype=jnp.float32))
  out = testing.poisoned_call(lambda: f(x_q, x_s, w_q, w_s, gs), (m, n), jnp.float32)
  ref = fp8_grouped_gemm_reference(x_q, x_s, w_q, w_s, gs, out_dtype=jnp.float32)
  ratio, rel = testing.assert_within(
      out, ref, testing.fp8_grouped_error_bound(x_q, x_s, w_q, w_s, gs),
      testing.FP8_GROUPED_REL_TOL)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  outb = testing.poisoned_call(lambda: jax.jit(grouped_gemm_pallas)(xb, wb, gs), (m, n),
                       jnp.bfloat16).astype(jnp.float32)
  refb = jax.lax.ragged_dot_general(
      xb, wb, gs, jax.lax.RaggedDotDimensionNumbers((((1,), (2,)), ((), ())), [0], [0]),
      preferred_element_type=jnp.float32)
  assert bool(jnp.all(jnp.isfinite(outb)))
  rel_b = float(jnp.linalg.norm(outb - refb) / jnp.linalg.norm(refb))
  assert rel_b < 1e-2, rel_b
  return ratio, rel, rel_b


def upstream(x, w_t, gs, block_m, block_n, steps):
  """jax's example kernel, bf16, K-major weights [E, N, K] (transpose_rhs)."""
  return ragged_dot_mgpu.ragged_dot(x, w_t, group_sizes=gs, block_m=block_m,
                                    block_n=block_n, block_k=64,
                                    max_concurrent_steps=steps, grid_block_n=1,
                                    transpose_rhs=True)


def bench_shape(m, k, n, gs, key, fp8_configs, ceilings_only=False):
  """Same-run device times (ms) at one shape; ceilings_only: our kernels and the two
  ceilings (dense cuBLAS bf16 and XLA's FP8 dot of equal FLOPs) only."""
  e = gs.shape[0]
  ns = num_sets(m * k * 2 + e * n * k * 2)
  keys = jax.random.split(key, 2 * ns)
  xs = [jax.random.normal(keys[i], (m, k), jnp.bfloat16) for i in range(ns)]
  ws = [jax.random.normal(keys[ns + i], (e, n, k), jnp.bfloat16) for i in range(ns)]
  xq = [quantize_blocks(x, 1, 128) for x in xs]
  wq = [quantize_blocks(w, 128, 128) for w in ws]
  t = {}
  for name, cfg in fp8_configs.items():
    t[name] = device_ms(
        lambda a, b, c, d, g: fp8_grouped_gemm_pallas(a, b, c, d, g, config=cfg),
        [(a[0], a[1], b[0], b[1], gs) for a, b in zip(xq, wq)])
  t["pallas_bf16"] = device_ms(grouped_gemm_pallas, [(x, w, gs) for x, w in zip(xs, ws)])
  ups = {}
  if ceilings_only:
    return {**t, **_ceilings(xs, ws, xq, k, n)}, ups
  if m >= 1024 and n % 256 == 0:  # the 16-bit default before the 128x256 CTA
    narrow = core.Config(tile_m=64, tile_n=128, tile_k=64, wg_dimension="m",
                         max_concurrent_steps=4)
    t["alt_bf16_128x128"] = device_ms(
        lambda x, w, g: grouped_gemm_pallas(x, w, g, config=narrow),
        [(x, w, gs) for x, w in zip(xs, ws)])
    three = dataclasses.replace(narrow, compute_wgs=3)  # the FP8 default's CTA shape
    t["alt_bf16_three_wgs"] = device_ms(
        lambda x, w, g: grouped_gemm_pallas(x, w, g, config=three),
        [(x, w, gs) for x, w in zip(xs, ws)])
  # jax.lax.ragged_dot wants [E, K, N]; it takes tens of ms at large M: few calls.
  big = m >= 1024
  t["lax_ragged_dot_bf16"] = device_ms(
      jax.lax.ragged_dot,
      [(x, w.transpose(0, 2, 1), gs) for x, w in zip(xs[:1] if big else xs, ws)],
      iterations=3 if big else 30)
  for bm, bn, st in [(128, 128, 4), (64, 128, 4)]:
    if n % bn == 0:
      try:
        ups[f"{bm}x{bn}s{st}"] = device_ms(
            functools.partial(upstream, block_m=bm, block_n=bn, steps=st),
            [(x, w, gs) for x, w in zip(xs, ws)])
      except Exception as err:  # noqa: BLE001 (a config the example rejects)
        print("upstream", bm, bn, st, "failed:", str(err)[:200])
  t["upstream_ragged_dot_mgpu_bf16"] = min(ups.values()) if ups else float("nan")
  return {**t, **_ceilings(xs, ws, xq, k, n)}, ups


def _ceilings(xs, ws, xq, k, n):
  """The machine's practical rates at equal FLOPs: dense cuBLAS bf16 and XLA's FP8 dot
  with per-tensor scales, [M, K] x [N, K]."""
  dims = (((1,), (1,)), ((), ()))
  wd = [w.reshape(-1, k)[:n] for w in ws]  # dense [N, K] operand of equal FLOPs
  wdq = [quantize_blocks(w, n, 128)[0] for w in wd]
  return {"dense_bf16": device_ms(lambda x, w: jax.lax.dot_general(x, w, dims),
                                  list(zip(xs, wd))),
          "dense_xla_fp8": device_ms(
              lambda x, w: jax.lax.dot_general(x, w, dims,
                                               preferred_element_type=jnp.bfloat16),
              [(a[0], b) for a, b in zip(xq, wdq)])}


def bench_moe_layer(key, tokens=16384, references=True):
  """The model's moe-4b MoE block (mlp_norm, router, 53 routed SwiGLU experts top-3, the
  shared expert) at `tokens` tokens, through onerec_jax.model's modules: FP8 under the
  default rules and bf16 on our kernels, and with `references` both on the references
  (jax.lax.ragged_dot and XLA; kernel mode "reference"), in the same run."""
  if not backend.triton_available():  # quantize_activations would fall back to XLA
    raise SystemExit("the FP8 layer needs jax_triton (the `triton` extra) for its fused "
                     "activation quantization: install it before timing the layer")
  cfg = preset("moe-4b").replace(param_dtype="bfloat16")
  model = moe_block(cfg, "layer_2", norm=True)
  kx, kp = jax.random.split(key)
  x = jax.random.normal(kx, (tokens, cfg.d_model), jnp.bfloat16)
  params = jax.jit(model.init)(kp, x)["params"]
  rules = quant.Rules(tuple(r for r in default_rules(cfg).rules if "experts" in r[0]))
  qparams = jax.jit(quant.quantize_params, static_argnums=1)(params, rules)

  def variant(p, rules, mode):
    def run(h):
      with backend.use(mode), (quant.fp8(rules) if rules else contextlib.nullcontext()):
        return model.apply({"params": p}, h)
    return run

  layers = {"fp8": variant(qparams, rules, "auto"), "bf16": variant(params, None, "auto")}
  if references:
    layers.update(fp8_reference=variant(qparams, rules, "reference"),
                  bf16_reference=variant(params, None, "reference"))
  t = {name: device_ms(fn, [(x,)], iterations=5 if "reference" in name else 20)
       for name, fn in layers.items()}
  return dict(tokens=tokens, experts=cfg.n_routed_experts, top_k=cfg.top_k,
              d_model=cfg.d_model, expert_d_ff=cfg.expert_d_ff, times_ms=t,
              fp8_vs_own_bf16=t["bf16"] / t["fp8"],
              fp8_vs_reference_bf16=t["bf16_reference"] / t["fp8"] if references else None)


def candidate_configs(m, n, k):
  base = default_config(m, n, k, fp8=True)
  cands = {"pallas_fp8": base}
  if m >= 1024:  # the previous default walked N fastest
    cands["alt_minor_n"] = dataclasses.replace(base, grid_minor_dim=1)
    # The other count of compute warpgroups (the default takes three at short K).
    cands["alt_compute_wgs"] = dataclasses.replace(base, compute_wgs=5 - base.compute_wgs)
  return cands


def summary(rows: list[dict], moe: dict | None) -> dict:
  """The headline figures: our FP8 grouped GEMM against XLA's per-tensor FP8 dot of equal
  FLOPs (the machine's practical FP8 rate) per shape, the fastest config timed, and the
  whole MoE layer against our bf16 layer."""
  by = {r["shape"]: r for r in rows}
  vs = {r["shape"]: r["fp8_vs_xla_fp8"] for r in rows}
  best = {r["shape"]: min((v, c) for c, v in r["times_ms"].items()
                          if c.startswith(("pallas_fp8", "alt_")) and "bf16" not in c)[1]
          for r in rows}
  return {"grouped_vs_xla_fp8": by.get("moe4b.gate_up.uniform", {}).get("fp8_vs_xla_fp8"),
          "down_vs_xla_fp8": by.get("moe4b.down.uniform", {}).get("fp8_vs_xla_fp8"),
          "fp8_vs_xla_fp8": vs, "fastest_config": best,
          "moe_layer_vs_bf16": moe["fp8_vs_own_bf16"] if moe else None}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="bench/results/grouped_gemm.json")
  ap.add_argument("--shapes", default=",".join(SHAPES))
  ap.add_argument("--moe", action="store_true", help="also time the whole MoE layer")
  ap.add_argument("--ceilings-only", action="store_true",
                  help="time our kernels and the dense bf16 / XLA FP8 ceilings only (not "
                       "jax.lax.ragged_dot, jax's example kernel or older tilings)")
  args = ap.parse_args()
  key = jax.random.key(0)
  rows, checks = [], []
  nan = float("nan")
  for name in filter(None, args.shapes.split(",")):
    tokens, top_k, e, k, n, kind = SHAPES[name]
    key, kr, kc, kb = jax.random.split(key, 4)
    gs = route(kr, tokens, top_k, e, kind)
    m = tokens * top_k
    # The reference materialises [M, N, K/128] scales: check big shapes on <= 512 rows
    # per group.
    gs_c = gs if m * n * (k // 128) < 2 ** 31 else jnp.minimum(gs, 512)
    ratio, rel, rel_b = check(int(gs_c.sum()), k, n, gs_c, kc)
    checks.append(dict(shape=name, err_over_bound=ratio, rel_err=rel, rel_err_bf16=rel_b))
    t, ups = bench_shape(m, k, n, gs, kb, candidate_configs(m, n, k), args.ceilings_only)
    flops = 2 * m * n * k
    touched = int(jnp.sum(gs > 0))
    weight_read_ms = touched * n * k / 3.0e12 * 1e3  # FP8 bytes at ~3 TB/s
    rows.append(dict(
        shape=name, rows=m, k=k, n=n, experts=e, experts_touched=touched,
        group_sizes=[int(v) for v in gs], times_ms=t, upstream_configs_ms=ups,
        tflops={c: flops / v / 1e9 for c, v in t.items()},
        fp8_vs_dense_bf16=t["dense_bf16"] / t["pallas_fp8"],
        fp8_vs_upstream=(t["upstream_ragged_dot_mgpu_bf16"] / t["pallas_fp8"]
                         if "upstream_ragged_dot_mgpu_bf16" in t else None),
        fp8_vs_own_bf16=t["pallas_bf16"] / t["pallas_fp8"],
        fp8_vs_xla_fp8=t["dense_xla_fp8"] / t["pallas_fp8"],
        fp8_over_weight_read=t["pallas_fp8"] / weight_read_ms))
    print(json.dumps(rows[-1]), flush=True)
    write_json(args.out, dict(header("CUPTI device time, median of calls"),  # if cut off
                              summary=summary(rows, None), checks=checks, rows=rows))
  moe = bench_moe_layer(key, references=not args.ceilings_only) if args.moe else None
  result = dict(header("CUPTI device time, median of calls"),
                summary=summary(rows, moe), checks=checks, rows=rows, moe_layer=moe)
  write_json(args.out, result)
  print(f"\n{'shape':24} {'fp8':>8} {'TF/s':>6} {'bf16':>8} {'lax':>9} {'upstr':>8} "
        f"{'dense16':>8} {'xla8':>8} {'xdense':>6} {'xupstr':>6} {'x/read':>6}")
  for r in rows:
    t = r["times_ms"]
    print(f"{r['shape']:24} {t['pallas_fp8']*1e3:8.1f} {r['tflops']['pallas_fp8']:6.0f} "
          f"{t['pallas_bf16']*1e3:8.1f} {t.get('lax_ragged_dot_bf16', nan)*1e3:9.1f} "
          f"{t.get('upstream_ragged_dot_mgpu_bf16', nan)*1e3:8.1f} {t['dense_bf16']*1e3:8.1f} "
          f"{t['dense_xla_fp8']*1e3:8.1f} {r['fp8_vs_dense_bf16']:6.2f} "
          f"{r['fp8_vs_upstream'] or nan:6.2f} {r['fp8_over_weight_read']:6.2f}")
  print("times in us; best alternative configs in the JSON;",
        json.dumps(result["summary"]))
  if moe:
    print("MoE layer ms:", {k: round(v, 3) for k, v in moe["times_ms"].items()},
          f"fp8 vs own bf16 {moe['fp8_vs_own_bf16']:.2f}x,",
          f"vs reference bf16 {moe['fp8_vs_reference_bf16'] or float('nan'):.2f}x")


if __name__ == "__main__":
  sys.exit(main())
