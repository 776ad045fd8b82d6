"""What every benchmark script shares: the result header (device, jax version, commit,
how it was timed), device timing by CUPTI, a profiler trace's events, and the JSON
writer."""

import argparse
import contextlib
import glob
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

L2_BYTES = 50 << 20  # H100 / H200 L2: timed inputs rotate through at least twice this


def git_commit(explicit: str | None = None) -> str:
  """The commit a result was measured at: `explicit` (a --commit flag), else $GIT_COMMIT,
  else `git rev-parse HEAD`, else "unknown" (a copy of the tree without .git)."""
  if explicit or os.environ.get("GIT_COMMIT"):
    return explicit or os.environ["GIT_COMMIT"]
  try:
    return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                   stderr=subprocess.DEVNULL).strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def header(timing: str, commit: str | None = None) -> dict:
  """The fields every result starts with: device, jax version, commit (`commit`, else as
  git_commit finds it), how it was timed."""
  import jax
  return dict(device=jax.devices()[0].device_kind, jax_version=jax.__version__,
              git_commit=git_commit(commit), timing=timing)


def timed_ms(call, runs: int, returned: list | None = None) -> list[float]:
  """ms of `runs` calls, each waited for, after 2 warm-ups; `returned` gets the ms until
  each call returned, before it was waited for (the host's time to launch it: the GPU
  waits on the host where this nears the latency)."""
  import jax
  for _ in range(2):
    jax.block_until_ready(call())
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    out = call()
    if returned is not None:
      returned.append(1e3 * (time.perf_counter() - t0))
    jax.block_until_ready(out)
    times.append(1e3 * (time.perf_counter() - t0))
  return times


def device_ms(f, sets, iterations=30):
  """Median device time (ms) of f(*s) per input set s, from CUPTI, over rotating sets."""
  import jax
  from jax.experimental.mosaic.gpu import profiler
  fn = jax.jit(lambda ss: [f(*s) for s in ss])
  _, times = profiler.measure(fn, iterations=iterations)(sets)
  return statistics.median(times) / len(sets)


def kernel_us(f, args, iterations=30):
  """f(*args)'s kernels in launch order: [name, median device time in us] each, from
  CUPTI (where the time of a layer goes)."""
  import jax
  from jax.experimental.mosaic.gpu import profiler
  _, runs = profiler.measure(jax.jit(f), aggregate=False, iterations=iterations)(*args)
  return [[name, 1e3 * statistics.median(run[i][1] for run in runs)]
          for i, (name, _) in enumerate(runs[0])]


@contextlib.contextmanager
def perfetto_trace():
  """Runs the block under jax's profiler (its Python tracer off) and then fills the
  yielded list with the trace's perfetto events (host and GPU timelines)."""
  import jax
  trace_dir = tempfile.mkdtemp(prefix="onerec-trace-")
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  events = []
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True, profiler_options=options):
    yield events
  (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                      recursive=True)
  trace = json.load(gzip.open(path))
  events.extend(trace["traceEvents"] if isinstance(trace, dict) else trace)


def num_sets(bytes_per_set):
  """Input sets to rotate so that they do not fit in L2 together."""
  return max(1, min(8, math.ceil(2 * L2_BYTES / bytes_per_set)))


def write_json(path: str, result: dict) -> None:
  """Writes a benchmark result, creating the folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)


def parse_args(parser: argparse.ArgumentParser, smoke: tuple[str, ...]) -> argparse.Namespace:
  """The parser's arguments, plus --smoke: a tiny size for a CPU check of the script, the
  options in `smoke` appended to the command line (they override those given)."""
  parser.add_argument("--smoke", action="store_true",
                      help=f"tiny size: {' '.join(smoke)} (overrides those options)")
  args = parser.parse_args()
  return parser.parse_args([*sys.argv[1:], *smoke]) if args.smoke else args


def moe_block(config, layer: str, norm: bool):
  """The model's MoE block (onerec_jax.model.onerec.MoE: router, routed and shared experts)
  under its model path `layer`/mlp, so that the model's default FP8 rules match it; with
  norm, its mlp_norm first (the RMSNorm fused into the FP8 quantization as in the model).
  A Flax module: init and apply it on [T, D] rows."""
  import flax.linen as nn
  from onerec_jax.model import RMSNorm
  from onerec_jax.model.onerec import MoE

  class Block(nn.Module):
    @nn.compact
    def __call__(self, h):  # [T, D]
      if not norm:
        return MoE(config, name="mlp")(h)
      rms = RMSNorm(config.rms_eps, name="mlp_norm", dtype=config.compute_dtype,
                    param_dtype=config.params_dtype)
      return MoE(config, name="mlp")(rms(h), producer=rms.producer(h))

  class Layer(nn.Module):
    @nn.compact
    def __call__(self, h):
      return Block(name=layer)(h)

  return Layer()
