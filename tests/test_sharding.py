"""Scaling out (docs/scaling.md). The beam search over 4 and 8 forced host devices, each
count in a process of its own (the device count is fixed when jax starts, and this
process keeps its one device: tests/sharded_check.py), equals the single-device search
for data and expert parallelism, uneven request counts, padded experts, FP8 and
constrained decoding; two processes over localhost (jax.distributed, gloo) give the
single-process results; here, a mesh of one device and the bucket rounding."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from onerec_jax import generate as gen
from onerec_jax.cli import main
from onerec_jax.config import preset
from onerec_jax.generate import sharding
from onerec_jax.model import init_params

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATE = ["generate", "--preset", "tiny-moe", "--random", "5", "--beam-width", "8",
            "--no-compile-cache"]


def _forced_devices(n: int) -> dict[str, str]:
  """The environment of a process whose jax sees n CPU devices (the CPU even where a GPU
  is)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
  return dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")


def _check_sharded(devices: int, cases: tuple[str, ...], env: dict[str, str]) -> None:
  """Runs sharded_check.py (every case when none named) and checks every row."""
  done = subprocess.run([sys.executable, str(ROOT / "tests" / "sharded_check.py"),
                         str(devices), *cases], env=env, capture_output=True, text=True,
                        cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = {r["case"]: r for r in map(json.loads, done.stdout.splitlines())}
  compared = {"data_parallel_uneven", "default_mesh", "data_and_expert",
              "expert_parallel_chunks"}
  if not cases:
    compared.add("expert_parallel_padded_fp8_constrained")
    assert {"expert_parallel_without_moe", "more_shards_than_experts",
            "expert_parallel_not_dividing"} <= set(rows)
  assert compared <= set(rows), rows
  for case, row in rows.items():
    if "refused" in row:
      assert row["refused"], f"{case} was not refused"
      continue
    assert row["ids_equal"] and row["items_equal"], row
    assert row["max_score_diff"] < 1e-5, row
  assert rows["default_mesh"]["devices"] == devices
  assert rows["data_parallel_uneven"]["rows"] == devices + 1
  if not cases:
    padded = rows["expert_parallel_padded_fp8_constrained"]
    assert (padded["placed_experts"], padded["local_experts"]) == (2 * devices, 2)


@pytest.mark.parametrize("devices,cases", [
    (4, ()),  # every case of sharded_check.py
    (8, ("data_parallel", "expert_parallel")),
])
def test_sharded_search_equals_single_device(devices, cases):
  _check_sharded(devices, cases, _forced_devices(devices))


def test_sharded_program_is_stored_for_the_next_process(tmp_path):
  env = dict(_forced_devices(2), ONEREC_JAX_COMPILE_CACHE=str(tmp_path))
  hows = []
  for _ in range(2):
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "sharded_check.py"), "2",
                           "stored_program"], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot be stored" not in done.stderr, done.stderr[-3000:]
    hows += json.loads(done.stdout.splitlines()[-1])["how"]
  assert hows == ["traced", "exported"]  # the second process traced nothing


@pytest.mark.gpu
def test_two_gpus_equal_one_gpu():
  """The same cases on two GPUs, with the GPU kernels."""
  if len(jax.devices()) < 2:
    pytest.skip("needs two GPUs")
  _check_sharded(2, (), dict(os.environ))


def test_mesh_of_one_device_equals_no_mesh():
  cfg = preset("tiny")
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  feats = gen.random_contexts(cfg, 3, seed=1)
  assert sharding.default_mesh() is None  # one device: the single-device program
  want = gen.generate(params, cfg, feats, beam_width=8)
  got = gen.generate(params, cfg, feats, beam_width=8, mesh=sharding.make_mesh(1))
  np.testing.assert_array_equal(got.semantic_ids, want.semantic_ids)
  np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


def test_buckets_round_up_to_the_devices():
  four = types.SimpleNamespace(size=4)
  assert sharding.round_buckets(gen.DEFAULT_BUCKETS, four) == (4, 8, 16, 32, 64)
  assert sharding.round_buckets((5, 3), four) == (4, 8)
  assert sharding.round_buckets((5, 3), None) == (3, 5)


def test_bad_meshes_are_refused_before_device_work():
  with pytest.raises(sharding.MeshError, match="devices=2: this run has 1"):
    sharding.make_mesh(2)
  with pytest.raises(sharding.MeshError, match="expert_parallel=2 must be"):
    sharding.make_mesh(1, expert_parallel=2)
  other = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
  cfg = preset("tiny")
  with pytest.raises(sharding.MeshError, match=r"\['batch'\] unknown"):
    gen.generate(None, cfg, gen.random_contexts(cfg, 2), beam_width=4, mesh=other)
  with pytest.raises(sharding.MeshError, match="must be a jax.sharding.Mesh"):
    gen.generate(None, cfg, gen.random_contexts(cfg, 2), beam_width=4, mesh=2)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_over_localhost(tmp_path):
  """The command in two processes of two forced devices each, the experts split over all
  four: process 0 writes what one process on one device writes."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "onerec_jax", *GENERATE, "--devices", "4", "--expert-parallel",
       "4", "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id",
       str(i), "--output", str(tmp_path / f"process{i}.json")],
      env=_forced_devices(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  assert main([*GENERATE, "--output", str(tmp_path / "one.json")]) == 0
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  assert not (tmp_path / "process1.json").exists()  # process 0 reports
  one = json.loads((tmp_path / "one.json").read_text())
  two = json.loads((tmp_path / "process0.json").read_text())
  assert (two["timing"]["devices"], two["timing"]["expert_parallel"]) == (4, 4)
  assert one["timing"]["devices"] == 1
  assert len(two["results"]) == len(one["results"]) == 5
  for a, b in zip(one["results"], two["results"]):
    assert [i["semantic_ids"] for i in a["items"]] == [i["semantic_ids"] for i in b["items"]]
    np.testing.assert_allclose([i["log_prob"] for i in a["items"]],
                               [i["log_prob"] for i in b["items"]], atol=1e-5)


def test_scale_out_benchmark_at_smoke_size(tmp_path):
  """bench_e2e.py --devices on the CPU's forced host devices: one GPU's rung and the
  expert-parallel one, each in its own process, and the summary over them."""
  out = tmp_path / "multi_gpu.json"
  done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--smoke",
                         "--devices", "2", "--rungs", "fp8,fp8_dp_ep", "--out", str(out)],
                        capture_output=True, text=True, cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(out.read_text())
  summary = result["summary"]
  assert summary["smoke"] is True and summary["gpus"] == 2
  assert summary["ep_speedup"] > 0 and summary["dp_speedup"] is None
  one, ep = result["ladder"]
  assert (one["devices"], ep["devices"], ep["expert_parallel"]) == (1, 2, 2)
  assert ep["batch"] == 2 * one["batch"] and ep["scores_descending"]
  assert one["moe_layer_ms"] > 0 and ep["moe_layer_ms"] > 0
