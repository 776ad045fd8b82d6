"""Where a restarted process's compile and first run go: a trace of one warm warmup.

Runs this script twice in fresh processes over one persistent compilation cache folder:
first cold (fills it: the search traced, lowered, compiled and stored), then warm under
jax's profiler (host events, Python tracer off). The warm process times its steps (the
stored program read, the executable read from XLA's cache, the compile as a whole, the
first run, one more batch) and sums the trace's host events by name. Weights are random,
made on the device (FP8 with the paper's rules unless --bf16). Writes JSON (--out) with
a top-level "summary"; prints a table last.

  python scripts/profile_startup.py --out bench/results/startup_trace_h200.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import header, parse_args, perfetto_trace, write_json  # noqa: E402


def _timed(log: list, name: str, fn):
  """fn, logging (name, seconds) of every call."""
  def wrap(*a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    log.append((name, time.perf_counter() - t0))
    return out
  return wrap


def _host_events(events: list, top: int) -> list:
  """[(name, total ms, count)] of the trace's complete events, largest first."""
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X":
      total[e["name"][:90]] += e.get("dur", 0) / 1e3
      count[e["name"][:90]] += 1
  return [(name, round(ms, 1), count[name]) for name, ms in total.most_common(top)]


def child(args, start: str) -> dict:
  """One process's warmup (start: cold or warm; warm is traced) and one more batch."""
  import jax
  from jax._src import compilation_cache, stages
  from onerec_jax import generate as gen
  from onerec_jax import quant
  from onerec_jax.config import preset
  from onerec_jax.model import default_rules, init_params
  gen.compile_cache.enable(args.cache)
  cfg = preset(args.preset).replace(param_dtype="bfloat16")
  rules = None if args.bf16 else default_rules(cfg)
  make = (lambda k: init_params(cfg, k)) if rules is None else (
      lambda k: quant.quantize_params(init_params(cfg, k), rules))
  params = jax.block_until_ready(jax.jit(make)(jax.random.key(0)))
  calls = []
  jax.export.deserialize = _timed(calls, "stored program read", jax.export.deserialize)
  stages.Traced.lower = _timed(calls, "lower", stages.Traced.lower)
  stages.Lowered.compile = _timed(calls, "XLA compile or cache read", stages.Lowered.compile)
  compilation_cache.get_executable_and_time = _timed(
      calls, "executable read from the cache", compilation_cache.get_executable_and_time)
  with (perfetto_trace() if start == "warm" else contextlib.nullcontext([])) as events:
    t0 = time.perf_counter()
    seconds = gen.warmup(params, cfg, beam_width=args.beam, rules=rules,
                         batch_buckets=(args.batch,))
    warmup_s = time.perf_counter() - t0
    features = gen.random_contexts(cfg, args.batch, 0)
    t0 = time.perf_counter()
    gen.generate(params, cfg, features, beam_width=args.beam, rules=rules,
                 batch_buckets=(args.batch,))
    batch_s = time.perf_counter() - t0
  out = {"compile_s": seconds[args.batch], "first_run_s": warmup_s - seconds[args.batch],
         "next_batch_s": batch_s, "calls": calls}
  if start == "warm":
    out["host_events_ms"] = _host_events(events, args.top)
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="bench/results/startup_trace.json")
  ap.add_argument("--preset", default="moe-4b")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--beam", type=int, default=512)
  ap.add_argument("--bf16", action="store_true", help="unquantized weights")
  ap.add_argument("--top", type=int, default=60, help="host events kept")
  ap.add_argument("--child", choices=["cold", "warm"], help=argparse.SUPPRESS)
  ap.add_argument("--cache", help=argparse.SUPPRESS)
  args = parse_args(ap, ("--preset", "tiny", "--batch", "2", "--beam", "8"))
  if args.child:
    print(json.dumps(child(args, args.child)))
    return
  cache = tempfile.mkdtemp(prefix="onerec-cache-")
  runs = {}
  for start in ("cold", "warm"):  # each in a fresh process; the warm one finds the cache
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                           "--child", start, "--cache", cache], text=True,
                          capture_output=True, check=True)
    runs[start] = json.loads(done.stdout.strip().splitlines()[-1])
  warm = runs["warm"]
  events = {name: ms for name, ms, _ in warm["host_events_ms"]}
  calls = dict(warm["calls"])
  summary = {"preset": args.preset, "batch": args.batch, "beam": args.beam,
             "fp8": not args.bf16, "cold_compile_s": runs["cold"]["compile_s"],
             "warm_compile_s": warm["compile_s"],
             "warm_executable_read_s": calls.get("executable read from the cache"),
             "xla_load_executable_ms": events.get("CommonPjRtClient::Load"),
             "first_run_s": warm["first_run_s"], "next_batch_s": warm["next_batch_s"],
             "triton_first_launches_ms": round(sum(
                 ms for name, ms in events.items() if name.startswith("triton_kernel_call")),
                 1)}
  write_json(args.out, {**header("wall clock of each step in one warm process; host "
                                 "events of its jax.profiler trace summed by name (ms), "
                                 "nested events overlapping"),
                        "summary": summary, "runs": runs})
  print(f"\n{'step':32} {'seconds':>8}")
  for key in ("cold_compile_s", "warm_compile_s", "warm_executable_read_s", "first_run_s",
              "next_batch_s"):
    print(f"{key:32} {summary[key] or float('nan'):8.3f}")
  print("summary:", json.dumps(summary))


if __name__ == "__main__":
  main()
