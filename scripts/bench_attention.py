"""Benchmarks the attention op on one Hopper GPU at the serving shapes: the Triton kernel
under its default tiling and a set of other tilings, cuDNN's fused attention where it
applies (the causal prefill; non-causal shapes without the log-sum-exp) and XLA's
reference, in one run.

The tilings include the keys split over 2, 4 and 8 programs (merged after). Shapes:
Qwen3-1.7B's causal prefill (prompts of 256, 1000 and 5000 tokens) and its decode
steps' attention to the prompt (256 beams, with the log-sum-exp), and moe-4b's beam-shared
cross-attention (512 beams of 32 requests to a 512-row context). Each implementation is
checked against the FP32 reference first (max abs error, bf16 in and out), then timed:
CUPTI device time, median of 30 calls over rotating random inputs larger than L2.
Writes JSON (--out) with a top-level summary (per shape: the default tiling's time, the
best tiling, cuDNN's and XLA's times) and prints a table last.

  python scripts/bench_attention.py --out bench/results/attention_h200.json
"""

import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import device_ms, header, num_sets, write_json  # noqa: E402

import onerec_kernels.attention as attention_op  # noqa: E402
from onerec_kernels import backend  # noqa: E402
from onerec_kernels.attention import attention_reference, triton_gpu  # noqa: E402

# name -> (B, Q, G, R, N, dh, causal, lse)
SHAPES = {
    "qwen3.prefill.p256.b8": (8, 256, 8, 2, 256, 128, True, False),
    "qwen3.prefill.p1000.b8": (8, 1000, 8, 2, 1000, 128, True, False),
    "qwen3.prefill.p5000.b1": (1, 5000, 8, 2, 5000, 128, True, False),
    "qwen3.decode.p1000.b8": (8, 256, 8, 2, 1000, 128, False, True),
    "qwen3.decode.p5000.b1": (1, 256, 8, 2, 5000, 128, False, True),
    "moe4b.cross.b32": (32, 512, 11, 1, 512, 128, False, False),
}
TILINGS = [triton_gpu.Config(*t) for t in [  # (block_m, block_n, warps, stages[, splits])
    (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3),
    (128, 32, 4, 3), (64, 32, 4, 4), (64, 64, 4, 3, 2), (64, 64, 4, 3, 4),
    (64, 64, 4, 3, 8)]]  # the last three: the keys split in 2, 4 and 8
MAX_ERR = 2e-2  # bf16 output and bf16 probabilities (tests/test_attention.py)


def _inputs(key, b, q, g, r, n, d):
  kq, kk, kv = jax.random.split(key, 3)
  lengths = jnp.full((b,), n).at[-1].set(n - n // 7)  # one prompt padded at the end
  mask = (jnp.arange(n)[None] < lengths[:, None])[:, None, None, None, :]
  return (jax.random.normal(kq, (b, q, g, r, d), jnp.bfloat16),
          jax.random.normal(kk, (b, n, g, d), jnp.bfloat16),
          jax.random.normal(kv, (b, n, g, d), jnp.bfloat16), mask)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="bench/results/attention.json")
  ap.add_argument("--only", nargs="+", help="shape names to run")
  args = ap.parse_args()
  if not backend.on_hopper() or not backend.triton_available():
    raise SystemExit("needs a Hopper GPU and jax_triton (the `triton` extra)")
  rows, summary = [], {}
  for name, (b, q, g, r, n, d, causal, lse) in SHAPES.items():
    if args.only and name not in args.only:
      continue
    per_set = 2 * (b * q * g * r * d + 2 * b * n * g * d)
    sets = [_inputs(k, b, q, g, r, n, d)
            for k in jax.random.split(jax.random.key(n), num_sets(per_set))]
    flops = 4 * b * g * r * q * n * d * (0.5 if causal else 1.0)
    f32 = lambda a: a.astype(jnp.float32)
    qs, ks, vs, m = sets[0]
    want = attention_reference(f32(qs), f32(ks), f32(vs), m, causal=causal)

    def impls():
      yield "default", None, lambda *a: triton_gpu.attention(
          *a[:3], a[3][:, 0, 0, 0], causal=causal, lse=lse)
      for cfg in TILINGS:
        yield "triton", cfg, lambda *a, cfg=cfg: triton_gpu.attention(
            *a[:3], a[3][:, 0, 0, 0], causal=causal, lse=lse, config=cfg)
      if (q == n if causal else not lse):  # what cuDNN's implementation takes
        yield "cudnn", None, lambda *a: attention_op.attention(  # as the model calls it
            *a[:3], key_lengths=jnp.sum(a[3][:, 0, 0, 0], 1, dtype=jnp.int32),
            causal=causal, impl="cudnn")
      yield "xla", None, lambda *a: attention_reference(*a, causal=causal, lse=lse)

    shape_rows = []
    for impl, cfg, fn in impls():
      row = dict(shape=name, impl=impl, config=None if cfg is None else
                 dataclasses.asdict(cfg), b=b, q=q, g=g, r=r, n=n, d=d, causal=causal,
                 lse=lse)
      try:
        out = jax.jit(fn)(*sets[0])
        out = out[0] if lse else out
        row["max_abs_err"] = float(jnp.max(jnp.abs(f32(out) - want)))
        row["ms"] = device_ms(fn, sets)
        row["tflops"] = flops / row["ms"] / 1e9
      except Exception as e:  # a tiling that does not compile or fit: recorded, not fatal
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      rows.append(row)
      shape_rows.append(row)
      print(row, flush=True)
    default = triton_gpu.default_config(q * r, d, jnp.bfloat16, programs=b * g, n=n)
    ok = [x for x in shape_rows if "ms" in x and x["max_abs_err"] <= MAX_ERR]
    by = {x["impl"]: x for x in ok if x["impl"] != "triton"}
    tilings = [x for x in ok if x["impl"] in ("default", "triton")]
    best = min(tilings, key=lambda x: x["ms"]) if tilings else None
    summary[name] = dict(
        default_ms=by.get("default", {}).get("ms"),
        default_config=dataclasses.asdict(default),
        best_triton_ms=best and best["ms"], best_triton_config=best and (
            best["config"] or dataclasses.asdict(default)),
        cudnn_ms=by.get("cudnn", {}).get("ms"), xla_ms=by.get("xla", {}).get("ms"),
        default_tflops=by.get("default", {}).get("tflops"),
        failed=[x["impl"] for x in shape_rows if x not in ok])
    # after every shape: a run stopped part-way leaves the shapes it finished
    write_json(args.out, dict(header("CUPTI device time, median of 30 calls over "
                                     "rotating inputs"), shapes=SHAPES, summary=summary,
                              rows=rows))
  fmt = lambda v: f"{v:9.3f}" if v else f"{'-':>9}"
  print(f"\n{'shape':24} {'default':>9} {'best':>9} {'cudnn':>9} {'xla':>9}  best tiling")
  for name, s in summary.items():
    print(f"{name:24} {fmt(s['default_ms'])} {fmt(s['best_triton_ms'])} "
          f"{fmt(s['cudnn_ms'])} {fmt(s['xla_ms'])}  {s['best_triton_config']}")
  print("summary:", summary)


if __name__ == "__main__":
  sys.exit(main())
