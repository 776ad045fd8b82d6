"""Soak test of generate(): many calls with mixed batch sizes inside warmed buckets, with
and without valid items, unquantized and FP8, on one model.

After warm-up (generate.warmup for every bucket of every variant) nothing may compile
(jax's backend compile events, onerec_jax.generate.compile_cache) and memory must stay
flat: the mean host RSS, and the device's bytes in use where the device reports them, over
the last 100 calls within 2% of their mean over calls 100-200. Writes JSON whose
"summary" says what was measured and whether it passed; exits 1 when it did not.

  python scripts/soak_generate.py --out bench/results/soak_generate_h200.json  # 1,000 calls
  python scripts/soak_generate.py --smoke                                      # a CPU check
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import jax
import numpy as np

from bench_common import header, parse_args, write_json
from onerec_jax import generate as gen
from onerec_jax import quant
from onerec_jax.config import preset
from onerec_jax.model import default_rules, init_params

FLAT = 0.02  # largest relative change of mean memory, last 100 calls vs calls 100-200
SMOKE = ("--calls", "300", "--buckets", "2", "4", "--beam", "4", "--items", "64")


def host_rss_bytes() -> int:
  """Resident set size of this process now (Linux /proc)."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def device_bytes() -> int | None:
  """Bytes the default device holds now, or None where it does not say (the CPU)."""
  stats = jax.devices()[0].memory_stats()
  return None if stats is None else int(stats["bytes_in_use"])


def _window_change(samples: list[int | None]) -> dict | None:
  """Means over calls 100-200 and over the last 100, and the relative change."""
  if samples[0] is None:
    return None
  early, late = statistics.mean(samples[100:200]), statistics.mean(samples[-100:])
  return {"calls_100_200": early, "last_100": late, "change": late / early - 1}


def soak(config, params, *, calls: int, buckets: tuple[int, ...], beam_width: int,
         items: int, seed: int = 0, progress=None) -> dict:
  """The soak run; returns {"summary": ..., "samples": per-call records}."""
  if calls < 300:
    raise ValueError(f"calls={calls}: needs at least 300 (windows 100-200 and the last 100)")
  rules = default_rules(config)
  qparams = jax.jit(quant.quantize_params, static_argnums=1)(params, rules)
  table = gen.build_item_table(*gen.random_items(config, items, seed), config.codebook_sizes)
  variants = [dict(params=p, rules=r, valid_items=v, name=f"{name}{'+items' if v else ''}")
              for (name, p, r), v in itertools.product(
                  (("fp16", params, None), ("fp8", qparams, rules)), (None, table))]
  compiles = lambda: gen.compile_cache.compile_events()["compiles"]
  t0, before = time.perf_counter(), compiles()
  for v in variants:
    gen.warmup(v["params"], config, beam_width=beam_width, valid_items=v["valid_items"],
               rules=v["rules"], batch_buckets=buckets)
  warmup_s, warm = time.perf_counter() - t0, compiles()
  rng = np.random.default_rng(seed)
  samples = []
  t0 = time.perf_counter()
  for i in range(calls):
    v = variants[i % len(variants)]
    batch = int(rng.integers(1, max(buckets) + 1))
    start = time.perf_counter()
    res = gen.generate(v["params"], config, gen.random_contexts(config, batch, seed + i),
                       beam_width=beam_width, valid_items=v["valid_items"], rules=v["rules"],
                       batch_buckets=buckets)
    assert res.scores.shape == (batch, beam_width)
    samples.append({"call": i, "variant": v["name"], "batch": batch,
                    "seconds": time.perf_counter() - start, "host_rss": host_rss_bytes(),
                    "device_bytes": device_bytes()})
    if progress and (i + 1) % 100 == 0:
      progress(i + 1)
  host = _window_change([s["host_rss"] for s in samples])
  device = _window_change([s["device_bytes"] for s in samples])
  after = compiles() - warm
  flat = all(abs(w["change"]) <= FLAT for w in (host, device) if w is not None)
  summary = {
      "calls": calls, "variants": [v["name"] for v in variants], "buckets": list(buckets),
      "batch_sizes": [1, max(buckets)], "beam_width": beam_width, "valid_items": items,
      "warmup_compiles": warm - before, "warmup_s": warmup_s,
      "compiles_after_warmup": after, "host_rss_bytes": host, "device_bytes_in_use": device,
      "flat_within": FLAT, "seconds": time.perf_counter() - t0,
      "call_ms_median": 1e3 * statistics.median(s["seconds"] for s in samples),
      "passed": after == 0 and flat}
  return {"summary": summary, "samples": samples}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="tiny")
  p.add_argument("--calls", type=int, default=1000)
  p.add_argument("--buckets", type=int, nargs="+", default=[1, 2, 4, 8, 16])
  p.add_argument("--beam", type=int, default=16)
  p.add_argument("--items", type=int, default=500, help="valid items of the +items variants")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--commit", default=None, help="git commit (default: git rev-parse)")
  p.add_argument("--out", default=None, help="JSON file to write")
  args = parse_args(p, SMOKE)
  config = preset(args.preset)
  params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(args.seed))
  result = soak(config, params, calls=args.calls, buckets=tuple(args.buckets),
                beam_width=args.beam, items=args.items, seed=args.seed,
                progress=lambda n: print(f"{n} calls", file=sys.stderr, flush=True))
  result = {**header("wall clock per generate() call, host arrays in and out",
                     args.commit), "preset": args.preset, **result}
  if args.out:
    write_json(args.out, result)
  summary = result["summary"]
  print({k: summary[k] for k in ("calls", "compiles_after_warmup", "host_rss_bytes",
                                 "device_bytes_in_use", "call_ms_median", "passed")})
  return 0 if summary["passed"] else 1


if __name__ == "__main__":
  sys.exit(main())
