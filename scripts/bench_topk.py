"""Times the top-k kernels against jax.lax.top_k, torch.topk and one read of the input.

Beam shapes: B=32 rows of W*8192 candidates, k=W, for W in {128, 256, 512}, fp32 and bf16:
the plain top-k on materialized scores and the fused beam step on logits. Router shapes:
16384 x 53 (k=3) and 32768 x 256 (k=8). Writes JSON (device, versions, commit, shapes,
median times, ratios) and prints a table. Run on a GPU:
  python scripts/bench_topk.py --out bench/results/topk_h100.json
"""

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench_common import header, write_json
from onerec_kernels import topk

V = 8192
_ROUTER_INPUTS = 16
# (tokens, warps) a program timed for each router method, from one warp (the default: 16 x 1
# at E=53, 4 x 1 at E=256) to the previous kernel's default (16 x 8 and 8 x 8).
_ROUTER_TILINGS = {(16384, 53, 3): ((8, 1), (16, 1), (32, 2), (32, 4), (16, 8)),
                   (32768, 256, 8): ((2, 1), (4, 1), (4, 2), (8, 4), (8, 8))}


def _median_ms(fn, sync, reps: int, inner: int, warmup: int = 3) -> float:
  """Median over reps samples of the time per call of `inner` back-to-back calls of fn,
  synchronised once per sample (so host dispatch overlaps device work), in ms."""
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = fn()
    sync(out)
    times.append((time.perf_counter() - t0) * 1e3 / inner)
  return statistics.median(times)


def _jax_sync(out):
  jax.block_until_ready(out)


def _torch_ops():
  """torch.topk on the same device buffers (through DLPack), or None without torch."""
  try:
    import torch
  except ImportError:
    return None
  sync = lambda _: torch.cuda.synchronize()
  to_torch = lambda a: torch.from_dlpack(a)
  return torch, to_torch, sync


def _time_all(cases: dict, reps: int) -> dict:
  """Median ms of each case; the slow sorts (lax_*, xla_*) one call a sample, reps // 4
  samples; the others 10 calls a sample."""
  slow = lambda name: name.startswith(("lax", "xla"))
  return {name: _median_ms(fn, sync, max(5, reps // 4), 1) if slow(name)
          else _median_ms(fn, sync, reps, 10) for name, (fn, sync) in cases.items()}


def bench_beam(w: int, dtype, reps: int, torch_ops) -> dict:
  k1, k2, k3 = jax.random.split(jax.random.key(w), 3)
  scores = jax.random.normal(k1, (32, w * V), jnp.float32).astype(dtype)  # [B, W*V]
  logits = jax.random.normal(k2, (32, w, V), jnp.float32).astype(dtype)  # [B, W, V]
  beam = jax.random.normal(k3, (32, w), jnp.float32)
  floor = jax.jit(jnp.max)
  kernel = jax.jit(lambda x: topk.top_k(x, w, impl="triton"))
  fused = jax.jit(lambda l, b: topk.beam_topk(l, b, w, impl="triton"))
  lax_stable = jax.jit(lambda x: jax.lax.top_k(x, w))
  lax_unstable = jax.jit(lambda x: jax.lax.top_k(x, w, is_stable=False))
  fused_xla = jax.jit(lambda l, b: topk.beam_topk(l, b, w, impl="reference"))
  cases = {
      "floor_read": (lambda: floor(scores), _jax_sync),
      "triton_top_k": (lambda: kernel(scores), _jax_sync),
      "triton_beam_fused": (lambda: fused(logits, beam), _jax_sync),
      "lax_top_k": (lambda: lax_stable(scores), _jax_sync),
      "lax_top_k_unstable": (lambda: lax_unstable(scores), _jax_sync),
      "xla_beam_reference": (lambda: fused_xla(logits, beam), _jax_sync),
  }
  if torch_ops:
    torch, to_torch, sync = torch_ops
    st = to_torch(scores)
    cases["torch_topk"] = (lambda: torch.topk(st, w, dim=-1), sync)
  times = _time_all(cases, reps)
  # The same kernel when the top W sit in a few beams (the bound is loose: refinement).
  packed = jax.random.normal(k3, (32, w), jnp.float32) * 30
  times["triton_beam_fused_packed"] = _median_ms(lambda: fused(logits, packed), _jax_sync,
                                                 max(5, reps // 4), 1)
  return times


def bench_breakdown(reps: int) -> dict:
  """Each step of the plain top-k at B=32, W=512, fp32 (the filter with and without its
  chunk skip), the whole under other configs, and the router kernel's methods x tokens x
  warps at both router shapes and dtypes (tuning data)."""
  from onerec_kernels.topk import triton_gpu
  w, n = 512, 512 * V
  scores = jax.random.normal(jax.random.key(0), (32, n), jnp.float32)
  cfg = topk.Config.default(n, w)
  ops = triton_gpu.TritonOps(cfg)
  maxima = jax.jit(lambda x: ops.chunk_max(x, cfg.chunk))(scores)
  th = jax.jit(lambda m: ops.kth_largest(m, w))(maxima)
  zero = jnp.zeros_like(th)
  skip_filter = jax.jit(lambda x, m, t: ops.filter(x, t, zero, cfg.buffer, m, cfg.chunk))
  keys, idx, count = skip_filter(scores, maxima, th)
  cap = cfg.capacity
  steps = {
      "chunk_max": (jax.jit(lambda x: ops.chunk_max(x, cfg.chunk)), (scores,)),
      "kth_largest": (jax.jit(lambda m: ops.kth_largest(m, w)), (maxima,)),
      "filter": (skip_filter, (scores, maxima, th)),
      "filter_noskip": (jax.jit(lambda x, t: ops.filter(x, t, zero, cfg.buffer)),
                        (scores, th)),
      "sort_select": (jax.jit(lambda a, b, c: ops.sort_select(a[:, :cap], b[:, :cap], c, n,
                                                                w)), (keys, idx, count)),
  }
  out = {name: _median_ms(lambda f=f, a=a: f(*a), _jax_sync, reps, 10)
         for name, (f, a) in steps.items()}
  out["max_candidates"] = int(jnp.max(count))
  out["config"] = str(cfg)
  for chunk, span in ((512, 4096), (512, 8192), (512, 32768), (256, 16384), (1024, 16384)):
    c = dataclasses.replace(cfg, chunk=chunk, span=span)
    f = jax.jit(lambda x, c=c: topk.top_k(x, w, impl="triton", config=c))
    out[f"top_k_chunk{chunk}_span{span}"] = _median_ms(lambda: f(scores), _jax_sync, reps,
                                                       10)
  for (t, e, k), tilings in _ROUTER_TILINGS.items():
    for dtype in (jnp.float32, jnp.bfloat16):
      xs = [jax.random.normal(key, (t, e)).astype(dtype)
            for key in jax.random.split(jax.random.key(1), _ROUTER_INPUTS)]
      for method in triton_gpu.ROUTER_METHODS:
        for tokens, warps in tilings:
          f = jax.jit(lambda *xs, m=method, tk=tokens, wp=warps: [triton_gpu.router_top_k(
              x, None, k, "sigmoid", True, 1.0, method=m, tokens=tk, warps=wp) for x in xs])
          name = f"router_{t}x{e}_{jnp.dtype(dtype).name}_{method}"
          out[f"{name}_tokens{tokens}_warps{warps}"] = _median_ms(
              lambda: f(*xs), _jax_sync, reps, 1) / len(xs)
  return out


def bench_router(t: int, e: int, k: int, dtype, reps: int, torch_ops) -> dict:
  """Each case runs over _ROUTER_INPUTS distinct inputs inside one jit (one torch loop):
  a call takes microseconds, less than its dispatch from Python."""
  keys = jax.random.split(jax.random.key(e), _ROUTER_INPUTS + 1)
  xs = [jax.random.normal(key, (t, e), jnp.float32).astype(dtype) for key in keys[1:]]
  bias = jax.random.normal(keys[0], (e,), jnp.float32) * 0.01
  each = lambda f: jax.jit(lambda *xs: [f(x) for x in xs])
  floor = each(jnp.max)
  kernel = each(lambda x: topk.router_topk(x, bias, k, impl="triton"))
  xla = each(lambda x: topk.router_topk(x, bias, k, impl="reference"))
  lax_stable = each(lambda x: jax.lax.top_k(x, k))
  lax_unstable = each(lambda x: jax.lax.top_k(x, k, is_stable=False))
  cases = {
      "floor_read": (lambda: floor(*xs), _jax_sync),
      "triton_router": (lambda: kernel(*xs), _jax_sync),
      "xla_router_reference": (lambda: xla(*xs), _jax_sync),
      "lax_top_k": (lambda: lax_stable(*xs), _jax_sync),
      "lax_top_k_unstable": (lambda: lax_unstable(*xs), _jax_sync),
  }
  if torch_ops:
    torch, to_torch, sync = torch_ops
    xts = [to_torch(x) for x in xs]
    cases["torch_topk"] = (lambda: [torch.topk(x, k, dim=-1) for x in xts], sync)
  return {name: ms / _ROUTER_INPUTS for name, ms in _time_all(cases, reps).items()}


def bench_router_device(t: int, e: int, k: int, dtype, torch_ops) -> dict:
  """Device time per input (ms) of the router cases: CUPTI time of every kernel a call
  launches (bench_fp8_linear.device_ms, 16 inputs in one jit), so host launch overheads,
  which the wall-clock timing above includes, are left out; torch.topk by CUDA events."""
  from bench_fp8_linear import device_ms
  keys = jax.random.split(jax.random.key(e), _ROUTER_INPUTS + 1)
  xs = [(jax.random.normal(key, (t, e), jnp.float32).astype(dtype),) for key in keys[1:]]
  bias = jax.random.normal(keys[0], (e,), jnp.float32) * 0.01
  cases = {
      "floor_read": jnp.max,
      "triton_router": lambda x: topk.router_topk(x, bias, k, impl="triton"),
      "xla_router_reference": lambda x: topk.router_topk(x, bias, k, impl="reference"),
      "lax_top_k": lambda x: jax.lax.top_k(x, k),
      "lax_top_k_unstable": lambda x: jax.lax.top_k(x, k, is_stable=False),
  }
  times = {name: device_ms(f, xs) for name, f in cases.items()}
  if torch_ops:
    torch, to_torch, _ = torch_ops
    xts = [to_torch(x) for (x,) in xs]
    samples = []
    for _ in range(23):
      start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
      start.record()
      for x in xts:
        torch.topk(x, k, dim=-1)
      end.record()
      torch.cuda.synchronize()
      samples.append(start.elapsed_time(end) / len(xts))
    times["torch_topk"] = statistics.median(samples[3:])
  return times


def _ratios(times: dict, kernel: str) -> dict:
  t = times[kernel]
  out = {"kernel_over_floor": t / times["floor_read"],
         "lax_top_k_over_kernel": times["lax_top_k"] / t,
         "lax_top_k_unstable_over_kernel": times["lax_top_k_unstable"] / t}
  if "torch_topk" in times:
    out["torch_topk_over_kernel"] = times["torch_topk"] / t
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--reps", type=int, default=50)
  parser.add_argument("--commit", default=None, help="git commit (default: git rev-parse)")
  parser.add_argument("--router-device", action="store_true",
                      help="only the router shapes, timed by device time (CUPTI)")
  args = parser.parse_args()
  torch_ops = _torch_ops()
  if args.router_device:
    return router_device_main(args.out, args.commit, torch_ops)
  rows = []
  for w in (128, 256, 512):
    for dtype in (jnp.float32, jnp.bfloat16):
      times = bench_beam(w, dtype, args.reps, torch_ops)
      rows.append({"op": "beam", "shape": [32, w * V], "k": w,
                   "dtype": jnp.dtype(dtype).name, "ms": times,
                   "ratios": _ratios(times, "triton_top_k"),
                   "ratios_fused": _ratios(times, "triton_beam_fused")})
  for t, e, k in _ROUTER_TILINGS:
    for dtype in (jnp.float32, jnp.bfloat16):
      times = bench_router(t, e, k, dtype, args.reps, torch_ops)
      rows.append({"op": "router", "shape": [t, e], "k": k, "dtype": jnp.dtype(dtype).name,
                   "ms": times, "ratios": _ratios(times, "triton_router")})
  breakdown = bench_breakdown(args.reps)
  result = {**header(_time_all.__doc__ + f" reps={args.reps}, after 3 warm-ups",
                     args.commit),
            "torch": torch_ops[0].__version__ if torch_ops else None,
            "rows": rows, "breakdown_w512_fp32": breakdown}
  write_json(args.out, result)
  print(f"{result['device']}  jax {result['jax_version']}  commit {result['git_commit'][:10]}")
  print(f"{'op':6} {'shape':>14} {'k':>4} {'dtype':8} {'floor':>7} {'kernel':>7} {'fused':>7} "
        f"{'packed':>7} {'lax':>7} {'lax_u':>7} {'torch':>7} {'k/fl':>5} {'lax/k':>6} "
        f"{'tch/k':>6} {'fu/fl':>5}")
  for r in rows:
    ms, ra = r["ms"], r["ratios"]
    kern = ms.get("triton_top_k", ms.get("triton_router"))
    print(f"{r['op']:6} {'x'.join(map(str, r['shape'])):>14} {r['k']:>4} {r['dtype']:8} "
          f"{ms['floor_read']:7.3f} {kern:7.3f} {ms.get('triton_beam_fused', np.nan):7.3f} "
          f"{ms.get('triton_beam_fused_packed', np.nan):7.3f} "
          f"{ms['lax_top_k']:7.3f} {ms['lax_top_k_unstable']:7.3f} "
          f"{ms.get('torch_topk', np.nan):7.3f} {ra['kernel_over_floor']:5.2f} "
          f"{ra['lax_top_k_over_kernel']:6.1f} {ra.get('torch_topk_over_kernel', np.nan):6.1f} "
          f"{r.get('ratios_fused', {}).get('kernel_over_floor', np.nan):5.2f}")
  print("breakdown W=512 fp32 (ms):", json.dumps(breakdown))


def router_device_main(out: str, commit: str | None, torch_ops) -> None:
  rows = []
  for t, e, k in _ROUTER_TILINGS:
    for dtype in (jnp.float32, jnp.bfloat16):
      times = bench_router_device(t, e, k, dtype, torch_ops)
      rows.append({"op": "router", "shape": [t, e], "k": k, "dtype": jnp.dtype(dtype).name,
                   "ms": times, "ratios": _ratios(times, "triton_router")})
  write_json(out, {**header(bench_router_device.__doc__, commit),
                   "torch": torch_ops[0].__version__ if torch_ops else None, "rows": rows})
  for r in rows:
    print(r["shape"], r["dtype"], {c: round(v * 1e3, 1) for c, v in r["ms"].items()},
          {c: round(v, 2) for c, v in r["ratios"].items()})


if __name__ == "__main__":
  main()
