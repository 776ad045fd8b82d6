"""Mutation check: plants each bug of a curated list, one at a time, and runs the test files
that must catch it; a mutant the tests do not fail "survives". Covers the reference ops,
the quantizer (reference and Triton kernel), the checkpoint name map and refusals, the beam
step, the top-k algorithm, the evaluation and statistics, generate's compile behaviour.

Each mutant runs in a scratch copy of the package sources and tests (the working tree is
never modified), importable under the installed names. Writes a JSON report (the surviving
mutants listed first) and exits 1 if any survives.

  python scripts/mutation_check.py --out bench/results/mutation_report.json
  python scripts/mutation_check.py --only quantize.fp8_max  # one mutant
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
COPIED = ("kernels", "onerec_jax", "checkpoints", "tests", "scripts", "pyproject.toml")
# The installed import names of the folders that are not named after their package.
ALIASES = {"onerec_kernels": "kernels", "onerec_checkpoints": "checkpoints"}


@dataclasses.dataclass(frozen=True)
class Mutant:
  """A planted bug: in `path`, each `old` text (found exactly once) becomes its `new`."""

  name: str
  kind: str  # what the bug is, in words
  path: str
  edits: tuple[tuple[str, str], ...]
  tests: tuple[str, ...]


def _m(name, kind, path, old, new, *tests):
  return Mutant(name, kind, path, ((old, new),), tuple(f"tests/{t}" for t in tests))


MUTANTS = (
    # The quantizer's specification (kernels/quantize/reference.py) and the Triton kernel.
    _m("quantize.fp8_max", "the e4m3 maximum 448 changed to 240",
       "kernels/quantize/reference.py", "FP8_MAX = 448.0", "FP8_MAX = 240.0",
       "test_quantize.py", "test_quant.py"),
    _m("quantize.division_by_reciprocal", "x / scale left to XLA (x * 1/scale on the CPU)",
       "kernels/quantize/reference.py",
       "divisor = jax.lax.optimization_barrier(jnp.broadcast_to(scale, x.shape))",
       "divisor = scale", "test_quantize.py"),
    _m("quantize.nan_scale_1", "a NaN/Inf group's scale not NaN (its values rescaled)",
       "kernels/quantize/reference.py",
       "return jnp.where(jnp.isfinite(amax), scale, jnp.float32(jnp.nan))", "return scale",
       "test_quantize.py"),
    _m("quantize.nan_dropped_by_max", "amax by a max that drops NaN (XLA:CPU's)",
       "kernels/quantize/reference.py",
       "return jnp.where(jnp.any(jnp.isnan(magnitudes), axis=axis), jnp.float32(jnp.nan),",
       "return jnp.where(False, jnp.float32(jnp.nan),", "test_quantize.py"),
    _m("quantize.underflowing_scale", "a scale that underflows to 0 kept (x / 0)",
       "kernels/quantize/reference.py",
       "scale = jnp.where(scale > 0, scale, jnp.float32(1.0))",
       "scale = jnp.where(amax > 0, scale, jnp.float32(1.0))", "test_quantize.py"),
    _m("quantize.no_clip", "values beyond 448 not clipped (they cast to NaN)",
       "kernels/quantize/reference.py",
       "return jnp.clip(x / divisor, -FP8_MAX, FP8_MAX).astype(FP8_DTYPE)",
       "return (x / divisor).astype(FP8_DTYPE)", "test_quant.py"),
    _m("quantize.signed_amax", "block amax over signed values instead of magnitudes",
       "kernels/quantize/reference.py", "xp = jnp.pad(jnp.abs(x.astype(jnp.float32)), pad)",
       "xp = jnp.pad(x.astype(jnp.float32), pad)", "test_quant.py"),
    _m("quantize.dequantize_blocks_transposed", "dequantize_blocks with the block edges swapped",
       "kernels/quantize/reference.py",
       "return value.astype(jnp.float32) * expand_block_scale(scale, m, k, block_rows, block_cols)",
       "return value.astype(jnp.float32) * expand_block_scale(scale, m, k, block_cols, block_rows)",
       "test_quantize.py"),
    _m("quantize.kernel_nan_rule", "the Triton kernel's NaN rule removed",
       "kernels/quantize/triton_gpu.py",
       'return tl.where(amax < float("inf"), scale, float("nan"))', "return scale",
       "test_quantize.py"),
    _m("quantize.kernel_no_markstein", "the kernel's division without its fma correction",
       "kernels/quantize/triton_gpu.py", "y = tl.fma(tl.fma(-q, scale, x), inv, q)", "y = q",
       "test_quantize.py"),
    # FP8 and grouped GEMM references, routing.
    _m("fp8_linear.no_weight_scale", "the FP8 linear without its per-channel weight scale",
       "kernels/fp8_linear/reference.py", "return (acc * x_scale[:, None] * w_scale[None, :])",
       "return (acc * x_scale[:, None])", "test_quant.py", "test_fp8_linear.py"),
    _m("grouped.row_groups_left", "rows at a group boundary given to the next expert",
       "kernels/grouped_gemm/reference.py",
       'return jnp.searchsorted(ends, jnp.arange(num_rows, dtype=jnp.int32), side="right")',
       'return jnp.searchsorted(ends, jnp.arange(num_rows, dtype=jnp.int32), side="left")',
       "test_quant.py", "test_grouped_gemm.py"),
    _m("grouped.first_block_scale", "every K block scaled by the first block's activation scale",
       "kernels/grouped_gemm/reference.py",
       "acc = acc + part * x_scale[:, b, None] * w_scale_rows[:, :, b]",
       "acc = acc + part * x_scale[:, 0, None] * w_scale_rows[:, :, b]",
       "test_quant.py", "test_grouped_gemm.py"),
    _m("routing.combine_mean", "combine averages the slots instead of summing them",
       "kernels/grouped_gemm/routing.py",
       "return jnp.sum(y * gates.astype(jnp.float32)[:, :, None], axis=1)",
       "return jnp.mean(y * gates.astype(jnp.float32)[:, :, None], axis=1)",
       "test_grouped_gemm.py"),
    # Top-k: the reference, the radix algorithm, the entry points, the Triton kernels.
    _m("topk.beam_scores_no_log_softmax", "beam candidates scored by raw logits",
       "kernels/topk/reference.py",
       "scores = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, W, V]",
       "scores = logits.astype(jnp.float32)  # [B, W, V]", "test_generate.py"),
    _m("topk.router_gates_not_normalized", "router gates not normalized over the chosen",
       "kernels/topk/reference.py",
       "gates = gates / (jnp.sum(gates, axis=-1, keepdims=True) + 1e-20)", "gates = gates",
       "test_topk.py"),
    Mutant("topk.radix_ties_to_highest", "radix select breaks ties to the highest index",
           "kernels/topk/radix.py",
           (("ranks = (n - idx).astype(jnp.uint32)\n  sel = valid",
             "ranks = (idx + 1).astype(jnp.uint32)\n  sel = valid"),
            ("ranks = (n - idx).astype(jnp.uint32)[:, :, None]",
             "ranks = (idx + 1).astype(jnp.uint32)[:, :, None]")), ("tests/test_topk.py",)),
    _m("topk.capacity_capped_8192", "Config.default capacity capped at 8192 (issue 21)",
       "kernels/topk/radix.py",
       "capacity = max(_pow2(k), min(8192, max(2048, 8 * _pow2(k))))  # k fits, any k",
       "capacity = min(8192, max(2048, 8 * _pow2(k)))", "test_topk_limits.py"),
    _m("topk.k_zero_allowed", "k = 0 passes the entry points' check",
       "kernels/topk/__init__.py", "if not isinstance(k, int) or not 0 < k <= n:",
       "if not isinstance(k, int) or not 0 <= k <= n:", "test_topk_limits.py"),
    _m("topk.triton_no_k_limit", "the Triton top-k takes k past its 8192 candidates",
       "kernels/topk/__init__.py", "  if k > TRITON_MAX_K:", "  if k > 10 * TRITON_MAX_K:",
       "test_topk_triton_interpret.py"),
    _m("topk.rank_kernel_ties", "the rank kernel counts equal composite keys as larger",
       "kernels/topk/triton_gpu.py",
       "place += tl.sum((cj[None, :] > ci[:, None]).to(tl.int32), axis=1)",
       "place += tl.sum((cj[None, :] >= ci[:, None]).to(tl.int32), axis=1)",
       "test_topk_triton_interpret.py"),
    _m("topk.buffer_reads_past_count", "the buffer filter reads slots past the row's count",
       "kernels/topk/triton_gpu.py", "inb = offs < tl.minimum(tl.load(cnt_ptr + row), M)",
       "inb = offs < M", "test_topk_triton_interpret.py"),
    # The beam step (onerec_jax/generate/beam.py).
    _m("beam.cache_not_reordered", "the KV cache does not follow the beams' parents",
       "onerec_jax/generate/beam.py", "cache = _reorder(cache, parent)", "cache = cache",
       "test_generate.py"),
    _m("beam.prefix_not_gathered", "a new beam keeps its slot's old prefix, not its parent's",
       "onerec_jax/generate/beam.py",
       "prefix = jnp.take_along_axis(beams.codes, parent[..., None], axis=1)",
       "prefix = beams.codes", "test_generate.py"),
    _m("beam.empty_slots_alive", "empty (-inf) slots reported as items",
       "onerec_jax/generate/beam.py", "alive = beams.scores > -jnp.inf",
       "alive = beams.scores >= -jnp.inf", "test_topk_limits.py", "test_generate.py"),
    _m("generate.warmup_wrong_bucket", "warm-up compiles other shapes than generate runs",
       "onerec_jax/generate/api.py", "f, m = pad_batch(config, empty, None, 0, 0, bucket)",
       "f, m = pad_batch(config, empty, None, 0, 0, bucket + 1)", "test_soak.py"),
    # The checkpoint name map and refusals.
    Mutant("mapping.norms_swapped", "cross_attn_norm and mlp_norm swapped in the name map",
           "onerec_jax/checkpoint/mapping.py",
           (('Row("layer_{i}/cross_attn_norm/weight", (_LAYER + "cross_attn_norm.weight",)),',
             'Row("layer_{i}/cross_attn_norm/weight", (_LAYER + "mlp_norm.weight",)),'),
            ('Row("layer_{i}/mlp_norm/weight", (_LAYER + "mlp_norm.weight",)),',
             'Row("layer_{i}/mlp_norm/weight", (_LAYER + "cross_attn_norm.weight",)),')),
           ("tests/test_checkpoint.py", "tests/test_mapping.py")),
    _m("mapping.qkv_order", "q and k swapped in the fused qkv projection",
       "onerec_jax/checkpoint/mapping.py", 'for x in "qkv")', 'for x in "kqv")',
       "test_checkpoint.py", "test_mapping.py"),
    _m("mapping.expert_gate_up", "routed experts' gate and up swapped",
       "onerec_jax/checkpoint/mapping.py",
       '(_LAYER + "mlp.experts.{e}.gate_proj.weight", _LAYER + "mlp.experts.{e}.up_proj.weight")',
       '(_LAYER + "mlp.experts.{e}.up_proj.weight", _LAYER + "mlp.experts.{e}.gate_proj.weight")',
       "test_checkpoint.py", "test_mapping.py"),
    _m("checkpoint.int_tensors_accepted", "non-float tensors converted (truncated)",
       "onerec_jax/checkpoint/convert.py",
       "if n in have and source.dtype(n) not in FLOAT_DTYPES)", "if False)",
       "test_checkpoint_errors.py"),
    _m("checkpoint.raw_restore_error", "a damaged Orbax file raises orbax's own error",
       "onerec_jax/checkpoint/store.py",
       "  except Exception as e:  # orbax/tensorstore raise ValueError, OSError and their own",
       "  except KeyboardInterrupt as e:", "test_checkpoint_errors.py"),
    _m("checkpoint.live_partials_removed", "the next save removes a live save's folder",
       "onerec_jax/checkpoint/store.py", "if pid.isdigit() and not _alive(int(pid)):",
       "if pid.isdigit():", "test_checkpoint_errors.py"),
    # Evaluation and statistics.
    _m("eval.per_tensor_is_fp8", "the per-tensor recipe wired to the paper's FP8 recipe",
       "onerec_jax/lab/evaluate.py",
       '"per_tensor": Variant(per_tensor_params(params, rules),\n'
       '                            scope=lambda: per_tensor_activations(rules)),',
       '"per_tensor": Variant(quant.quantize_params(params, rules), rules),', "test_eval.py"),
    _m("model.stale_producer", "self-attention qkv fed the cross-attention norm's producer",
       "onerec_jax/model/onerec.py", 'x, producer = norm("self_attn_norm", h)',
       'x, _ = norm("self_attn_norm", h)', "test_stats.py"),
)


def _scratch_copy(dest: pathlib.Path) -> None:
  for name in COPIED:
    src = ROOT / name
    if src.is_dir():
      shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy2(src, dest / name)
  for alias, folder in ALIASES.items():
    (dest / alias).symlink_to(folder)


def _env(copy: pathlib.Path) -> dict:
  return {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}


def _check_imports(copy: pathlib.Path) -> None:
  """The copy's packages are the ones imported there, not the installed tree's."""
  probe = ("import onerec_jax, onerec_kernels, onerec_checkpoints; "
           "print(onerec_jax.__file__, onerec_kernels.__file__, onerec_checkpoints.__file__)")
  out = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=_env(copy), text=True,
                       capture_output=True, check=True).stdout.split()
  resolved = copy.resolve()
  if not all(pathlib.Path(p).resolve().is_relative_to(resolved) for p in out):
    raise RuntimeError(f"the scratch copy's packages do not shadow the installed ones: {out}")


def _apply(copy: pathlib.Path, mutant: Mutant) -> str:
  """Plants the mutant in the copy; returns the original text of its file."""
  path = copy / mutant.path
  original = text = path.read_text()
  for old, new in mutant.edits:
    if text.count(old) != 1:
      raise ValueError(f"{mutant.name}: {old!r} occurs {text.count(old)} times in "
                       f"{mutant.path} (the mutant list is stale)")
    text = text.replace(old, new)
  path.write_text(text)
  return original


def _pytest(copy: pathlib.Path, tests, timeout: int) -> tuple[int | None, list[str]]:
  """(exit code or None on timeout, failing test ids), stopping at the first failure."""
  try:
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           *tests], cwd=copy, env=_env(copy), capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return None, []
  failed = [line.split(" ")[1] for line in done.stdout.splitlines()
            if line.startswith(("FAILED ", "ERROR "))]
  return done.returncode, failed


def run(mutant: Mutant, copy: pathlib.Path, timeout: int) -> dict:
  """Runs the mutant's tests: killed when one fails that passes without the mutant (it is
  run again on the restored copy, so an environment failure never counts as a kill)."""
  original = _apply(copy, mutant)
  t0 = time.perf_counter()
  try:
    rc, failed = _pytest(copy, mutant.tests, timeout)
  finally:
    (copy / mutant.path).write_text(original)
  killed = rc not in (0, 5, None) and bool(failed)  # 5: nothing collected
  if killed and _pytest(copy, failed[:1], timeout)[0] != 0:
    raise RuntimeError(f"{failed[0]} fails without the mutant {mutant.name}: fix the tests "
                       f"first")
  return {"name": mutant.name, "kind": mutant.kind, "file": mutant.path,
          "tests": list(mutant.tests), "killed": killed,
          "result": "killed" if killed else "timed out" if rc is None else "survived",
          "caught_by": failed[:1], "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", help="JSON report to write")
  p.add_argument("--only", nargs="+", help="run only these mutants (by name)")
  p.add_argument("--timeout", type=int, default=900, help="seconds a mutant's tests may take")
  args = p.parse_args()
  names = {m.name for m in MUTANTS}
  unknown = sorted(set(args.only or ()) - names)
  if unknown:
    p.error(f"unknown mutants {unknown}; known: {sorted(names)}")
  chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
  with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
    copy = pathlib.Path(tmp)
    _scratch_copy(copy)
    _check_imports(copy)
    rows = []
    for mutant in chosen:
      rows.append(run(mutant, copy, args.timeout))
      r = rows[-1]
      print(f"{r['result']:9} {r['name']:38} {r['seconds']:6.1f} s "
            f"{' '.join(r['caught_by'])}", flush=True)
  survivors = [r["name"] for r in rows if not r["killed"]]
  report = {"summary": {"mutants": len(rows), "killed": len(rows) - len(survivors),
                        "survived": survivors,
                        "seconds": round(sum(r["seconds"] for r in rows), 1)},
            "mutants": sorted(rows, key=lambda r: r["killed"])}
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
  print(json.dumps(report["summary"]))
  return 1 if survivors else 0


if __name__ == "__main__":
  sys.exit(main())
