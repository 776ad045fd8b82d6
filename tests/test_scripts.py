"""Every script under scripts/ runs at least once: train_demo.py at a tiny size (its output
is a source the commands read), bench_generate.py at its --smoke size on the CPU, and the
GPU-only benchmarks (CUPTI timing, Triton kernels named) import and parse --help;
bench_builds.py times this checkout against a copy of its packages.
convert_checkpoint.py and make_random_checkpoint.py run in test_checkpoint.py,
soak_generate.py's soak in test_soak.py; test.sh is CI itself, demo.sh runs setup_env.sh
and then `onerec-jax generate` (test_generate.py runs that command on the demo)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from onerec_jax import checkpoint
from onerec_jax import generate as gen
from onerec_jax.config import preset
from onerec_jax.lab import data

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _run(name, *argv, cwd=None):
  done = subprocess.run([sys.executable, str(SCRIPTS / name), *argv], capture_output=True,
                        text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(SCRIPTS)})
  assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr[-3000:])
  return done


def test_train_demo_tiny(tmp_path):
  out = tmp_path / "demo"
  done = _run("train_demo.py", "--preset", "tiny", "--steps", "2", "--batch-size", "8",
              "--out", str(out), "--workdir", str(tmp_path / "work"))
  assert "trained 2 steps" in done.stdout
  config = checkpoint.read_config(out)
  assert config == preset("tiny")
  options = data.DataConfig(**json.loads((out / "data.json").read_text()))
  dataset = data.make_dataset(options, config)
  ids, sem = gen.load_valid_items(out / "valid_items.npz")
  np.testing.assert_array_equal(sem, dataset.semantic_ids)
  features, _, request_ids = gen.load_contexts(out / "contexts.npz", config)
  assert len(request_ids) == 16 and gen.check_inputs(config, features, None, 4, None) == 16
  train_log = json.loads((out / "train.json").read_text())
  assert train_log["train"]["steps"] == 2 and len(train_log["val_ce"]) == config.levels
  assert checkpoint.load(out).params["head_0_proj"]["weight"].dtype == np.float16


def test_bench_generate_smoke(tmp_path):
  out = tmp_path / "generate.json"
  _run("bench_generate.py", "--smoke", "--out", str(out))
  report = json.loads(out.read_text())
  assert report["preset"] == "tiny" and report["kernels"] == "reference"
  assert [r["valid_items"] for r in report["results"]] == [None, 50]
  for row in report["results"]:
    assert row["batch"] == 2 and row["beam_width"] == 4 and row["runs"] == 1
    assert row["scores_descending"] and row["empty_slots"] == 0 and row["compile_s"] > 0


def test_bench_builds_smoke(tmp_path):
  """Two builds timed in turns (this checkout, and a copy of its packages as the
  baseline): each process imports both packages from its own tree, both compute the same
  scores, and the summary's change is their medians' ratio."""
  out = tmp_path / "builds.json"
  root, base = SCRIPTS.parent.resolve(), tmp_path / "base"
  for folder in ("onerec_jax", "kernels"):
    shutil.copytree(root / folder, base / folder,
                    ignore=shutil.ignore_patterns("__pycache__"))
  _run("bench_builds.py", "--smoke", "--modes", "bf16", "--baseline", str(base),
       "--baseline-commit", "copy", "--context", "12", "--out", str(out))
  report = json.loads(out.read_text())
  rows, s = report["rows"], report["summary"]
  assert report["complete"] and set(rows) == {"baseline/bf16", "head/bf16"}
  assert report["context"] == 12
  for build, tree in (("baseline", base.resolve()), ("head", root)):
    row = rows[f"{build}/bf16"]
    assert row["sources"] == [str(tree / "onerec_jax" / "generate" / "__init__.py"),
                              str(tree / "kernels" / "__init__.py")]
    assert [len(r) for r in row["times_ms"]] == [2, 2] and row["scores_finite"]
    assert row["context_len"] == 12
  assert rows["baseline/bf16"]["score_sum"] == rows["head/bf16"]["score_sum"]
  ratio = rows["head/bf16"]["latency_ms_median"] / rows["baseline/bf16"]["latency_ms_median"]
  assert s["latency_change"] == s["bf16_latency_change"] == pytest.approx(ratio - 1)
  assert s["baseline_commit"] == "copy"
  (base / "kernels").rename(base / "kernels_gone")  # a tree without its kernels folder
  bad = subprocess.run([sys.executable, str(SCRIPTS / "bench_builds.py"), "--baseline",
                        str(base)], capture_output=True, text=True)
  assert bad.returncode == 2 and "not a source tree" in bad.stderr


@pytest.mark.parametrize("name", ["bench_fp8_linear.py", "bench_grouped_gemm.py",
                                  "bench_quantize.py", "bench_topk.py",
                                  "soak_generate.py"])
def test_script_parses_help(name):
  assert _run(name, "--help").stdout.startswith("usage: ")


def _gemm_row(shape, m, ours, xla, **extra):
  times = {"pallas_fp8": ours, **extra}
  return {"shape": shape, "m": m, "times_ms": times,
          "fp8_vs_xla_fp8": xla / ours, "vs_xla_fp8": xla / ours,
          "best_vs_xla_fp8": xla / min(times.values()),
          "best_config": min(times, key=times.get)}


def test_gemm_benchmark_summaries_name_the_issue_figures():
  """The grouped GEMM and FP8 linear benchmarks' headline figures against XLA's FP8 dot:
  gate_up's ratio, the linear's minimum over the moe-4b shapes at M >= 1024 (32-token
  rows left out), the fastest config per shape, the MoE layer against bf16."""
  sys.path.insert(0, str(SCRIPTS))
  import bench_fp8_linear
  import bench_grouped_gemm
  rows = [_gemm_row("moe4b.gate_up.uniform", 49152, 0.4, 0.25, alt_minor_n=0.5),
          _gemm_row("moe4b.down.uniform", 49152, 0.2, 0.1, alt_minor_n=0.18)]
  s = bench_grouped_gemm.summary(rows, {"fp8_vs_own_bf16": 1.6})
  assert s["grouped_vs_xla_fp8"] == pytest.approx(0.625)
  assert s["down_vs_xla_fp8"] == pytest.approx(0.5)
  assert s["fastest_config"] == {"moe4b.gate_up.uniform": "pallas_fp8",
                                 "moe4b.down.uniform": "alt_minor_n"}
  assert s["moe_layer_vs_bf16"] == 1.6
  assert bench_grouped_gemm.summary(rows, None)["moe_layer_vs_bf16"] is None
  lin = [_gemm_row("moe4b.qkv", 16384, 0.15, 0.13), _gemm_row("moe4b.o", 16384, 0.05, 0.04),
         _gemm_row("moe4b.o", 32, 0.01, 0.001), _gemm_row("1b.o", 16384, 0.1, 0.01)]
  s = bench_fp8_linear.summarize(lin)
  assert set(s["linear_vs_xla_fp8"]) == {"moe4b.qkv", "moe4b.o"}
  assert s["linear_vs_xla_fp8_min"] == pytest.approx(0.8)
  assert not any(k.startswith("moe4b_layer") for k in s)  # no full layer ran
  # Rows below 1024: the default against the fastest tiling timed at that shape.
  few = _gemm_row("qwen3.o", 256, 0.009, 0.008, alt_64x64_n=0.0075)
  small = bench_fp8_linear.summarize([few])["small_m_default_vs_best"]
  assert small == {"qwen3.o@256": {"best_config": "alt_64x64_n",
                                   "default_over_best": pytest.approx(1.2),
                                   "default_vs_xla_fp8": pytest.approx(0.8 / 0.9)}}
