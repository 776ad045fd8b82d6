"""Start-up: jax's persistent compilation cache through the command (a second process
with the same model, bucket and rules loads the executable instead of compiling), and the
start-up and end-to-end benchmark scripts at a smoke size."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _generate(cache, out):
  """The command in a fresh process; cache None: --no-compile-cache."""
  where = ["--no-compile-cache"] if cache is None else ["--compile-cache", str(cache)]
  cmd = [sys.executable, "-m", "onerec_jax", "generate", "--preset", "tiny", "--random", "3",
         "--beam-width", "6", "--fp8", "--output", str(out), *where]
  t0 = time.perf_counter()
  done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  wall = time.perf_counter() - t0
  assert done.returncode == 0, done.stderr[-3000:]
  timing = json.loads(out.read_text())["timing"]
  # The first result comes after the weights and the compile, within the process's life.
  assert 0 < timing["load_s"] and timing["load_s"] + timing["compile_s"] < (
      timing["first_result_s"]) < wall, (timing, wall)
  # The start-up phases end in this order.
  phases = timing["phases_s"]
  assert list(phases) == ["inputs", "loaded", "warmed", "first_result"], phases
  assert 0 < phases["inputs"] < phases["loaded"] < phases["warmed"] < phases["first_result"]
  return timing, done.stderr


def test_second_process_hits_the_persistent_cache(tmp_path):
  cold, err_cold = _generate(tmp_path / "cache", tmp_path / "a.json")
  warm, err_warm = _generate(tmp_path / "cache", tmp_path / "b.json")
  assert not cold["compile_cache_hit"] and "persistent" not in err_cold
  assert cold["program"] == "traced" and warm["program"] == "exported"  # nothing traced
  assert warm["compile_cache_hit"] and "from the persistent compilation cache" in err_warm
  assert warm["compile_s"] < 0.5 * cold["compile_s"], (cold["compile_s"], warm["compile_s"])
  assert any((tmp_path / "cache").iterdir())
  # The warm process found the stored search's kernel calls (none in a CPU search).
  assert cold["preload"] is None and warm["preload"] == {"kernels": 0, "seconds": 0.0,
                                                         "error": None}
  off, _ = _generate(None, tmp_path / "c.json")
  assert not off["compile_cache_hit"] and off["preload"] is None


@pytest.mark.parametrize("script,args", [
    ("bench_e2e.py", ["--rungs", "xla_bf16,fp8,kernels_bf16_cublas"]),
    ("bench_e2e.py", ["--qwen3-table", "--contexts", "16", "--batches", "2", "--jobs", "2"]),
    ("bench_compile.py", ["--precisions", "fp8"]),
    ("bench_frontier.py", []),
    ("profile_startup.py", []),
    ("sass_dequant_gemm.py", []),
])
def test_benchmark_scripts_at_smoke_size(tmp_path, script, args):
  out = tmp_path / "r.json"
  done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--smoke", "--out",
                         str(out), *args], capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  assert {"device", "jax_version", "git_commit", "summary"} <= set(result)
  assert "summary:" in done.stdout.splitlines()[-1]
  if "--qwen3-table" in args:
    (row,) = result["summary"]
    assert row["ctx"] == 16 and row["batch"] == 2 and row["fp8_ms"] > 0 and not row["errors"]
    assert result["complete"]
    assert row["compiled_from"] == ["exported", "exported"]  # the parallel compile's
    assert 0 < row["beam_overlap"] <= 1
    assert '"rung"' not in done.stdout  # the table alone: no ladder rung ran
  elif script == "bench_frontier.py":
    assert set(result["summary"]["int8_vs_fp8"]) == {"smoke.linear", "smoke.grouped"}
    summary = result["summary"]
    assert summary["w4a8_kernel"] == "dequant_gemm.reference"  # no GPU: the reference
    assert set(summary["w4a8_vs_fp8_t32"]) == {"int4_w4a8", "mxfp4_w4a8", "int4_w4a16"}
    assert all(set(v) == {"smoke.linear", "smoke.grouped"} and min(v.values()) > 0
               for v in summary["w4a8_vs_fp8_t32"].values())  # grouped and dense products
    assert summary["moe_layer_w4a8_vs_fp8_t32"] > 0
    assert result["moe_layer"]["config"] == "tiny-moe" and result["moe_layer"]["tokens"] == 32
  elif script == "bench_e2e.py":
    assert result["summary"]["fp8_ms"] > 0 and result["summary"]["xla_bf16_ms"] > 0
    assert all(0 < r["host_enqueue_ms"] for r in result["ladder"])
    flags = {r["rung"]: r["xla_flags"] for r in result["ladder"]}  # each rung ran
    assert flags == {"xla_bf16": "", "fp8": "",
                     "kernels_bf16_cublas": "--xla_gpu_enable_triton_gemm=false"}
  elif script == "sass_dequant_gemm.py":  # compiled for sm_90 here, with no GPU
    (row,) = result["rows"]
    assert row["registers"] > 0 and row["stack_bytes"] == 0 and row["programs_per_sm"] >= 1
    assert row["loop_mix"]["HADD2"] > 0 and 100 < row["loop_instructions"] < 2000
  elif script == "profile_startup.py":  # the warm process read what the cold one compiled
    summary = result["summary"]
    assert summary["warm_compile_s"] < summary["cold_compile_s"]
    assert summary["warm_executable_read_s"] > 0 and result["runs"]["warm"]["host_events_ms"]
  else:
    summary = result["summary"]
    assert summary["warm_cache_hit"] is True
    assert summary["same_results"] is True  # the stored program returned the same items
    (row,) = result["rows"]
    assert 0 < row["warm"]["cache_bytes"]["exported"] < row["warm"]["cache_bytes"]["all"]
    assert 0 < summary["warm_start_s"] < summary["warm_wall_s"]  # exit comes later
    assert summary["warm_program"] == "exported"  # the stored program: nothing traced
    assert summary["latency_change"] > -1 and summary["bf16_latency_change"] is None
    assert all(r[s]["batches"] == 2 for r in result["rows"] for s in ("cold", "warm"))
    # two warm processes; the warm figures are the lower middle one's (the faster)
    assert summary["warm_runs"] == 2 and len(row["warm_runs"]) == 2
    assert summary["warm_start_s_all"] == [r["first_result_s"] for r in row["warm_runs"]]
    assert summary["warm_start_s"] == min(summary["warm_start_s_all"])


def test_beam_overlap():
  sys.path.insert(0, str(ROOT / "scripts"))
  import bench_e2e
  a = [[[1, 2, 3], [4, 5, 6], [-1, -1, -1]], [[7, 7, 7], [8, 8, 8], [9, 9, 9]]]  # [B, W, L]
  b = [[[4, 5, 6], [1, 2, 4], [-1, -1, -1]], [[9, 9, 9], [8, 8, 8], [7, 7, 7]]]
  # request 0: one of its 3 slots shared (order ignored; empty slots never shared); 1: all
  assert bench_e2e.beam_overlap(a, b) == pytest.approx((1 / 3 + 1.0) / 2)
  assert bench_e2e.beam_overlap([[[-1, 0, 0]]], [[[-1, 0, 0]]]) == 0


@pytest.mark.parametrize("given", [None, "true"])
def test_the_benchmark_parent_leaves_the_childrens_preallocation_as_given(monkeypatch,
                                                                          given):
  sys.path.insert(0, str(ROOT / "scripts"))
  import bench_e2e
  if given is None:
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
  else:
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", given)
  bench_e2e._parent_backend()
  assert os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") == given


def test_breakdown_categories():
  sys.path.insert(0, str(ROOT / "scripts"))
  import bench_e2e
  hlo = ('%loop_add_fusion.3 = bf16[4]{0} fusion(), kind=kLoop, metadata={op_name="jit(_search)'
         '/OneRecV2.decode/layer_2/add"}\n%fusion.7 = f32[2]{0} fusion(), metadata={op_name='
         '"jit(_search)/OneRecV2.decode/layer_0/self_attn/mul"}\n')
  scopes = bench_e2e._hlo_scopes(hlo)
  assert bench_e2e.categorize("loop_add_fusion_3", scopes) == "norms_residual"
  assert bench_e2e.categorize("fusion_7", scopes) == "attention"
  assert bench_e2e.categorize("_quantize_kernel", scopes) == "quantize"
  assert bench_e2e.categorize("_attention_kernel", scopes) == "attention"
  assert bench_e2e.categorize(
      "cudnn_generated_fort_native_sdpa_sm90_knob_7_kernel0_0", {}) == "attention"
  assert bench_e2e.categorize("_beam_filter_kernel", scopes) == "topk"
  assert bench_e2e.categorize("sm90_xmma_gemm_bf16bf16_bf16f32", scopes) == "gemm"
  assert bench_e2e.categorize("some_copy", scopes) == "other"


def test_timeline_gaps():
  """Gaps between a trace's GPU stream kernels, by the kernel after each, from the
  latest end so far (a kernel on a second stream that overlaps is no gap); host events
  and non-stream GPU lines are ignored there; the longest gap lists the host events
  overlapping it, longest overlap first and the innermost (shortest) first among equal
  overlaps; no GPU events reads as None."""
  sys.path.insert(0, str(ROOT / "scripts"))
  import bench_e2e
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7,
           "args": {"name": "Stream #7(Compute)"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8,
           "args": {"name": "Stream #8(MemcpyD2H)"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 9, "args": {"name": "XLA Ops"}}]
  x = lambda pid, tid, ts, dur, name: {"ph": "X", "pid": pid, "tid": tid, "ts": ts,
                                       "dur": dur, "name": name}
  events = meta + [x(1, 7, 100, 10, "gemm_a"), x(1, 7, 113, 4, "_quantize_kernel"),
                   x(1, 8, 115, 20, "copy"),  # overlaps: ends at 135
                   x(1, 7, 140, 5, "gemm_a"), x(1, 7, 205, 5, "_quantize_kernel"),
                   x(1, 9, 0, 500, "op"), x(2, 3, 0, 900, "host"), x(2, 3, 140, 80, "thunk"),
                   x(2, 4, 150, 30, "cuLaunchKernel"), x(2, 4, 190, 100, "sync"),
                   x(2, 4, 120, 10, "before_the_gap")]
  kind = lambda name: "quantize" if "quant" in name else "gemm"
  got = bench_e2e.timeline_gaps(events, kind)
  assert got["kernels"] == 5 and got["span_ms"] == pytest.approx(0.110)
  assert got["gap_ms"] == pytest.approx((3 + 5 + 60) / 1e3)
  assert got["gap_ms_by_next_category"] == pytest.approx({"quantize": 0.063, "gemm": 0.005})
  assert got["gap_ms_by_length"]["2-5us"] == pytest.approx(0.003)
  assert got["gap_ms_by_length"]["5-10us"] == pytest.approx(0.005)
  assert got["gap_ms_by_length"][">=50us"] == pytest.approx(0.060)
  top = got["top_gap_pairs"][0]
  assert (top["before"], top["after"], top["count"]) == ("gemm_a", "_quantize_kernel", 2)
  assert top["ms"] == pytest.approx(0.063)
  (gap,) = got["longest_gaps"]  # 145 -> 205 us; the gaps under 50 us are not listed
  assert (gap["us"], gap["before"], gap["after"]) == (60, "gemm_a", "_quantize_kernel")
  assert [(h["name"], h["overlap_us"], h["dur_us"]) for h in gap["host"]] == [
      ("thunk", 60, 80), ("host", 60, 900), ("cuLaunchKernel", 30, 30), ("sync", 15, 100)]
  assert bench_e2e.timeline_gaps(meta[1:2] + [x(2, 3, 0, 9, "host")], kind) is None


def test_bench_compile_reuses_checkpoints_of_its_config_only(tmp_path):
  write = lambda *extra: subprocess.run(
      [sys.executable, str(ROOT / "scripts" / "bench_compile.py"), "--preset", "tiny",
       "--write-checkpoints", str(tmp_path), *extra], capture_output=True, text=True,
      cwd=ROOT)
  assert write().returncode == 0
  stamps = {p: (tmp_path / p / "onerec_checkpoint.json").stat().st_mtime_ns
            for p in ("bf16", "fp8")}
  assert write().returncode == 0  # kept, not written again
  assert stamps == {p: (tmp_path / p / "onerec_checkpoint.json").stat().st_mtime_ns
                    for p in ("bf16", "fp8")}
  other = write("--layers", "1")
  assert other.returncode != 0 and "a checkpoint of another config" in other.stderr
