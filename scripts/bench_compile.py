"""Start-up time: cold and warm compiles of one bucket through the command a user runs.

Writes random-weight converted checkpoints of the preset (FP8 and bf16) once, then for each
runs `onerec-jax generate CKPT --random R --batch-size B --beam-width W` in fresh processes
with one persistent compilation cache folder, first empty (cold: the search traced,
lowered and compiled), then filled (warm, --warm-runs times: the stored program and XLA's
cached executable; the warm figures are the median run's), each followed by a warm
process without the kernel preload (--no-preload), the same-run comparison. Reports the
compile time the command measured, the warm process's time from its start to its first
batch's result (the start-up a user waits through: imports, loading the converted
weights, the compile, the first batch) and its wall time to exit, and each process's
median batch latency over R / B batches: the warm process runs the stored (exported)
program, the cold one the program it traced, so their ratio is the latency change of the
start-up path in the same run.
Writes JSON (--out) with a top-level "summary"; prints a table last.

  python scripts/bench_compile.py --out bench/results/compile_h200.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import header, write_json  # noqa: E402


def write_checkpoints(preset: str, layers: int, folder: str) -> None:
  """Random bf16 weights of the preset saved as converted checkpoints, unquantized and
  FP8 (the paper's rules), in folder/bf16 and folder/fp8; one already there is kept when
  it holds this config, and refused when it holds another."""
  import jax
  from onerec_jax import checkpoint, quant
  from onerec_jax.config import preset as get_preset
  from onerec_jax.model import default_rules, init_params
  cfg = get_preset(preset).replace(param_dtype="bfloat16")
  if layers:
    cfg = cfg.replace(n_layers=layers, moe_layers=tuple(i for i in cfg.moe_layers
                                                         if i < layers))
  missing = []
  for name in ("bf16", "fp8"):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      missing.append(name)
    elif checkpoint.read_config(path) != cfg:
      sys.exit(f"{path}: a checkpoint of another config than {preset} "
               f"(--layers {layers}); remove it or name another --checkpoints folder")
  if not missing:
    return
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  if "bf16" in missing:
    checkpoint.save(os.path.join(folder, "bf16"), cfg, params, source=f"random {preset}")
  if "fp8" in missing:
    rules = default_rules(cfg)
    qparams = jax.jit(quant.quantize_params, static_argnums=1)(params, rules)
    checkpoint.save(os.path.join(folder, "fp8"), cfg, qparams, rules=rules,
                    source=f"random {preset}")


def _folder_bytes(folder: str) -> dict[str, int]:
  """Bytes in the compilation cache folder: the stored (exported) programs, and all."""
  sizes = {"exported": 0, "all": 0}
  for root, _, files in os.walk(folder):
    for name in files:
      size = os.path.getsize(os.path.join(root, name))
      sizes["all"] += size
      sizes["exported"] += size if name.endswith(".jaxexport") else 0
  return sizes


def run_command(ckpt: str, cache: str, batch: int, beam: int, batches: int,
                out: str, xla_flags: str, preload: bool = True) -> dict:
  """One `onerec-jax generate` process over `batches` batches (xla_flags added to its
  XLA_FLAGS; preload False: --no-preload): its wall time and the timing it reports."""
  cmd = [sys.executable, "-m", "onerec_jax", "generate", ckpt,
         "--random", str(batch * batches), "--batch-size", str(batch),
         "--beam-width", str(beam), "--compile-cache", cache,
         "--print-requests", "1", "--output", out, *([] if preload else ["--no-preload"])]
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS"), xla_flags]))
  t0 = time.perf_counter()
  done = subprocess.run(cmd, text=True, capture_output=True, env=env)
  wall = time.perf_counter() - t0
  if done.returncode:
    return {"error": done.stderr.strip().splitlines()[-3:], "wall_s": wall}
  report = json.load(open(out))
  timing = report["timing"]
  return {"wall_s": wall, "first_result_s": timing["first_result_s"],
          "load_s": timing["load_s"], "compile_s": timing["compile_s"],
          "compile_cache_hit": timing["compile_cache_hit"], "program": timing["program"],
          "preload": timing["preload"],
          "batches": timing["batches"], "phases_s": timing["phases_s"],
          "cache_bytes": _folder_bytes(cache),
          # equal digests: the processes returned the same items and scores
          "results_sha256": hashlib.sha256(
              json.dumps(report["results"], sort_keys=True).encode()).hexdigest(),
          "latency_ms_median": timing.get("latency_ms_median", 1e3 * timing["total_s"])}


def _median_run(runs: list[dict]) -> dict:
  """The warm run whose first result came at the median (the lower middle of an even
  count); one that failed stands for all where any did."""
  failed = [r for r in runs if "error" in r]
  if failed:
    return failed[0]
  return sorted(runs, key=lambda r: r["first_result_s"])[(len(runs) - 1) // 2]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="bench/results/compile.json")
  ap.add_argument("--preset", default="moe-4b")
  ap.add_argument("--layers", type=int, default=0, help="cut the preset to N layers")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--beam", type=int, default=512)
  ap.add_argument("--precisions", default="fp8,bf16")
  ap.add_argument("--batches", type=int, default=8, help="batches each process runs")
  ap.add_argument("--warm-runs", type=int, default=3,
                  help="warm processes per precision, each followed by one without the "
                       "preload (the summary takes their median)")
  ap.add_argument("--xla-flags", default="", help="added to the timed processes' XLA_FLAGS")
  ap.add_argument("--checkpoints", metavar="DIR",
                  help="keep the written checkpoints in DIR and reuse those found there "
                       "(written for the same --preset and --layers)")
  ap.add_argument("--smoke", action="store_true", help="tiny preset, any backend")
  ap.add_argument("--write-checkpoints", metavar="DIR", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.write_checkpoints:
    write_checkpoints(args.preset, args.layers, args.write_checkpoints)
    return
  if args.smoke:
    args.preset, args.batch, args.beam, args.batches, args.warm_runs = "tiny", 2, 8, 2, 2
  work = tempfile.mkdtemp(prefix="onerec-compile-")
  ckpts = args.checkpoints or work
  try:
    t0 = time.perf_counter()
    paths = {p: os.path.join(ckpts, p) for p in ("bf16", "fp8")}
    reused = [p for p, path in paths.items() if os.path.exists(path)]
    # In a process of its own: this one never starts the GPU, so the timed processes
    # start on a device no other process holds.
    subprocess.run([sys.executable, os.path.abspath(__file__), "--preset", args.preset,
                    "--layers", str(args.layers), "--write-checkpoints", ckpts], check=True)
    write_s = time.perf_counter() - t0
    rows = []
    for precision in filter(None, args.precisions.split(",")):
      cache = os.path.join(work, f"cache-{precision}")
      row = {"precision": precision}
      # Warm processes with and without the kernel preload take turns: the same machine
      # state for both.
      for start in ["cold"] + ["warm", "warm_no_preload"] * args.warm_runs:
        got = run_command(paths[precision], cache, args.batch, args.beam, args.batches,
                          os.path.join(work, f"{precision}-{start}.json"), args.xla_flags,
                          preload=start != "warm_no_preload")
        print(json.dumps({"precision": precision, start: got}), flush=True)
        if start == "cold":
          row["cold"] = got
        else:
          row.setdefault(f"{start}_runs", []).append(got)
      row["warm"] = _median_run(row["warm_runs"])
      row["warm_no_preload"] = _median_run(row["warm_no_preload_runs"])
      rows.append(row)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  get = lambda p, s, k: next((r[s].get(k) for r in rows if r["precision"] == p), None)

  def change(p):  # the warm process's median batch latency over the cold one's, minus 1
    cold, warm = get(p, "cold", "latency_ms_median"), get(p, "warm", "latency_ms_median")
    return warm / cold - 1 if cold and warm else None

  summary = {"preset": args.preset, "layers": args.layers or None, "batch": args.batch,
             "beam": args.beam, "xla_flags": args.xla_flags,
             "fp8_cold_s": get("fp8", "cold", "compile_s"),
             "bf16_cold_s": get("bf16", "cold", "compile_s"),
             "fp8_warm_compile_s": get("fp8", "warm", "compile_s"),
             # the measure: from the process's start to its first result
             "warm_start_s": get("fp8", "warm", "first_result_s"),
             "warm_wall_s": get("fp8", "warm", "wall_s"),
             "warm_load_s": get("fp8", "warm", "load_s"),
             "warm_cache_hit": get("fp8", "warm", "compile_cache_hit"),
             "warm_program": get("fp8", "warm", "program"),
             # the stored program (warm) against the one traced in the cold process
             "latency_change": change("fp8"), "bf16_latency_change": change("bf16"),
             # the same warm start without the kernel preload (--no-preload), same run
             "warm_start_no_preload_s": get("fp8", "warm_no_preload", "first_result_s"),
             "bf16_warm_start_s": get("bf16", "warm", "first_result_s"),
             "bf16_warm_start_no_preload_s": get("bf16", "warm_no_preload",
                                                 "first_result_s"),
             "warm_preload_s": (get("fp8", "warm", "preload") or {}).get("seconds"),
             "warm_preload_kernels": (get("fp8", "warm", "preload") or {}).get("kernels"),
             "warm_runs": args.warm_runs,
             "warm_start_s_all": [r.get("first_result_s") for row in rows
                                  if row["precision"] == "fp8" for r in row["warm_runs"]],
             "warm_start_no_preload_s_all": [
                 r.get("first_result_s") for row in rows if row["precision"] == "fp8"
                 for r in row["warm_no_preload_runs"]],
             "same_results": bool(rows) and all(
                 r["cold"].get("results_sha256") is not None and
                 all(r["cold"]["results_sha256"] == w.get("results_sha256")
                     for w in r["warm_runs"] + r["warm_no_preload_runs"]) for r in rows)}
  result = {**header("process wall clock; compile_s as `onerec-jax generate` reports it"),
            "summary": summary, "checkpoint_write_s": write_s,
            "checkpoints_reused": reused, "rows": rows}
  write_json(args.out, result)
  print(f"\n{'precision':9} {'cold compile s':>14} {'cold ms':>8} {'warm compile s':>14} "
        f"{'warm first s':>12} {'no preload':>10} {'warm wall s':>11} {'warm ms':>8} "
        f"{'hit':>4}")
  nan = float("nan")
  for r in rows:
    c, w, n = r["cold"], r["warm"], r["warm_no_preload"]
    print(f"{r['precision']:9} {c.get('compile_s', nan):14.1f} "
          f"{c.get('latency_ms_median', nan):8.2f} {w.get('compile_s', nan):14.1f} "
          f"{w.get('first_result_s', nan):12.1f} {n.get('first_result_s', nan):10.1f} "
          f"{w['wall_s']:11.1f} {w.get('latency_ms_median', nan):8.2f} "
          f"{str(w.get('compile_cache_hit')):>4}")
  print("summary:", json.dumps(summary))


if __name__ == "__main__":
  main()
