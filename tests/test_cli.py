"""Every command turns a bad input into one line naming the file, key, shape or value,
with exit code 2, before any compilation; --debug shows the traceback instead."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from helpers import state_dict_numpy, torch_model
from onerec_jax import checkpoint
from onerec_jax.cli import main
from onerec_jax.config import preset
from onerec_jax.generate import compile_cache

CFG = preset("tiny")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A good PyTorch-format source of the tiny preset."""
  src = tmp_path_factory.mktemp("src")
  save_file(state_dict_numpy(torch_model(CFG, seed=5)), str(src / "model.safetensors"))
  (src / "config.json").write_text(CFG.to_json())
  return src


def _copy(source: pathlib.Path, dest: pathlib.Path, weights: bytes | None = None):
  dest.mkdir()
  (dest / "config.json").write_text((source / "config.json").read_text())
  data = (source / "model.safetensors").read_bytes()
  (dest / "model.safetensors").write_bytes(data if weights is None else weights(data))
  return dest


def _fails(capsys, argv, *needles):
  """Runs the command: exit 2, one stderr line naming the needles, nothing compiled."""
  before = compile_cache.compile_events()["compiles"]
  assert main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith(f"onerec-jax {argv[0]}: error: "), err
  for needle in needles:
    assert str(needle) in err, (needle, err)
  assert compile_cache.compile_events()["compiles"] == before, "compiled before failing"
  return err


def test_convert_bad_inputs(tmp_path, source, capsys):
  missing = tmp_path / "nope"
  _fails(capsys, ["convert", str(missing), str(tmp_path / "o")], "checkpoint not found", missing)
  bare = tmp_path / "bare"
  bare.mkdir()
  (bare / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
  _fails(capsys, ["convert", str(bare), str(tmp_path / "o")], "no config.json beside", bare)
  truncated = _copy(source, tmp_path / "truncated", lambda b: b[:len(b) // 2])
  _fails(capsys, ["convert", str(truncated), str(tmp_path / "o")],
         truncated / "model.safetensors", "cannot read the safetensors file")
  garbage = _copy(source, tmp_path / "garbage", lambda b: b"\x00garbage" * 10)
  _fails(capsys, ["convert", str(garbage), str(tmp_path / "o")], garbage / "model.safetensors")
  (tmp_path / "exists").mkdir()
  (tmp_path / "exists" / "keep.txt").write_text("x")
  _fails(capsys, ["convert", str(source), str(tmp_path / "exists")], "exists; pass")
  bad_config = tmp_path / "config.json"
  bad_config.write_text("{not json")
  _fails(capsys, ["convert", str(source), str(tmp_path / "o"), "--config", str(bad_config)],
         bad_config, "not valid JSON")
  assert not (tmp_path / "o").exists()


def test_convert_reads_a_folder_holding_one_torch_file(tmp_path, source, capsys):
  import torch
  folder = tmp_path / "pt"
  folder.mkdir()
  (folder / "config.json").write_text(CFG.to_json())
  torch.save(torch_model(CFG, seed=5).state_dict(), folder / "model.pt")
  assert main(["convert", str(folder), str(tmp_path / "o")]) == 0
  assert checkpoint.load(tmp_path / "o").config == CFG


def test_generate_bad_inputs(tmp_path, source, capsys):
  _fails(capsys, ["generate", "/does/not/exist"], "checkpoint not found: /does/not/exist")
  corrupt = _copy(source, tmp_path / "corrupt", lambda b: b[:100])
  _fails(capsys, ["generate", str(corrupt), "--random", "2", "--beam-width", "4"],
         corrupt / "model.safetensors")
  (tmp_path / "file").write_text("x")
  _fails(capsys, ["generate", "--preset", "tiny", "--output", str(tmp_path / "file" / "o.json")],
         tmp_path / "file")
  _fails(capsys, ["generate", "--preset", "tiny", "--beam-width", "0"], "--beam-width", "0")
  _fails(capsys, ["generate", "--preset", "tiny", "--beam-width", "5000"],
         "beam_width=5000 exceeds the 4096 semantic-ID tuples")
  _fails(capsys, ["generate", "--preset", "tiny", "--contexts", str(tmp_path / "no.npz")],
         tmp_path / "no.npz", "not found")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  _fails(capsys, ["generate", "--preset", "tiny", "--contexts", str(tmp_path / "junk.npz")],
         tmp_path / "junk.npz", "cannot read")
  np.savez(tmp_path / "items.npz", item_ids=np.array([4, 9, 4]),
           semantic_ids=np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0]]))
  _fails(capsys, ["generate", "--preset", "tiny", "--beam-width", "2", "--valid-items",
                  str(tmp_path / "items.npz")], "item id 4 is repeated")
  np.savez(tmp_path / "noitems.npz", ids=np.array([1]))
  _fails(capsys, ["generate", "--preset", "tiny", "--valid-items",
                  str(tmp_path / "noitems.npz")], "lacks ['item_ids', 'semantic_ids']")
  _fails(capsys, ["generate", "--preset", "nope"], "unknown preset 'nope'")


def test_generate_damaged_converted_checkpoint(tmp_path, source, capsys):
  """A converted checkpoint's data file cut short: one line naming its params folder,
  exit 2, nothing compiled (the restore's late reads print nothing after it)."""
  dest = checkpoint.convert(source, tmp_path / "jax", progress=False)
  data = max((p for p in (dest / "params").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  _fails(capsys, ["generate", str(dest), "--random", "2", "--beam-width", "4"],
         dest / "params", "cannot restore the parameters")


def test_generate_bad_device_options(capsys):
  tiny = ["generate", "--preset", "tiny", "--random", "2", "--beam-width", "4"]
  _fails(capsys, [*tiny, "--devices", "2"], "devices=2: this run has 1")
  _fails(capsys, [*tiny, "--devices", "0"], "--devices must be a positive integer")
  _fails(capsys, [*tiny, "--expert-parallel", "2"], "expert_parallel=2 must be")
  _fails(capsys, [*tiny, "--devices", "1", "--expert-parallel", "2"],
         "expert_parallel=2 must be")
  _fails(capsys, [*tiny, "--coordinator", "localhost:1"],
         "--coordinator, --num-processes and --process-id go together")
  _fails(capsys, [*tiny, "--coordinator", "localhost:1", "--num-processes", "2",
                  "--process-id", "2"], "process id 2 outside [0, 2)")


def test_stats_and_eval_bad_inputs(tmp_path, source, capsys):
  corrupt = _copy(source, tmp_path / "corrupt", lambda b: b[:100])
  _fails(capsys, ["stats", str(corrupt), "--out", str(tmp_path / "s")],
         corrupt / "model.safetensors")
  _fails(capsys, ["eval", str(tmp_path / "nope")], "checkpoint not found")
  _fails(capsys, ["eval", str(source)], source / "data.json", "not found")
  (tmp_path / "rules.json").write_text(json.dumps({"rules": [["x", "int3"]]}))
  _fails(capsys, ["stats", "--preset", "tiny", "--rules", str(tmp_path / "rules.json")],
         "unknown scheme 'int3'")
  fp8 = checkpoint.convert(source, tmp_path / "fp8", precision="fp8", progress=False)
  _fails(capsys, ["stats", str(fp8)], "is an FP8 checkpoint")
  _fails(capsys, ["eval", "--beam-width", "10"], "--beam-width 10: must be at least 50")
  _fails(capsys, ["eval", "--wide-requests", "-1"], "--wide-requests must be 0 or more")
  (tmp_path / "data.json").write_text(json.dumps({"dataset": "ml-1m"}))
  _fails(capsys, ["eval", "--data", str(tmp_path / "data.json")], "unknown dataset 'ml-1m'")
  _fails(capsys, ["stats", "--preset", "tiny", "--recipe", "fp3"], "unknown recipe 'fp3'")


def test_debug_shows_the_traceback(capsys):
  with pytest.raises(checkpoint.CheckpointError, match="checkpoint not found"):
    main(["generate", "/does/not/exist", "--debug"])


def test_help_shows_the_defaults(capsys):
  with pytest.raises(SystemExit) as done:
    main(["generate", "--help"])
  assert done.value.code == 0
  text = " ".join(capsys.readouterr().out.split())
  assert "items per request (default: 64)" in text
  assert "most requests per compiled batch (default: 32)" in text


def test_python_dash_m_runs_the_command():
  done = subprocess.run([sys.executable, "-m", "onerec_jax", "convert", "--help"],
                        capture_output=True, text=True)
  assert done.returncode == 0 and "usage: onerec-jax convert" in done.stdout
