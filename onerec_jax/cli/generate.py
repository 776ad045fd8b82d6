"""Generate the top items for user contexts by beam search; prints them, writes JSON.

Loads a checkpoint (default: the shipped demo, with its sample test users and valid-item
table) or random weights of a preset, takes contexts from an .npz file (docs/generate.md)
or makes random ones, and runs them in batches of --batch-size requests (one compiled
bucket; fewer requests make a smaller batch). With --valid-items or --random-items only
real items are decoded. A pre-quantized FP8 checkpoint runs with the FP8 rules it was
saved with. The requests are split over every device (--devices, --expert-parallel,
and several hosts with --coordinator: docs/scaling.md). Every input is checked before the
model loads; compiled executables are kept in jax's persistent compilation cache, so a
second run with the same model, batch and beam width compiles nothing.
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import threading
import time

import numpy as np

from onerec_jax.cli import STARTED
from onerec_jax.cli._paths import writable_file
from onerec_jax.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", nargs="?", default=None,
                      help="converted checkpoint or PyTorch-format source (default: the "
                           "shipped demo, converted once into the user cache folder)")
  model = parser.add_argument_group("model")
  model.add_argument("--preset", help="use random weights of this config preset instead")
  model.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                     help="compute dtype (default: the config's)")
  model.add_argument("--fp8", action="store_true",
                     help="quantize the weights now with the paper's FP8 rules (an FP8 "
                          "checkpoint runs in FP8 without this)")
  src = parser.add_mutually_exclusive_group()
  src.add_argument("--contexts", metavar="NPZ", help="context file (docs/generate.md)")
  src.add_argument("--random", type=int, metavar="N",
                   help="N random contexts (default: 8, or the demo's sample users)")
  search = parser.add_argument_group("search")
  search.add_argument("--beam-width", type=int, default=64, help="items per request")
  search.add_argument("--batch-size", type=int, default=32,
                      help="most requests per compiled batch")
  items = search.add_mutually_exclusive_group()
  items.add_argument("--valid-items", metavar="NPZ",
                     help="decode only these items: item_ids [N], semantic_ids [N, levels]")
  items.add_argument("--random-items", type=int, metavar="N",
                     help="decode only N random valid items (for trials)")
  cache = search.add_mutually_exclusive_group()
  cache.add_argument("--compile-cache", metavar="DIR",
                     help="jax's persistent compilation cache folder (default: "
                          "$ONEREC_JAX_COMPILE_CACHE, else <user cache>/jax-compile)")
  cache.add_argument("--no-compile-cache", action="store_true",
                     help="compile without the persistent cache")
  search.add_argument("--no-preload", action="store_true",
                      help="do not compile the stored search's GPU kernels in the "
                           "background while the weights load (docs/performance.md)")
  devices = parser.add_argument_group("devices (docs/scaling.md)")
  devices.add_argument("--devices", type=int, metavar="N",
                       help="split the requests over the first N devices, each batch "
                            "padded to a multiple of N (default: all of them; every "
                            "process's with --coordinator)")
  devices.add_argument("--expert-parallel", type=int, default=1, metavar="M",
                       help="groups of M devices share each MoE layer's routed experts "
                            "(must divide --devices; 1: experts replicated)")
  devices.add_argument("--coordinator", metavar="HOST:PORT",
                       help="join a run of several processes (hosts) through "
                            "jax.distributed; process 0 listens there")
  devices.add_argument("--num-processes", type=int, metavar="N",
                       help="processes in the run (with --coordinator)")
  devices.add_argument("--process-id", type=int, metavar="I",
                       help="this process's index in [0, N) (with --coordinator); "
                            "process 0 prints and writes --output")
  out = parser.add_argument_group("output")
  out.add_argument("--top", type=int, default=5, help="items printed per request")
  out.add_argument("--print-requests", type=int, default=16,
                   help="requests printed (all of them are in --output)")
  out.add_argument("--output", metavar="JSON", help="write every result and the timings")
  parser.add_argument("--seed", type=int, default=0, help="for random weights/contexts")


def _positive(args: argparse.Namespace, *names: str) -> None:
  for name in names:
    value = getattr(args, name)
    if value is not None and value < 1:
      raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def _config(args):
  """The model's config, read without loading its weights."""
  from onerec_jax import checkpoint
  from onerec_jax.config import preset
  if args.preset:
    config = preset(args.preset)
  else:
    config = checkpoint.read_config(args.checkpoint or checkpoint.DEMO_SOURCE)
  return config.replace(dtype=args.dtype) if args.dtype else config


def _requests(args, config):
  """(count, contexts, request_ids, valid_items or None), where contexts(start, stop) gives
  those requests' (features, mask or None), checked against the model: the demo's sample
  users and valid items when the demo runs with no inputs named. Random contexts are drawn
  batch by batch (request i from the seed and i), so the first batch waits only for its
  own."""
  from onerec_jax import checkpoint
  from onerec_jax import generate as gen
  demo = args.checkpoint is None and args.preset is None
  path = args.contexts
  if demo and path is None and args.random is None:
    path = checkpoint.DEMO_SOURCE / "contexts.npz"
  if path is not None:
    features, mask, request_ids = gen.load_contexts(path, config)
    count = len(request_ids)
    take = lambda d, start, stop: None if d is None else {k: v[start:stop]
                                                          for k, v in d.items()}
    contexts = lambda start, stop: (take(features, start, stop), take(mask, start, stop))
  else:
    count = 8 if args.random is None else args.random
    request_ids = np.arange(count)
    contexts = lambda start, stop: (
        gen.random_contexts(config, stop - start, args.seed, start=start), None)
  items = args.valid_items
  if demo and items is None and args.random_items is None:
    items = checkpoint.DEMO_SOURCE / "valid_items.npz"
  if items is not None:
    ids, sem = gen.load_valid_items(items)
    valid_items = gen.build_item_table(ids, sem, config.codebook_sizes)
  elif args.random_items:
    valid_items = gen.build_item_table(*gen.random_items(config, args.random_items,
                                                         args.seed), config.codebook_sizes)
  else:
    valid_items = None
  # A file's requests are checked whole; random ones are well formed, one stands for all.
  gen.check_inputs(config, *contexts(0, count if path is not None else 1),
                   args.beam_width, valid_items)
  return count, contexts, request_ids, valid_items


def _weights(args, config, rules):
  """(params, source) for the chosen weights, quantized with rules (_rules') where the
  checkpoint is not quantized already (--fp8)."""
  import jax
  from onerec_jax import checkpoint, quant
  from onerec_jax.model import init_params
  if args.preset:
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(args.seed))
    stored, source = None, f"random weights of preset {args.preset}"
  else:
    ckpt = checkpoint.load(args.checkpoint)
    params, stored, source = ckpt.params, ckpt.rules, ckpt.source
  if rules is not None and stored is None:
    params = jax.jit(quant.quantize_params, static_argnums=1)(params, rules)
  return params, source


def _rules(args, config):
  """The FP8 rules the search runs with (a quantized checkpoint's own, else the paper's
  with --fp8, else None), read without loading the weights."""
  from onerec_jax import checkpoint
  from onerec_jax.model import default_rules
  stored = None
  if args.checkpoint is not None and checkpoint.store.is_converted(args.checkpoint):
    stored = checkpoint.load_rules(args.checkpoint)
  return default_rules(config) if args.fp8 and stored is None else stored


def _results(res, request_ids) -> list[dict]:
  """Per request, its non-empty slots best first."""
  from onerec_jax import generate as gen
  out = []
  for i, rid in enumerate(request_ids):
    items = []
    for w in np.flatnonzero(res.semantic_ids[i, :, 0] != gen.EMPTY):
      item = {"rank": len(items) + 1, "semantic_ids": res.semantic_ids[i, w].tolist(),
              "log_prob": float(res.scores[i, w])}
      if res.item_ids is not None:
        item["item_id"] = int(res.item_ids[i, w])
      items.append(item)
    out.append({"request_id": int(rid), "items": items})
  return out


def _table(results: list[dict], top: int, requests: int) -> str:
  """The printed results: a header row, then one row per (request, rank)."""
  with_ids = any("item_id" in it for r in results for it in r["items"])
  head = f"{'request_id':>10} {'rank':>4} " + (f"{'item_id':>9} " if with_ids else "")
  lines = [head + f"{'semantic_ids':<20} {'log_prob':>9}"]
  for r in results[:requests]:
    for it in r["items"][:top]:
      item = f"{it['item_id']:>9} " if with_ids else ""
      sem = "(" + ", ".join(map(str, it["semantic_ids"])) + ")"
      lines.append(f"{r['request_id']:>10} {it['rank']:>4} {item}{sem:<20} "
                   f"{it['log_prob']:>9.3f}")
  if len(results) > requests:
    lines.append(f"... {len(results) - requests} more requests (all of them in --output)")
  return "\n".join(lines)


def _hosts(args) -> None:
  """Joins the run of several processes that --coordinator names (before any jax call)."""
  given = [args.coordinator, args.num_processes, args.process_id]
  if any(v is not None for v in given) and any(v is None for v in given):
    raise InputError("--coordinator, --num-processes and --process-id go together")
  if args.coordinator is not None:
    from onerec_jax.generate import sharding
    sharding.initialize_hosts(args.coordinator, args.num_processes, args.process_id)


def _mesh(args, config):
  """The mesh --devices and --expert-parallel ask for (None: generate's default, every
  device), resolved as generate resolves it."""
  from onerec_jax.generate import sharding
  asked = args.devices is not None or args.expert_parallel > 1
  mesh = sharding.make_mesh(args.devices, expert_parallel=args.expert_parallel) if asked \
      else None
  return sharding.resolve(mesh, config)


def _start_backend(jax) -> None:
  """Starts the GPU backend (seconds) on a thread while the package's modules import. A
  command that stops early (bad input: exit code 2) waits for it before jax's exit
  handler clears the backends under it; a backend that fails to start raises where the
  command first uses the devices, not on the thread."""
  def start():
    try:
      jax.devices()
    except Exception:  # noqa: BLE001  (raised again, on the main thread, by its first use)
      pass
  thread = threading.Thread(target=start, name="onerec-backend", daemon=True)
  atexit.register(thread.join)  # atexit runs the last registered first: before jax's
  thread.start()


def run(args: argparse.Namespace) -> int:
  # Seconds from the command's start at which each start-up phase ended.
  phases = {}
  mark = lambda name: phases.setdefault(name, time.perf_counter() - STARTED)
  # Everything the user typed is checked before the weights load or the device works.
  _positive(args, "beam_width", "batch_size", "top", "print_requests", "random",
            "random_items", "devices", "expert_parallel", "num_processes")
  output = writable_file(args.output)
  import jax
  _hosts(args)
  _start_backend(jax)
  config = _config(args)
  mesh = _mesh(args, config)
  batch, contexts, request_ids, valid_items = _requests(args, config)
  from onerec_jax import checkpoint
  from onerec_jax import generate as gen
  if not args.no_compile_cache:
    gen.compile_cache.enable(args.compile_cache)
  rules = _rules(args, config)
  per_batch = min(args.batch_size, batch)
  (bucket,) = gen.sharding.round_buckets((per_batch,), mesh)  # padded to the devices
  kw = dict(beam_width=args.beam_width, valid_items=valid_items, rules=rules,
            batch_buckets=(bucket,), mesh=mesh)
  mark("inputs")  # imports done, inputs read and checked, the devices set up

  preload = None  # the stored search's kernels, compiled while the weights load
  if not (args.no_compile_cache or args.no_preload):
    preload = gen.preload(checkpoint.abstract_params(config, rules), config, **kw)
  t_load = time.perf_counter()
  params, source = _weights(args, config, rules)
  if mesh is not None:
    params = gen.sharding.place_params(params, mesh)
  jax.block_until_ready(params)
  load_s = time.perf_counter() - t_load  # read (or made), quantized, placed
  mark("loaded")
  lead = jax.process_index() == 0  # prints and writes; the others compute

  def log(*parts, **kw):
    if lead:
      print(*parts, **kw, file=sys.stderr)

  devices = ("1 x " if mesh is None else f"{mesh.size} x ") + jax.devices()[0].device_kind
  if mesh is not None and gen.sharding.expert_shards(mesh) > 1:
    devices += f" (experts split over {gen.sharding.expert_shards(mesh)})"
  log(f"{source}: {devices}, {batch} requests, beam width {args.beam_width}, batch "
      f"{per_batch}, dtype {config.dtype}{', FP8' if rules else ''}"
      f"{'' if valid_items is None else f', {valid_items.num_items} valid items'}")
  before = gen.compile_cache.compile_events()
  log("compiling ...", end="", flush=True)
  programs = {}
  compile_s = gen.warmup(params, config, progress=lambda b, s, how: programs.update({b: how}),
                         **kw)[bucket]
  mark("warmed")  # compiled (or read from the cache) and run once
  hits = gen.compile_cache.compile_events()["hits"] - before["hits"]
  how = {"exported": ", the stored program: nothing traced",
         "traced": "", "process": ""}[programs[bucket]]
  log(f"\rcompiled in {compile_s:.2f} s"
      f"{' (from the persistent compilation cache' + how + ')' if hits else ''}")

  parts, latencies = [], []
  spans = gen.chunks(batch, (per_batch,))
  for i, (start, stop, _) in enumerate(spans):
    features, mask = contexts(start, stop)
    t0 = time.perf_counter()
    parts.append(gen.generate(params, config, features, mask=mask, **kw))
    latencies.append(time.perf_counter() - t0)
    if i == 0:  # from the command's start: the start-up a user waits through
      first_result_s = mark("first_result")
    if len(spans) > 3:
      log(f"\rbatch {i + 1}/{len(spans)}", end="", flush=True)
  if len(spans) > 3:
    log()
  res = gen.Result(*(None if parts[0][i] is None else np.concatenate([p[i] for p in parts])
                     for i in range(3)))
  total = sum(latencies)
  if preload is not None:
    preload.wait()
  timing = {"load_s": load_s, "compile_s": compile_s, "compile_cache_hit": bool(hits),
            "first_result_s": first_result_s, "phases_s": phases,
            "program": programs[bucket],
            "preload": None if preload is None else {
                "kernels": preload.kernels, "seconds": preload.seconds,
                "error": preload.error},
            "batches": len(latencies), "batch_size": per_batch, "total_s": total,
            "throughput_rps": batch / total, "device": jax.devices()[0].device_kind,
            "devices": 1 if mesh is None else mesh.size,
            "expert_parallel": 1 if mesh is None else gen.sharding.expert_shards(mesh)}
  if len(latencies) > 1:
    timing.update(latency_ms_median=1e3 * float(np.median(latencies)),
                  latency_ms_max=1e3 * max(latencies))
  if not lead:
    return 0
  results = _results(res, request_ids)
  print(_table(results, args.top, args.print_requests))
  if len(latencies) > 1:
    speed = (f"median batch latency {timing['latency_ms_median']:.1f} ms (max "
             f"{timing['latency_ms_max']:.1f})")
  else:
    speed = f"one batch in {1e3 * total:.1f} ms"
  print(f"{batch} requests in {len(latencies)} batch{'es' if len(latencies) > 1 else ''} "
        f"of up to {bucket}: {speed}, {timing['throughput_rps']:.1f} requests/s",
        file=sys.stderr)
  if output:
    output.write_text(json.dumps({
        "source": source, "config": config.to_dict(), "fp8": rules is not None,
        "beam_width": args.beam_width,
        "valid_items": None if valid_items is None else valid_items.num_items,
        "timing": timing, "results": results}, indent=1))
    print(f"wrote {output}", file=sys.stderr)
  return 0
