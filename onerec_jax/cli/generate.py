"""Generate the top items for user contexts by beam search; prints them, writes JSON.

Loads a checkpoint (default: the shipped demo) or random weights of a preset, takes
contexts from an .npz file (docs/generate.md) or makes random ones, runs batches of
--batch-size requests (one compiled bucket) and reports the compile time, per-batch
latency and throughput. With --valid-items or --random-items only real items are
decoded. A pre-quantized FP8 checkpoint runs with the FP8 rules it was saved with.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np
import tqdm

from onerec_jax import generate as gen
from onerec_jax import quant
from onerec_jax.config import preset
from onerec_jax.model.onerec import init_params



def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("checkpoint", nargs="?", default=None,
                      help="converted checkpoint or PyTorch-format source (default: the "
                           "shipped demo in checkpoints/demo, converted once and cached, with "
                           "its sample test users and valid-item table)")
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
                      help="requests per compiled batch (the last one is padded)")
  items = search.add_mutually_exclusive_group()
  items.add_argument("--valid-items", metavar="NPZ",
                     help="decode only these items: item_ids [N], semantic_ids [N, levels]")
  items.add_argument("--random-items", type=int, metavar="N",
                     help="decode only N random valid items (for trials)")
  out = parser.add_argument_group("output")
  out.add_argument("--top", type=int, default=5, help="items printed per request")
  out.add_argument("--print-requests", type=int, default=3, help="requests printed")
  out.add_argument("--output", metavar="JSON", help="write every result and the timings")
  parser.add_argument("--seed", type=int, default=0, help="for random weights/contexts")


def _load_model(args):
  """(config, params, rules, source) for the chosen weights."""
  if args.preset:
    config = preset(args.preset)
    params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(args.seed))
    return config, params, None, f"random weights of preset {args.preset}"
  from onerec_jax import checkpoint  # orbax is needed only for checkpoints
  path = pathlib.Path(args.checkpoint or checkpoint.DEMO_SOURCE)
  if path.resolve() == checkpoint.DEMO_SOURCE:
    config, params = checkpoint.load_demo()
    return config, params, None, "shipped demo checkpoint"
  if (path / checkpoint.store.METADATA_NAME).exists():
    config, params = checkpoint.load(path)
    return config, params, checkpoint.load_rules(path), str(path)
  config = checkpoint.read_config(path)  # a PyTorch-format source, converted in memory
  return config, checkpoint.torch_to_jax(checkpoint.open_source(path), config), None, str(path)


def _items(args, config):
  if args.valid_items:
    with np.load(args.valid_items) as data:
      ids, sem = data["item_ids"], data["semantic_ids"]
  elif args.random_items:
    ids, sem = gen.random_items(config, args.random_items, args.seed)
  else:
    return None
  return gen.build_item_table(ids, sem, config.codebook_sizes)


def _results(res: gen.Result, request_ids) -> list[dict]:
  """Per request, its non-empty slots best first."""
  out = []
  for i, rid in enumerate(request_ids):
    items = []
    for w in np.flatnonzero(res.semantic_ids[i, :, 0] != gen.EMPTY):
      item = {"semantic_ids": res.semantic_ids[i, w].tolist(),
              "score": float(res.scores[i, w])}
      if res.item_ids is not None:
        item["item_id"] = int(res.item_ids[i, w])
      items.append(item)
    out.append({"request": int(rid), "items": items})
  return out


def _demo_defaults(args: argparse.Namespace) -> None:
  """With the shipped demo and no inputs named: its sample test users and its valid items."""
  from onerec_jax import checkpoint
  if args.preset or (args.checkpoint and pathlib.Path(args.checkpoint).resolve()
                     != checkpoint.DEMO_SOURCE):
    return
  if args.contexts is None and args.random is None:
    args.contexts = str(checkpoint.DEMO_SOURCE / "contexts.npz")
  if args.valid_items is None and args.random_items is None:
    args.valid_items = str(checkpoint.DEMO_SOURCE / "valid_items.npz")


def _prepare(args: argparse.Namespace):
  """(config, params, rules, source, features, mask, request_ids, table, batch), with
  every input checked."""
  _demo_defaults(args)
  config, params, rules, source = _load_model(args)
  if args.dtype:
    config = config.replace(dtype=args.dtype)
  if args.fp8 and rules is None:
    rules = quant.default_rules(config)
    params = jax.jit(quant.quantize_params, static_argnums=1)(params, rules)
  if args.contexts:
    features, mask, request_ids = gen.load_contexts(args.contexts, config)
  else:
    n = 8 if args.random is None else args.random
    features, mask, request_ids = gen.random_contexts(config, n, args.seed), None, np.arange(n)
  table = _items(args, config)
  batch = gen.check_inputs(config, features, mask, args.beam_width, table)
  if args.batch_size < 1:
    raise gen.GenerateInputError(f"--batch-size must be positive, got {args.batch_size}")
  return config, params, rules, source, features, mask, request_ids, table, batch


def run(args: argparse.Namespace) -> int:
  try:
    config, params, rules, source, features, mask, request_ids, table, batch = _prepare(args)
  except (gen.GenerateInputError, OSError, KeyError, ValueError) as e:
    print(f"onerec-jax generate: error: {e}", file=sys.stderr)
    return 2

  buckets = (args.batch_size,)
  kw = dict(beam_width=args.beam_width, valid_items=table, rules=rules,
            batch_buckets=buckets)
  compile_s = gen.warmup(params, config, **kw)[args.batch_size]
  print(f"{source}: {jax.devices()[0].device_kind}, beam width {args.beam_width}, "
        f"batch {args.batch_size}, dtype {config.dtype}{', FP8' if rules else ''}"
        f"{'' if table is None else f', {table.num_items} valid items'}; "
        f"compiled in {compile_s:.2f} s", file=sys.stderr)
  parts, latencies = [], []
  spans = gen.chunks(batch, buckets)
  for start, stop, _ in tqdm.tqdm(spans, desc="batches", unit="batch", file=sys.stderr,
                                  disable=len(spans) < 4):
    take = lambda d: None if d is None else {k: v[start:stop] for k, v in d.items()}
    t0 = time.perf_counter()
    parts.append(gen.generate(params, config, take(features), mask=take(mask), **kw))
    latencies.append(time.perf_counter() - t0)
  res = gen.Result(*(None if parts[0][i] is None else np.concatenate([p[i] for p in parts])
                     for i in range(3)))
  total = sum(latencies)
  timing = {"compile_s": compile_s, "batches": len(latencies),
            "latency_ms_median": 1e3 * float(np.median(latencies)),
            "latency_ms_max": 1e3 * max(latencies), "throughput_rps": batch / total,
            "device": jax.devices()[0].device_kind}
  results = _results(res, request_ids)
  for r in results[:args.print_requests]:
    shown = ", ".join(f"{tuple(it['semantic_ids'])}"
                      f"{'' if 'item_id' not in it else ' #%d' % it['item_id']}"
                      f" {it['score']:.3f}" for it in r["items"][:args.top])
    print(f"request {r['request']}: {shown}")
  print(f"{batch} requests in {len(latencies)} batches: median batch latency "
        f"{timing['latency_ms_median']:.1f} ms, {timing['throughput_rps']:.1f} requests/s "
        f"(compile {compile_s:.2f} s)")
  if args.output:
    with open(args.output, "w") as f:
      json.dump({"source": source, "config": config.to_dict(), "fp8": rules is not None,
                 "beam_width": args.beam_width,
                 "batch_size": args.batch_size,
                 "valid_items": None if table is None else table.num_items,
                 "timing": timing, "results": results}, f, indent=1)
  return 0
