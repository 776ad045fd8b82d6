"""What the 4-bit GEMM's main loop executes on a Hopper GPU, without one: compiles the
Triton kernel (onerec_kernels.dequant_gemm.triton_gpu) for sm_90 with the ptxas that the
triton wheel ships, at moe-4b's 32-token expert shapes and a set of tilings, and reads
the machine code (cuobjdump): registers and stack a thread, shared memory a program, the
programs an SM holds by those (and by warps), and the instructions of the main loop (one
scale group of K a step) by opcode. The pointers are declared 16-byte aligned, as
jax-triton declares them. Static: no timing; it tells where a tiling's instructions go
and whether it spills, before device time is spent on it.

  python scripts/sass_dequant_gemm.py --out bench/results/sass_dequant_gemm.json
  python scripts/sass_dequant_gemm.py --smoke    # one tiling
"""

import argparse
import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile, not interpret, what the GPU would run

import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import git_commit, parse_args, write_json  # noqa: E402

from onerec_kernels.dequant_gemm import triton_gpu  # noqa: E402

SM = 90
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 227 * 1024
WARPS_PER_SM = 64
# name -> (rows, groups (experts), N, K): the routed experts' gate_up at the 32-token step
# (96 rows over 53 experts; down's loop is the same), the shared expert's (dense, 32
# rows).
SHAPES = {"experts.gate_up.t32": (96, 53, 2816, 1408),
          "shared.gate_up.t32": (32, 1, 2816, 1408)}
TILINGS = [dict(block_n=bn, block_t=16, warps=warps, stages=3, decode=decode)
           for bn, warps in ((128, 4), (64, 4), (64, 8)) for decode in triton_gpu.DECODINGS]


def _tool(name: str) -> str:
  import triton
  return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_kernel(rows, groups, n, k, cfg: triton_gpu.Config, scheme="int4_w4a8"):
  """The kernel of dequant_gemm_plan at this shape and tiling, compiled for sm_90."""
  import triton
  from triton.backends.compiler import GPUTarget
  from triton.compiler import ASTSource
  e2m1, w4a8 = scheme.startswith("mxfp4"), scheme.endswith("w4a8")
  group = 32 if e2m1 else 128
  _, _, meta = triton_gpu.dequant_gemm_plan(
      rows, n, k, groups, group=group, e2m1=e2m1, e8m0=e2m1, w4a8=w4a8,
      dtype=jnp.float8_e4m3fn if w4a8 else jnp.bfloat16, config=cfg)
  signature = {"x_ptr": "*fp8e4nv" if w4a8 else "*bf16", "xs_ptr": "*fp32", "w_ptr": "*u8",
               "ws_ptr": "*u8" if e2m1 else "*fp32", "sched_ptr": "*i32",
               "y_ptr": "*bf16" if cfg.k_splits == 1 else "*fp32"}
  signature.update({name: "constexpr" for name in meta})
  source = ASTSource(fn=triton_gpu._dequant_gemm_kernel, signature=signature,
                     constexprs=meta, attrs={(i,): [["tt.divisibility", 16]] for i in range(6)})
  return triton.compile(source, target=GPUTarget("cuda", SM, 32),
                        options={"num_warps": cfg.warps, "num_stages": cfg.stages})


def main_loop(sass: str) -> list[str]:
  """The opcodes of the longest backward branch's body: the kernel's K loop."""
  code = []  # (address, instruction text)
  for line in sass.splitlines():
    m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*?);", line)
    if m:
      code.append((int(m.group(1), 16), m.group(2).strip()))
  at = {address: i for i, (address, _) in enumerate(code)}
  best = []
  for i, (address, text) in enumerate(code):
    branch = re.search(r"BRA\s+.*?0x([0-9a-f]+)", text)
    if branch and int(branch.group(1), 16) < address:
      body = code[at.get(int(branch.group(1), 16), i):i + 1]
      best = max(best, [re.sub(r"^@!?U?P[T0-9]+\s+", "", t).split()[0] for _, t in body],
                 key=len)
  return best


def inspect(name, rows, groups, n, k, tiling):
  cfg = triton_gpu.Config(**tiling)
  kernel = compile_kernel(rows, groups, n, k, cfg)
  with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(kernel.asm["cubin"])
    f.flush()
    usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name],
                           capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True,
                          text=True, check=True).stdout
  regs = int(re.search(r"REG:(\d+)", usage).group(1))
  stack = int(re.search(r"STACK:(\d+)", usage).group(1))
  shared = kernel.metadata.shared
  threads = 32 * cfg.warps
  per_sm = min(REGISTERS_PER_SM // (-(-regs // 8) * 8 * threads),
               SHARED_PER_SM // max(shared, 1), WARPS_PER_SM // cfg.warps)
  loop = main_loop(sass)
  mix = collections.Counter(op.split(".")[0] for op in loop)
  elements = cfg.block_n * 128 // threads  # weights a thread decodes a step
  return dict(shape=name, rows=rows, groups=groups, n=n, k=k, config=dataclasses.asdict(cfg),
              registers=regs, stack_bytes=stack, shared_bytes=shared, programs_per_sm=per_sm,
              loop_instructions=len(loop), loop_instructions_per_weight=len(loop) / elements,
              loop_mix=dict(mix.most_common(12)))


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", help="JSON result file")
  p.add_argument("--commit", help="commit to record (default: git rev-parse HEAD)")
  args = parse_args(p, ())
  shapes = dict(list(SHAPES.items())[:1]) if args.smoke else SHAPES
  tilings = TILINGS[:1] if args.smoke else TILINGS
  rows = []
  for name, (m, e, n, k) in shapes.items():
    default = dataclasses.asdict(triton_gpu.default_config(m, e))
    full = [dataclasses.asdict(triton_gpu.Config(**t)) for t in tilings]
    for tiling in full + ([default] if default not in full and not args.smoke else []):
      rows.append(inspect(name, m, e, n, k, tiling))
      print(json.dumps(rows[-1]), flush=True)
  summary = {f"{r['shape']} {r['config']['block_n']}x{r['config']['block_t']} "
             f"w{r['config']['warps']} k{r['config']['k_splits']} {r['config']['decode']}":
             r["loop_instructions"] for r in rows}
  import jax
  import triton
  result = dict(device=f"none (ptxas for sm_{SM})", jax_version=jax.__version__,
                triton_version=triton.__version__, git_commit=git_commit(args.commit),
                timing="static: instructions of the compiled main loop, no run",
                summary=summary, rows=rows)
  if args.out:
    write_json(args.out, result)
  print(f"{'shape':<20}{'tiling':<32}{'regs':>6}{'stack':>7}{'smem':>8}{'/SM':>5}"
        f"{'loop':>7}{'/weight':>9}")
  for r in rows:
    c = r["config"]
    tiling = (f"{c['block_n']}x{c['block_t']} w{c['warps']} s{c['stages']} "
              f"k{c['k_splits']} {c['decode']}")
    print(f"{r['shape']:<20}{tiling:<32}{r['registers']:>6}{r['stack_bytes']:>7}"
          f"{r['shared_bytes']:>8}{r['programs_per_sm']:>5}{r['loop_instructions']:>7}"
          f"{r['loop_instructions_per_weight']:>9.2f}")
  print("summary:", json.dumps(summary))


if __name__ == "__main__":
  main()
