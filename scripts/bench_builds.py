"""The beam search's latency at two builds of the package in one run: this checkout and
--baseline, the source tree of another commit (its `kernels` and `onerec_jax` folders, as
`git archive COMMIT kernels onerec_jax | tar -x -C DIR` writes them).

Each build and mode (--modes: fp8, the paper's FP8 rules; bf16, our kernels on 16-bit
weights) runs in a process of its own, with the build's folders first on its path under
their import names (checked: a process that imports either package from elsewhere
stops the run). The processes trace and compile side by side (--serial: one after the
other; side by side, XLA's autotuning shares the GPU and the CPU with the other compiles,
which may change what it picks), then time in turns: --rounds rounds, each process
--runs searches a round (each waited for, after 2 warm-ups), so that a drift of the GPU's
clocks or temperature falls on every build alike. Random bf16 weights made on the device
(the same key in every process: the same weights where both builds lay them out alike),
random contexts drawn here, the model's default FP8 rules, inputs on the device; only the
API the two builds share is called (preset, init_params, default_rules, quantize_params,
pad_batch, beam_search; --context replaces the config's prompt length, or its pathways by
the last one at that length, as bench_e2e does). score_sum, the sum of the search's
scores, tells whether the builds computed the same.
Writes JSON (--out) once the processes have compiled (complete: false) and again at the
end, with a top-level "summary": per mode the two medians and latency_change (this
build's over the baseline's, minus 1); prints a table last.

  python scripts/bench_builds.py --baseline /tmp/base --baseline-commit 8395898 \\
      --out bench/results/builds_moe4b_h200.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import git_commit, header, parse_args, timed_ms, write_json  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("fp8", "bf16")


def _import_path(tree: str) -> str:
  """PYTHONPATH for a source tree: the tree (onerec_jax) and a folder in which its kernels
  folder is linked as onerec_kernels (an installed build's import name)."""
  links = tempfile.mkdtemp(prefix="onerec-build-")
  os.symlink(os.path.join(os.path.abspath(tree), "kernels"),
             os.path.join(links, "onerec_kernels"))
  return os.pathsep.join([os.path.abspath(tree), links])


def _contexts(config, batch: int) -> dict:
  """Random full-length contexts drawn here, not by either build, so that both get the
  same: standard-normal features [batch, max_len, width] per pathway in config order
  (token ids where the width is 0)."""
  import numpy as np
  rng = np.random.default_rng(0)
  return {p.name: (rng.integers(0, config.vocab_size, (batch, p.max_len), np.int32)
                   if p.width == 0 else
                   rng.standard_normal((batch, p.max_len, p.width), np.float32))
          for p in config.pathways}


def child(args) -> None:
  """One build and mode: compile, say so (one JSON line), then on each 'time' line from
  the parent time --runs searches and answer their ms; 'quit' ends it. The answers go out
  on the process's stdout as it was at the start; whatever else writes to stdout goes to
  stderr, so that it cannot break the protocol."""
  answer = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)
  import jax
  import onerec_kernels
  from onerec_jax import generate as gen
  from onerec_jax import quant
  from onerec_jax.config import preset
  from onerec_jax.model import init_params
  try:
    from onerec_jax.model import default_rules
  except ImportError:  # builds before the Qwen3 family kept the rules in quant
    from onerec_jax.quant import default_rules
  cfg = preset(args.preset).replace(param_dtype="bfloat16")
  if getattr(cfg, "family", None) == "qwen3":  # computes in bf16, as bench_e2e's
    cfg = cfg.replace(dtype="bfloat16", **({"max_prompt_len": args.context}
                                           if args.context else {}))
  elif args.context:  # one pathway, the last, at that length, as bench_e2e's
    p = cfg.pathways[-1]
    cfg = cfg.replace(pathways=(dataclasses.replace(p, max_len=args.context),))
  if args.layers:
    cfg = cfg.replace(n_layers=args.layers,
                      moe_layers=tuple(i for i in cfg.moe_layers if i < args.layers))
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  rules = default_rules(cfg) if args.mode == "fp8" else None
  if rules is not None:
    params = jax.jit(quant.quantize_params, static_argnums=1)(params, rules)
  features = _contexts(cfg, args.batch)
  f, m = jax.device_put(gen.pad_batch(cfg, features, None, 0, args.batch, args.batch))
  jax.block_until_ready((params, f, m))

  def search():
    return gen.beam_search(params, f, m, None, config=cfg, beam_width=args.beam,
                           rules=rules)

  t0 = time.perf_counter()
  out = jax.block_until_ready(search())
  compile_s = time.perf_counter() - t0
  scores = jax.device_get(out.scores)
  print(json.dumps({"compile_s": compile_s, "score_sum": float(scores.sum()),
                    "context_len": cfg.max_context_len,
                    "sources": [os.path.realpath(m.__file__) for m in (gen, onerec_kernels)],
                    "scores_finite": bool((scores > -float("inf")).all())}),
        file=answer, flush=True)
  for line in sys.stdin:
    if line.strip() == "quit":
      return
    print(json.dumps(timed_ms(search, args.runs)), file=answer, flush=True)


def _start(build: str, tree: str, mode: str, args) -> subprocess.Popen:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode,
         "--preset", args.preset, "--batch", str(args.batch), "--beam", str(args.beam),
         "--runs", str(args.runs), "--layers", str(args.layers), "--context",
         str(args.context)]
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [_import_path(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
  proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env=env, cwd=tempfile.gettempdir())
  proc.name, proc.tree = f"{build}/{mode}", os.path.realpath(tree)
  return proc


class BuildError(Exception):
  """A build's process failed or ran code from another tree."""


def _ask(proc: subprocess.Popen, line: str | None = None):
  """Sends line (if any) to the process and reads its one-line JSON answer."""
  try:
    if line is not None:
      proc.stdin.write(line + "\n")
      proc.stdin.flush()
    answer = proc.stdout.readline()
  except BrokenPipeError:
    answer = ""
  if not answer:
    raise BuildError(f"{proc.name}: the process ended (exit {proc.wait()}) before it "
                     f"answered (its stderr is above)")
  return json.loads(answer)


def _ready(proc: subprocess.Popen) -> dict:
  """The process's compile report, checked to come from its own tree: onerec_jax from
  the tree's onerec_jax folder and onerec_kernels from its kernels folder."""
  row = _ask(proc)
  for source, folder in zip(row["sources"], ("onerec_jax", "kernels")):
    if not source.startswith(os.path.join(proc.tree, folder) + os.sep):
      raise BuildError(f"{proc.name}: imported {source}, not from {proc.tree}/{folder}")
  return row


def summary(rows: dict, modes, baseline_commit: str) -> dict:
  """Per mode this build's and the baseline's median ms and latency_change (ours over
  theirs, minus 1); latency_change is the FP8 mode's where it ran, else the first
  mode's."""
  out = {"baseline_commit": baseline_commit}
  for mode in modes:
    ours, base = rows[f"head/{mode}"], rows[f"baseline/{mode}"]
    out[f"{mode}_ms"] = ours["latency_ms_median"]
    out[f"{mode}_baseline_ms"] = base["latency_ms_median"]
    out[f"{mode}_latency_change"] = ours["latency_ms_median"] / base["latency_ms_median"] - 1
    out[f"{mode}_compile_s"] = ours["compile_s"]
    out[f"{mode}_baseline_compile_s"] = base["compile_s"]
  out["latency_change"] = out[f"{'fp8' if 'fp8' in modes else modes[0]}_latency_change"]
  return out


def _measure(args, procs: list, rows: dict, result: dict) -> None:
  """Starts the processes (into procs), waits for their compiles, times them in turns and
  fills rows and result's summary."""
  for mode in args.modes:
    for build, tree in (("baseline", args.baseline), ("head", HERE)):
      procs.append(_start(build, tree, mode, args))
      if args.serial:
        rows[procs[-1].name] = _ready(procs[-1])
  for proc in procs:
    if proc.name not in rows:
      rows[proc.name] = _ready(proc)
    rows[proc.name]["times_ms"] = []
  if args.out:  # the compiles, kept should the timing be cut off
    write_json(args.out, result)
  for _ in range(args.rounds):
    for proc in procs:
      rows[proc.name]["times_ms"].append(_ask(proc, "time"))
  for proc in procs:
    proc.communicate("quit\n")
    times = [t for r in rows[proc.name]["times_ms"] for t in r]
    rows[proc.name].update(latency_ms_median=statistics.median(times),
                           latency_ms_min=min(times), latency_ms_max=max(times))
  result.update(complete=True, summary=summary(rows, args.modes, args.baseline_commit))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--baseline", help="source tree of the other build")
  p.add_argument("--baseline-commit", default="unknown", help="the commit it holds")
  p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
  p.add_argument("--preset", default="moe-4b")
  p.add_argument("--layers", type=int, default=0, help="first N layers only (0: all)")
  p.add_argument("--context", type=int, default=0,
                 help="context (Qwen3: prompt) length (0: the preset's)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--beam", type=int, default=512)
  p.add_argument("--runs", type=int, default=10, help="searches a process times a round")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--serial", action="store_true", help="compile one process at a time")
  p.add_argument("--out")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
  args = parse_args(p, ("--preset", "tiny", "--batch", "2", "--beam", "4", "--runs", "2",
                        "--rounds", "2"))
  if args.child:
    return child(args)
  if not args.baseline or not all(os.path.isdir(os.path.join(args.baseline, folder))
                                  for folder in ("onerec_jax", "kernels")):
    p.error(f"--baseline {args.baseline}: not a source tree with onerec_jax and kernels "
            f"folders")
  # Several processes share the GPU: none may take most of its memory up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  result = header(f"median of {args.rounds} rounds x {args.runs} searches per process, "
                  "each waited for after 2 warm-ups, processes timed in turns")
  rows, procs = {}, []
  result.update(baseline_commit=args.baseline_commit, head_commit=git_commit(),
                preset=args.preset, layers=args.layers or None, context=args.context or None,
                batch=args.batch,
                beam=args.beam, smoke=args.smoke, serial=args.serial, complete=False,
                rows=rows)
  try:
    _measure(args, procs, rows, result)
  except BuildError as e:
    sys.exit(str(e))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  if args.out:
    write_json(args.out, result)
  print(f"{'process':16s} {'compile s':>10s} {'median ms':>10s} {'min':>8s} {'max':>8s}")
  for name, row in rows.items():
    print(f"{name:16s} {row['compile_s']:10.1f} {row['latency_ms_median']:10.2f} "
          f"{row['latency_ms_min']:8.2f} {row['latency_ms_max']:8.2f}")
  for mode in args.modes:
    print(f"{mode}: latency change {100 * result['summary'][f'{mode}_latency_change']:+.1f}%"
          f" against {args.baseline_commit}")


if __name__ == "__main__":
  main()
