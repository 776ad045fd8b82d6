"""End to end: the beam search as a ladder of rungs, each in its own process (the kernel
mode is read when the search is traced), measured in one run on one GPU.

Rungs (--rungs): xla_bf16 (every kernel entry point on its reference: plain XLA),
kernels_bf16 (our kernels, 16-bit weights), fp8 (our kernels under the paper's FP8 rules),
and the fusions this project added, each taken away once: fp8_attention_xla (the fused
attention kernel pinned to its XLA reference), fp8_constrained (constrained decoding over
--items valid items); on request, fp8_attention_triton (the Triton attention kernel where
cuDNN's fused attention serves), kernels_bf16_cublas (XLA's GEMMs on cuBLAS rather than
its Triton GEMM fusions) and XLA's command buffers off or on for everything.
For every rung: compile time (tracing and lowering, XLA's compile), latency median/min/max
over --runs runs with inputs on the device, the host's time to enqueue one search,
requests/s, peak device memory, and a device-time breakdown from CUPTI (every kernel
of one search, by category: gemm, quantize, attention,
norms/residual, routing/combine, top-k, beam/past, other, and by name; idle = wall minus
kernel time), with the gaps between kernels on the GPU's timeline from a profiler trace
of one more search (by length, by the kernel after each, the largest pairs, the longest
gaps with the host's events during each). XLA runs a profiled executable op by op, without
its command buffers, unless XLA_FLAGS (passed on to the rungs) holds
--xla_enable_command_buffers_during_profiling=true: the gaps are the op-by-op run's, the
latency the timed run's. --sweep adds the best FP8 rung at other batch
sizes, beam widths and context lengths. --qwen3-table runs the Qwen3 family instead: the
published serving table's grid (prompt lengths --contexts, batches --batches, beam 256,
3 tokens) in bf16 and FP8 with the prefill timed apart, its summary a list of rows {ctx, batch,
bf16_ms, fp8_ms, ...}. Random bf16 weights made on the device, random contexts.
Writes JSON (--out, with a top-level "summary") and a PNG figure beside it; prints a
table last. --smoke runs a tiny preset on any backend (the CPU tests use it).

--devices N (N >= 2) measures the scale-out instead (docs/scaling.md): the FP8 search
with --batch requests per GPU on one GPU (fp8), over N GPUs (fp8_dp: N x --batch
requests, experts replicated) and with the experts split over the N GPUs as well
(fp8_dp_ep), plus the time of one MoE layer (the model's first) on the wide steps'
--batch x --beam rows per GPU in each; the summary has gpus, dp_speedup and ep_speedup
(throughput over one GPU's) and ep_over_dp. With --smoke it runs on the CPU's forced
host devices (a smoke run, not a measurement: do not commit it).

  python scripts/bench_e2e.py --out bench/results/e2e_h200.json
  python scripts/bench_e2e.py --devices 2 --batch 64 --out bench/results/multi_gpu_h200x2.json
  python scripts/bench_e2e.py --qwen3-table --preset qwen3-1.7b --out bench/results/qwen3_h200.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import header, moe_block, perfetto_trace, timed_ms, write_json  # noqa: E402

RUNGS = {  # name -> (kernel mode, FP8 rules, constrained, XLA_FLAGS added)
    "xla_bf16": ("reference", False, False, ""),
    "kernels_bf16": ("auto", False, False, ""),
    "fp8": ("auto", True, False, ""),
    "fp8_attention_xla": ("auto,attention=reference", True, False, ""),
    "fp8_constrained": ("auto", True, True, ""),
    # Not in the default ladder: the attention on the Triton kernel where cuDNN's fused
    # attention would serve (the wide steps' cross-attention);
    "fp8_attention_triton": ("auto,attention=triton", True, False, ""),
    # Our bf16 kernels with every XLA GEMM on cuBLAS (XLA's Triton GEMM fusions off).
    "kernels_bf16_cublas": ("auto", False, False, "--xla_gpu_enable_triton_gemm=false"),
    # XLA's command buffers (CUDA graphs) off, and on for
    # every command type that can be captured.
    "fp8_command_buffers_off": ("auto", True, False, "--xla_gpu_enable_command_buffer="),
    "fp8_command_buffers_all": ("auto", True, False,
                                "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,"
                                "CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION"),
    # Over --devices GPUs (the default with --devices): requests split over them, the
    # experts replicated or split as well.
    "fp8_dp": ("auto", True, False, ""),
    "fp8_dp_ep": ("auto", True, False, ""),
}
DEFAULT_RUNGS = ("xla_bf16", "kernels_bf16", "fp8", "fp8_attention_xla", "fp8_constrained")
MESH_RUNGS = {"fp8_dp": False, "fp8_dp_ep": True}  # name -> experts split over the GPUs
SCALING_RUNGS = ("fp8", *MESH_RUNGS)
CATEGORIES = ("gemm", "quantize", "attention", "norms_residual", "routing_combine", "topk",
              "beam_past", "other")
# Kernel names of our own kernels (CUPTI names the Triton and Mosaic kernels after their
# functions), of cuDNN's fused attention and of cuBLAS.
_KERNEL_NAMES = [
    (r"_quantize_kernel", "quantize"), (r"_attention_kernel|sdpa|fmha|flash", "attention"),
    (r"_router_kernel", "routing_combine"),
    (r"_beam_|_filter_kernel|_kth_kernel|_chunk_max|_counts_kernel|_rank_kernel|radix_sort|"
     r"topk|top_k", "topk"),
    (r"mosaic|_kernel$|gemm|xmma|cutlass|nvjet|cublas", "gemm"),
]
# Flax module paths (and beam-search scopes) in the HLO's op_name metadata.
_SCOPES = [
    (r"_proj/|/router/.*dot_general|\.\.\.k,nk->|ragged_dot|td,ed->te", "gemm"),
    (r"/(cross_attn|self_attn)/", "attention"),
    (r"_norm/|/layer_\d+/add|head_\d+_norm", "norms_residual"),
    (r"/mlp/(router|experts)|/mlp/add|/mlp/reshape", "routing_combine"),
    (r"top_k|beam_select|log_softmax|(?<!arg)sort", "topk"),
    (r"past/|extend", "beam_past"),
]


def _hlo_scopes(hlo_text: str) -> dict[str, str]:
  """Kernel name (HLO instruction name, '.' as '_') -> op_name metadata."""
  out = {}
  for name, op in re.findall(r"%([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]+)\"",
                             hlo_text):
    out[name.replace(".", "_").replace("-", "_")] = op
  return out


def categorize(kernel: str, scopes: dict[str, str]) -> str:
  """The category of one kernel launch, from its own name or its HLO op's scope."""
  op = scopes.get(kernel.replace(".", "_").replace("-", "_"))
  if op is not None:
    for pattern, category in _SCOPES:
      if re.search(pattern, op):
        return category
  for pattern, category in _KERNEL_NAMES:
    if re.search(pattern, kernel):
      return category
  return "other"


def _breakdown(compiled, args, wall_ms: float) -> dict:
  """CUPTI: every kernel of one search, summed by category (ms) and by name (with its
  launches and HLO scope), idle = wall - kernel time, and where the gaps are
  (timeline_gaps, from a profiler trace of another search)."""
  from jax.experimental.mosaic.gpu import profiler
  _, timings = profiler.measure(compiled, aggregate=False)(*args)
  scopes = _hlo_scopes(compiled.as_text())
  by_cat = collections.Counter()
  by_kernel, kernel_launches = collections.Counter(), collections.Counter()
  launches = collections.Counter()
  for name, ms in timings or []:
    by_cat[categorize(name, scopes)] += ms
    by_kernel[name] += ms
    launches[categorize(name, scopes)] += 1
    kernel_launches[name] += 1
  kernel_ms = sum(by_cat.values())
  return {"ms": {c: by_cat[c] for c in CATEGORIES}, "launches": dict(launches),
          "kernel_ms": kernel_ms, "idle_ms": max(wall_ms - kernel_ms, 0.0),
          "kernels": len(timings or []),
          "by_kernel": [{"name": n, "ms": t, "launches": kernel_launches[n],
                         "category": categorize(n, scopes),
                         "scope": scopes.get(n.replace(".", "_").replace("-", "_"), "")[-120:]}
                        for n, t in by_kernel.most_common()],
          "timeline": _trace_gaps(compiled, args, scopes)}


def timeline_gaps(events: list[dict], category) -> dict | None:
  """Where the GPU waits, from a jax.profiler (perfetto) trace's events of one search:
  the kernels on the GPU's streams in start order and the gap before each (its start
  minus the latest end so far, when positive), summed by the category of the kernel
  that follows it, bucketed by length, and the largest pairs (kernel before, kernel
  after) by total gap; the longest single gaps (50 us or more) with the host events
  that overlap each, longest overlap first and, among equal overlaps, the shortest (the
  innermost call: what the host did while the GPU waited).
  None without GPU stream events (a CPU run)."""
  procs = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  kernels = sorted((e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in events
                   if e.get("ph") == "X" and "GPU" in procs.get(e.get("pid"), "")
                   and threads.get((e["pid"], e.get("tid")), "").startswith("Stream"))
  if not kernels:
    return None
  by_next, pairs, pair_count = collections.Counter(), collections.Counter(), collections.Counter()
  buckets = collections.Counter()
  edges = ((0, 2, "<2us"), (2, 5, "2-5us"), (5, 10, "5-10us"), (10, 50, "10-50us"),
           (50, float("inf"), ">=50us"))
  end, before = kernels[0][1], kernels[0][2]
  long_gaps = []  # (gap us, gap start, kernel before, kernel after)
  for start, stop, name in kernels[1:]:
    gap = start - end  # us
    if gap > 0:
      by_next[category(name)] += gap / 1e3
      pairs[(before, name)] += gap / 1e3
      pair_count[(before, name)] += 1
      buckets[next(label for lo, hi, label in edges if lo <= gap < hi)] += gap / 1e3
      if gap >= 50:
        long_gaps.append((gap, end, before, name))
    if stop > end:
      end, before = stop, name
  host = [(e["ts"], e["ts"] + e.get("dur", 0), e["name"],
           threads.get((e["pid"], e.get("tid")), str(e.get("tid"))))
          for e in events if long_gaps and e.get("ph") == "X"
          and "GPU" not in procs.get(e.get("pid"), "")]

  def while_waiting(lo, hi):
    overlap = [(min(b, hi) - max(a, lo), b - a, name, thread)
               for a, b, name, thread in host if a < hi and b > lo]
    return [{"name": name[:80], "thread": thread[:40], "overlap_us": o, "dur_us": d}
            for o, d, name, thread in sorted(overlap, key=lambda h: (-h[0], h[1]))[:12]]
  return {"span_ms": (end - kernels[0][0]) / 1e3, "kernels": len(kernels),
          "gap_ms": sum(by_next.values()), "gap_ms_by_next_category": dict(by_next),
          "gap_ms_by_length": {label: buckets[label] for _, _, label in edges},
          "top_gap_pairs": [{"before": a[:80], "after": b[:80], "ms": ms,
                             "count": pair_count[(a, b)]}
                            for (a, b), ms in pairs.most_common(25)],
          "longest_gaps": [{"us": gap, "before": a[:80], "after": b[:80],
                            "host": while_waiting(at, at + gap)}
                           for gap, at, a, b in sorted(long_gaps, reverse=True)[:6]]}


def _trace_gaps(compiled, args, scopes: dict[str, str]) -> dict | None:
  """timeline_gaps of one search run under jax's profiler (after a warm-up)."""
  import jax
  jax.block_until_ready(compiled(*args))
  with perfetto_trace() as events:
    jax.block_until_ready(compiled(*args))
  return timeline_gaps(events, lambda name: categorize(name, scopes))


def _moe_layer_ms(cfg, params, rules, mesh, tokens: int, runs: int) -> float:
  """Median ms of the model's first MoE layer (router, routed and shared experts) on
  `tokens` rows per device: on one device (mesh None) or over the mesh, its experts
  split as the mesh says. The layer is the model's MoE module under its own module
  path, so the FP8 rules apply as in the search."""
  import contextlib

  import jax
  from onerec_jax import quant
  from onerec_jax.generate import sharding
  layer = f"layer_{cfg.moe_layers[0]}"
  block = moe_block(cfg, layer, norm=False)

  def apply(p, x):
    with contextlib.nullcontext() if rules is None else quant.fp8(rules):
      return (block.apply({"params": p}, x),)

  devices = 1 if mesh is None else mesh.size
  args = ({layer: {"mlp": params[layer]["mlp"]}},
          jax.random.normal(jax.random.key(2), (devices * tokens, cfg.d_model),
                            cfg.compute_dtype))  # [T, D]
  fn = jax.jit(apply)
  if mesh is not None:
    sharded, target, out = sharding.shard(apply, mesh, args, (False, True), gather=False)
    args = jax.block_until_ready(sharding.place(args, target))
    fn = jax.jit(sharded, out_shardings=out)
  return statistics.median(timed_ms(lambda: fn(*args), runs))


def _prefill_ms(cfg, params, rules, features, mask, runs: int) -> float:
  """Median ms of the model's encode alone (the prompt's prefill, or OneRec-V2's context
  processor) under the same rules, on one device."""
  import contextlib
  import jax
  from onerec_jax import quant
  from onerec_jax.model import model_for
  model = model_for(cfg)

  def encode(p, f, m):
    with quant.fp8(rules) if rules else contextlib.nullcontext():
      return model.apply({"params": p}, f, m, method="encode")

  run = jax.jit(encode).lower(params, features, mask).compile()
  if not runs:  # compiled only (into the persistent cache, when it is on)
    return None
  return statistics.median(timed_ms(lambda: run(params, features, mask), runs))


def run_rung(name: str, preset: str, batch: int, beam: int, context: int, runs: int,
             items: int, layers: int, breakdown: bool, devices: int = 1,
             moe_layer: bool = False, prefill: bool = False,
             compile_cache: str | None = None, compile_only: bool = False) -> dict:
  """One rung in this process: compile, warm up, time, break down. A mesh rung runs
  devices x batch requests over `devices` devices; moe_layer adds the MoE layer's time,
  prefill the model's encode alone. compile_cache: jax's persistent compilation cache in
  that folder, the search through the product's compiled_search (stored there, so a later
  process loads it); compile_only stops after compiling (filling that cache)."""
  mode, fp8, constrained, xla_flags = RUNGS[name]
  os.environ["ONEREC_KERNELS"] = mode  # before anything is traced
  if xla_flags:  # before jax initialises its backend
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
  import jax
  import numpy as np
  from onerec_jax import generate as gen
  from onerec_jax import quant
  from onerec_jax.config import Pathway, preset as get_preset
  from onerec_jax.model import default_rules, init_params

  if compile_cache:
    gen.compile_cache.enable(compile_cache)
  cfg = get_preset(preset).replace(param_dtype="bfloat16")
  if cfg.family == "qwen3":
    cfg = cfg.replace(dtype="bfloat16")
  if layers:
    cfg = cfg.replace(n_layers=layers, moe_layers=tuple(i for i in cfg.moe_layers
                                                         if i < layers))
  if context and context != cfg.max_context_len:
    if cfg.family == "qwen3":  # the prompt bucket
      cfg = cfg.replace(max_prompt_len=context)
    else:  # one pathway of the asked length
      p = cfg.pathways[-1]
      cfg = cfg.replace(pathways=(Pathway(p.name, p.width, context),))
  mesh = None
  if name in MESH_RUNGS:
    mesh = gen.sharding.make_mesh(devices,
                                  expert_parallel=devices if MESH_RUNGS[name] else 1)
    gen.sharding.check_mesh(mesh, cfg)
  requests = batch * (1 if mesh is None else mesh.size)
  t0 = time.perf_counter()
  params = jax.block_until_ready(
      jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0)))
  rules = default_rules(cfg) if fp8 else None
  if rules:
    params = jax.block_until_ready(
        jax.jit(quant.quantize_params, static_argnums=1)(params, rules))
  if mesh is not None:
    params = jax.block_until_ready(gen.sharding.place_params(params, mesh))
  init_s = time.perf_counter() - t0
  valid = None
  if constrained:
    valid = gen.build_item_table(*gen.random_items(cfg, items, seed=0), cfg.codebook_sizes)
  f, m = gen.pad_batch(cfg, gen.random_contexts(cfg, requests, seed=1), None, 0, requests,
                       requests)
  compiled = None
  if mesh is None and (breakdown or not compile_cache):  # the executable itself
    f, m = jax.device_put((f, m))
    t0 = time.perf_counter()
    lowered = gen.lower(params, f, m, valid, config=cfg, beam_width=beam, rules=rules)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    xla_s = time.perf_counter() - t0
    call = lambda: compiled(params, f, m, valid)
    compile_times = dict(trace_lower_s=lower_s, xla_compile_s=xla_s,
                         compile_s=lower_s + xla_s)
  else:
    f, m = jax.block_until_ready(jax.device_put((f, m)) if mesh is None else
                                 gen.sharding.place_requests((f, m), mesh))
    t0 = time.perf_counter()
    run, how = gen.compiled_search(params, f, m, valid, config=cfg, beam_width=beam,
                                   rules=rules, mesh=mesh)
    compile_times = dict(compile_s=time.perf_counter() - t0,  # trace, lower and XLA
                         compiled_from=how)
    call = lambda: run(params, f, m, valid)
  if compile_only:
    if prefill and mesh is None:
      _prefill_ms(cfg, params, rules, f, m, 0)
    return dict(rung=name, preset=preset, batch=requests, beam=beam,
                context=cfg.max_context_len, init_s=init_s, **compile_times)
  returned = []
  times = timed_ms(call, runs, returned)
  med = statistics.median(times)
  res = call()
  used = jax.devices()[:1] if mesh is None else list(mesh.devices.flat)
  row = dict(rung=name, kernels=mode, fp8=fp8, constrained=constrained, xla_flags=xla_flags,
             valid_items=items if constrained else None, preset=preset,
             layers=cfg.n_layers, batch=requests, batch_per_device=batch, beam=beam,
             devices=len(used),
             expert_parallel=1 if mesh is None else gen.sharding.expert_shards(mesh),
             context=cfg.max_context_len, init_s=init_s, **compile_times,
             latency_ms_median=med, latency_ms_min=min(times), latency_ms_max=max(times),
             host_enqueue_ms=statistics.median(returned), runs=runs,
             requests_per_s=1e3 * requests / med,
             scores_descending=bool(np.all(np.diff(np.asarray(res.scores), axis=1) <= 0)),
             empty_slots=int(np.sum(np.asarray(res.semantic_ids)[..., 0] < 0)),
             beams=np.asarray(res.semantic_ids).tolist())  # [B, W, L]
  if prefill and mesh is None:
    row["prefill_ms"] = _prefill_ms(cfg, params, rules, f, m, runs)
    row["decode_ms"] = med - row["prefill_ms"]
  mem = None if compiled is None else compiled.memory_analysis()
  if mem is not None:
    row["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in used]
  row["peak_bytes_in_use"] = None if None in peaks else max(peaks)
  if moe_layer and cfg.moe_layers:
    row["moe_layer_ms"] = _moe_layer_ms(cfg, params, rules, mesh, batch * beam, runs)
  if breakdown and compiled is not None and jax.default_backend() == "gpu":
    row["breakdown"] = _breakdown(compiled, (params, f, m, valid), med)
  return row


def _child(rung: str, args, beams: bool = False, env: dict | None = None,
           **overrides) -> dict:
  """run_rung in a fresh process (its own kernel mode and jit cache); the row keeps the
  search's semantic IDs ("beams", [B, W, L]) only when asked. env: added to the child's."""
  spec = dict(preset=args.preset, batch=args.batch, beam=args.beam, context=args.context,
              runs=args.runs, items=args.items, layers=args.layers,
              breakdown=not args.no_breakdown, devices=args.devices,
              moe_layer=args.devices > 1)
  spec.update(overrides)
  env = {**os.environ, **(env or {})}
  if args.smoke and args.devices > 1:  # the CPU's host devices, before jax starts
    env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={args.devices}").strip()
  with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", rung, "--child-out",
           out.name, "--child-spec", json.dumps(spec)]
    done = subprocess.run(cmd, text=True, capture_output=True, env=env)
    if done.returncode:
      lines = [line for line in done.stderr.splitlines() if line.strip()]
      return {"rung": rung, **{k: v for k, v in spec.items() if k != "breakdown"},
              "error": [f"exit status {done.returncode}", *lines[-12:]]}
    row = json.load(open(out.name))
  if not beams:
    row.pop("beams", None)
  return row


def _figure(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [r for r in result["ladder"] if isinstance(r.get("breakdown"), dict)]
  sweep = result.get("sweep") or []
  fig, axes = plt.subplots(1, 1 + (1 if sweep else 0), figsize=(13 if sweep else 8, 4.5))
  axes = list(axes) if sweep else [axes]
  bottom = [0.0] * len(rows)
  for cat in CATEGORIES + ("idle",):
    vals = [r["breakdown"]["idle_ms"] if cat == "idle" else r["breakdown"]["ms"][cat]
            for r in rows]
    axes[0].bar([r["rung"] for r in rows], vals, bottom=bottom, label=cat)
    bottom = [b + v for b, v in zip(bottom, vals)]
  small = [b for b in bottom if b <= 4 * min(bottom)] if bottom else []
  if small and len(small) < len(bottom):  # plain XLA's bar would flatten the others
    axes[0].set_ylim(0, 1.3 * max(small))
    for i, b in enumerate(bottom):
      if b > 1.3 * max(small):
        axes[0].text(i, 1.25 * max(small), f"{b:.0f} ms (clipped)", ha="center", va="top",
                     fontsize=8)
  axes[0].set_ylabel("ms per batch")
  axes[0].set_title("device time by category (CUPTI), idle = wall - kernels")
  axes[0].legend(fontsize=7)
  axes[0].tick_params(axis="x", rotation=20)
  for axis, label in (("batch", "B"), ("beam", "W"), ("context", "N")):
    pts = sorted((r[axis], r["latency_ms_median"]) for r in sweep
                 if r.get("sweep_axis") == axis and "latency_ms_median" in r)
    if pts:
      axes[1].plot(*zip(*pts), "o-", label=f"vs {label}")
  if sweep:
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("FP8 latency, ms")
    axes[1].legend()
    axes[1].set_title("best FP8 rung, one axis at a time")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


# NVIDIA recsys-examples' SID-GR inference README (H100 80GB, Qwen3-1.7B, beam 256, 3
# output tokens, no prefix reuse): (ctx, batch) -> (SID-GR ms, SGLang ms).
ANCHOR_H100 = {(1000, 1): (17.6, 33.5), (1000, 2): (27.8, None), (1000, 4): (47.7, None),
               (1000, 8): (93.2, 199.3), (5000, 1): (42.3, 94.6), (5000, 2): (80.9, None),
               (5000, 4): (154.2, None), (5000, 8): (307.9, 685.4)}


def beam_overlap(a: list, b: list) -> float:
  """Mean share of the top-W items two searches' results ([B, W, L] semantic IDs each)
  have in common per request (lab.evaluate.overlap_at; empty slots never shared)."""
  from onerec_jax.generate import EMPTY  # imports start no jax backend in this process
  from onerec_jax.lab.evaluate import overlap_at
  items = lambda beams: [[tuple(x) if x[0] >= 0 else EMPTY for x in row] for row in beams]
  return overlap_at(items(a), items(b), len(a[0]))


def qwen3_table(args) -> None:
  """Every (prompt length, batch) of the grid in bf16 and FP8, each timed in its own
  process, one after another. First every cell is compiled in parallel processes
  (--jobs) into one persistent compilation cache, so the timed processes load their
  programs: the grid's compile time is spent on the CPU cores at once."""
  if args.beam == 512:  # the table's beam unless given
    args.beam = 256
  grid = [(ctx, batch) for ctx in map(int, args.contexts.split(","))
          for batch in map(int, args.batches.split(","))]
  rungs = ("kernels_bf16", "fp8")
  cache = tempfile.mkdtemp(prefix="onerec-bench-compile-")
  spec = lambda ctx, batch: dict(context=ctx, batch=batch, breakdown=False, prefill=True,
                                 compile_cache=cache)
  t0 = time.perf_counter()
  if args.jobs > 1:
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      warm = list(pool.map(
          lambda cell: _child(cell[2], args, compile_only=True, **spec(*cell[:2]),
                              env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}),
          [(ctx, batch, rung) for ctx, batch in grid for rung in rungs]))
    for w in warm:
      if "error" in w:
        print(f"compile of {w['rung']} ctx {w['context']} batch {w['batch']}: {w['error']}",
              flush=True)
  compile_wall_s = time.perf_counter() - t0
  rows = []
  for ctx, batch in grid:
    cells = {rung: _child(rung, args, beams=True, **spec(ctx, batch)) for rung in rungs}
    bf16, fp8 = cells["kernels_bf16"], cells["fp8"]
    row = {"ctx": ctx, "batch": batch, "bf16_ms": bf16.get("latency_ms_median"),
           "fp8_ms": fp8.get("latency_ms_median"),
           "bf16_prefill_ms": bf16.get("prefill_ms"), "fp8_prefill_ms": fp8.get("prefill_ms"),
           "bf16_decode_ms": bf16.get("decode_ms"), "fp8_decode_ms": fp8.get("decode_ms"),
           "fp8_vs_bf16": (bf16["latency_ms_median"] / fp8["latency_ms_median"]
                           if "error" not in bf16 and "error" not in fp8 else None),
           "beam_overlap": (beam_overlap(bf16["beams"], fp8["beams"])
                            if "beams" in bf16 and "beams" in fp8 else None),
           "compiled_from": [c.get("compiled_from") for c in cells.values()],
           "errors": [c["error"] for c in cells.values() if "error" in c] or None}
    anchor = ANCHOR_H100.get((ctx, batch))
    if anchor and row["fp8_ms"] and row["bf16_ms"]:
      row.update(sid_gr_h100_ms=anchor[0], fp8_speedup_vs_sid_gr=anchor[0] / row["fp8_ms"],
                 bf16_speedup_vs_sid_gr=anchor[0] / row["bf16_ms"])
    rows.append(row)
    print(json.dumps(row), flush=True)
    write_json(args.out, _table_result(args, rows, compile_wall_s, len(grid)))
  nan = float("nan")
  print(f"\n{'ctx':>5} {'batch':>5} {'bf16 ms':>8} {'fp8 ms':>8} {'fp8 prefill':>11} "
        f"{'overlap':>7} {'SID-GR H100':>11} {'x SID-GR':>8}")
  for r in rows:
    print(f"{r['ctx']:5} {r['batch']:5} {r['bf16_ms'] or nan:8.2f} "
          f"{r['fp8_ms'] or nan:8.2f} {r['fp8_prefill_ms'] or nan:11.2f} "
          f"{r['beam_overlap'] if r['beam_overlap'] is not None else nan:7.3f} "
          f"{r.get('sid_gr_h100_ms', nan):11.1f} {r.get('fp8_speedup_vs_sid_gr', nan):8.2f}")
  print("summary:", json.dumps(rows[:2]), "...")


def _parent_backend() -> None:
  """Starts jax's backend in this (parent) process, for the result's device, without
  preallocating the GPU's memory, which the rungs' child processes need; their
  environment stays as given."""
  given = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  try:
    import jax
    jax.devices()
  finally:
    if given is None:
      del os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"]
    else:
      os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = given


def _table_result(args, rows: list[dict], compile_wall_s: float, cells: int) -> dict:
  """The Qwen3 table's result with the rows timed so far (written after each, so that a
  run cut off keeps them; `complete` says whether every cell of the grid is in)."""
  _parent_backend()
  return {**header("wall clock around block_until_ready, after 2 warm-ups; prefill: the "
                     "model's encode alone"), "preset": args.preset, "beam": args.beam,
            "anchor": "SID-GR on an H100 (NVIDIA recsys-examples); this device differs: "
                      "an H200 has the H100's compute and 1.4x its memory bandwidth",
            "beam_overlap": "mean over requests of the top-W item sets' overlap, FP8 "
                            "against bf16, on the same random weights and prompts",
            "compile_jobs": args.jobs, "compile_wall_s": compile_wall_s,
            "complete": len(rows) == cells, "summary": rows}


def _ladder_result(args, ladder: list[dict], sweep: list[dict]) -> dict:
  """The result of the rungs and sweep points run so far: header, summary, rows."""
  by = {r["rung"]: r for r in ladder if "latency_ms_median" in r}
  ms = lambda name: by[name]["latency_ms_median"] if name in by else None
  summary = {"smoke": args.smoke, "preset": args.preset, "layers": args.layers or None,
             "batch": args.batch,
             "beam": args.beam, "xla_bf16_ms": ms("xla_bf16"), "bf16_ms": ms("kernels_bf16"),
             "fp8_ms": ms("fp8")}
  if ms("fp8") and ms("kernels_bf16"):
    summary["fp8_vs_bf16"] = ms("kernels_bf16") / ms("fp8")
  if ms("fp8") and ms("xla_bf16"):
    summary["fp8_vs_xla_bf16"] = ms("xla_bf16") / ms("fp8")
  if ms("fp8") and ms("fp8_constrained"):
    summary["constrained_over_unconstrained"] = ms("fp8_constrained") / ms("fp8")
  if args.devices > 1:
    rps = lambda name: by[name]["requests_per_s"] if name in by else None
    summary.update(gpus=args.devices, batch_per_gpu=args.batch,
                   one_gpu_rps=rps("fp8"), dp_rps=rps("fp8_dp"), dp_ep_rps=rps("fp8_dp_ep"),
                   moe_layer_ms={name: by[name].get("moe_layer_ms") for name in by})
    if rps("fp8"):
      summary.update(dp_speedup=rps("fp8_dp") and rps("fp8_dp") / rps("fp8"),
                     ep_speedup=rps("fp8_dp_ep") and rps("fp8_dp_ep") / rps("fp8"))
    if rps("fp8_dp") and rps("fp8_dp_ep"):
      summary["ep_over_dp"] = rps("fp8_dp_ep") / rps("fp8_dp")
  if "fp8" in by and "breakdown" in by["fp8"]:
    b = by["fp8"]["breakdown"]
    summary["fp8_non_gemm_ms"] = b["kernel_ms"] - b["ms"]["gemm"]
    summary["fp8_idle_fraction"] = b["idle_ms"] / ms("fp8")
  _parent_backend()
  result = {**header("wall clock around block_until_ready, after 2 warm-ups; breakdown "
                     "by CUPTI over one search"), "summary": summary, "ladder": ladder,
            "sweep": sweep}
  result["summary"]["device"] = result["device"]
  result["summary"]["commit"] = result["git_commit"]
  return result


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", help="JSON result (default: bench/results/e2e.json, with "
                               "--devices bench/results/multi_gpu.json)")
  ap.add_argument("--devices", type=int, default=1,
                  help="N >= 2: the scale-out rungs over N GPUs (--batch per GPU)")
  ap.add_argument("--preset", default="moe-4b")
  ap.add_argument("--layers", type=int, default=0, help="cut the preset to N layers")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--beam", type=int, default=512)
  ap.add_argument("--context", type=int, default=0,
                  help="context (Qwen3: prompt) length of the ladder (default: the preset's)")
  ap.add_argument("--runs", type=int, default=10)
  ap.add_argument("--items", type=int, default=10_000_000, help="for fp8_constrained")
  ap.add_argument("--rungs", help=f"of {list(RUNGS)} (default: {','.join(DEFAULT_RUNGS)}; "
                                 f"with --devices {','.join(SCALING_RUNGS)})")
  ap.add_argument("--sweep", action="store_true")
  ap.add_argument("--no-breakdown", action="store_true")
  ap.add_argument("--qwen3-table", action="store_true",
                  help="the Qwen3 serving table (prompt lengths x batches, bf16 and FP8)")
  ap.add_argument("--contexts", help="prompt lengths of the table (default 1000,5000)")
  ap.add_argument("--batches", help="batch sizes of the table (default 1,2,4,8)")
  ap.add_argument("--jobs", type=int, default=1,
                  help="the table's cells compiled in this many processes at once first")
  ap.add_argument("--smoke", action="store_true", help="tiny preset, any backend")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  ap.add_argument("--child-out", help=argparse.SUPPRESS)
  ap.add_argument("--child-spec", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    row = run_rung(args.child, **json.loads(args.child_spec))
    with open(args.child_out, "w") as f:
      json.dump(row, f)
    return
  scaling = args.devices > 1
  if args.smoke:  # with --devices, a preset with MoE layers to split
    args.preset = "tiny-moe" if scaling else "tiny"
    args.batch, args.beam, args.runs, args.items = 2, 8, 2, 200
  args.out = args.out or f"bench/results/{'multi_gpu' if scaling else 'e2e'}.json"
  if args.qwen3_table:  # the published grid, or a tiny one at the smoke size
    args.preset = "qwen3-tiny" if args.smoke else args.preset
    args.contexts = args.contexts or ("16,24" if args.smoke else "1000,5000")
    args.batches = args.batches or ("1,2" if args.smoke else "1,2,4,8")
    return qwen3_table(args)
  rungs = args.rungs or ",".join(SCALING_RUNGS if scaling else DEFAULT_RUNGS)
  ladder = []
  for rung in filter(None, rungs.split(",")):
    if rung not in RUNGS:
      raise SystemExit(f"--rungs: unknown rung {rung!r}; known: {list(RUNGS)}")
    if rung in MESH_RUNGS and not scaling:
      raise SystemExit(f"--rungs: {rung} runs over --devices N >= 2 GPUs")
    ladder.append(_child(rung, args))
    print(json.dumps({k: v for k, v in ladder[-1].items() if k != "breakdown"}), flush=True)
    write_json(args.out, _ladder_result(args, ladder, []))  # if cut off later
  sweep = []
  if args.sweep:
    points = ([("batch", b) for b in (1, 8, 64)] + [("beam", w) for w in (64, 1024)]
              + [("context", n) for n in (128, 3000)])
    for axis, value in points:
      row = _child("fp8", args, breakdown=False, runs=max(3, args.runs // 2), **{axis: value})
      sweep.append({"sweep_axis": axis, **row})
      print(json.dumps(sweep[-1]), flush=True)
  result = _ladder_result(args, ladder, sweep)
  write_json(args.out, result)
  if any("breakdown" in r for r in ladder) or sweep:
    _figure(result, os.path.splitext(args.out)[0] + ".png")
  print(f"\n{'rung':20} {'compile s':>9} {'median ms':>9} {'min':>7} {'max':>7} "
        f"{'req/s':>7} {'kernel':>7} {'idle':>6} {'gemm':>6} {'quant':>6} {'attn':>6}")
  for r in ladder:
    if "error" in r:
      print(f"{r['rung']:20} error: {r['error']}")
      continue
    b = r.get("breakdown", {"ms": collections.defaultdict(float), "kernel_ms": 0,
                            "idle_ms": 0})
    print(f"{r['rung']:20} {r['compile_s']:9.1f} {r['latency_ms_median']:9.2f} "
          f"{r['latency_ms_min']:7.2f} {r['latency_ms_max']:7.2f} {r['requests_per_s']:7.0f} "
          f"{b['kernel_ms']:7.2f} {b['idle_ms']:6.2f} {b['ms']['gemm']:6.2f} "
          f"{b['ms']['quantize']:6.2f} {b['ms']['attention']:6.2f}")
  print("summary:", json.dumps(result["summary"]))


if __name__ == "__main__":
  main()
