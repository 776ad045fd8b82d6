"""Latency of the jit-compiled beam search on one device, with random weights made on it.

Reports the compile time, the median device latency of beam_search over --runs runs after
warm-up (inputs already on the device), the end-to-end latency of generate() (host
contexts in, host results out), throughput in requests/s, peak device memory, the device,
the jax version and the git commit; writes JSON to --out. --items N adds constrained
decoding over N random valid items. --kernels reference pins every kernel entry point to its
reference (ONEREC_KERNELS=reference): the baseline later work must beat.

  python scripts/bench_generate.py --preset moe-4b --batch 32 --beam 512 --out r.json

--smoke runs a tiny size anywhere (a CPU check of the script, not a measurement).
"""

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from bench_common import header, parse_args, write_json
from onerec_kernels import backend
from onerec_jax import generate as gen
from onerec_jax.config import preset
from onerec_jax.model import init_params


SMOKE = ("--preset", "tiny", "--param-dtype", "float16", "--batch", "2", "--beam", "4",
         "--runs", "1", "--items", "0", "50")


def _timed(fn, runs: int) -> list[float]:
  out = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


def bench(cfg, params, batch: int, beam: int, runs: int, items: int, seed: int) -> dict:
  """One configuration: compile, warm up, time beam_search and generate()."""
  features = gen.random_contexts(cfg, batch, seed)
  f, m = jax.device_put(gen.pad_batch(cfg, features, None, 0, batch, batch))
  valid_items = None
  row = {"batch": batch, "beam_width": beam, "context_len": cfg.max_context_len,
         "valid_items": items or None}
  if items:
    t0 = time.perf_counter()
    valid_items = gen.build_item_table(*gen.random_items(cfg, items, seed), cfg.codebook_sizes)
    jax.block_until_ready(valid_items)
    row.update(table_build_s=time.perf_counter() - t0, table_bytes=valid_items.nbytes,
               table_max_children=valid_items.max_children)
  t0 = time.perf_counter()
  compiled = gen.lower(params, f, m, valid_items, config=cfg, beam_width=beam).compile()
  row["compile_s"] = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  if mem is not None:
    row["temp_bytes"] = int(mem.temp_size_in_bytes)
  run = lambda: compiled(params, f, m, valid_items)
  _timed(run, 2)  # warm-up
  times = _timed(run, runs)
  row.update(latency_ms_median=1e3 * statistics.median(times),
             latency_ms_min=1e3 * min(times), latency_ms_max=1e3 * max(times), runs=runs,
             throughput_rps=batch / statistics.median(times))
  e2e = _timed(lambda: gen.generate(params, cfg, features, beam_width=beam,
                                    valid_items=valid_items, batch_buckets=(batch,)), 3)
  row["generate_ms_median"] = 1e3 * statistics.median(e2e)
  res = gen.generate(params, cfg, features, beam_width=beam, valid_items=valid_items,
                     batch_buckets=(batch,))
  row["empty_slots"] = int((res.semantic_ids[..., 0] == gen.EMPTY).sum())
  row["scores_descending"] = bool(np.all(np.diff(res.scores, axis=1) <= 0))
  return row


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="moe-4b")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--beam", type=int, default=512)
  p.add_argument("--runs", type=int, default=10)
  p.add_argument("--param-dtype", default="bfloat16")
  p.add_argument("--items", type=int, nargs="*", default=[0],
                 help="valid-item counts to run (0: unconstrained)")
  p.add_argument("--kernels", choices=["reference", "default"], default="reference")
  p.add_argument("--commit", default=None, help="git commit (default: git rev-parse)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  args = parse_args(p, SMOKE)
  if args.kernels == "reference":
    os.environ[backend.ENV] = "reference"  # before anything is traced
  cfg = preset(args.preset).replace(param_dtype=args.param_dtype)
  t0 = time.perf_counter()
  params = jax.block_until_ready(
      jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(args.seed)))
  report = {**header("wall clock around block_until_ready, after 2 warm-up runs",
                     args.commit),
            "preset": args.preset, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
            "kernels": args.kernels,
            "params": cfg.param_count()["total"], "init_s": time.perf_counter() - t0,
            "results": []}
  for items in args.items:  # the report is rewritten after each row: a cut run keeps some
    report["results"].append(bench(cfg, params, args.batch, args.beam, args.runs, items,
                                   args.seed))
    report["peak_bytes_in_use"] = (jax.devices()[0].memory_stats() or {}).get(
        "peak_bytes_in_use")
    print(json.dumps(report["results"][-1]), flush=True)
    if args.out:
      write_json(args.out, report)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
