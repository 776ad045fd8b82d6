"""Conversion from the PyTorch format: exact round trips, every source format, and a clear
error for each bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from helpers import state_dict_numpy, torch_model
from onerec_jax import checkpoint
from onerec_jax.checkpoint import CheckpointError, convert, export, jax_to_torch, load
from onerec_jax.config import preset

CFG = preset("tiny-moe")


@pytest.fixture(scope="module")
def state():
  return state_dict_numpy(torch_model(CFG, seed=11))


def _write(tmp_path, tensors, name="model.safetensors"):
  src = tmp_path / "src"
  src.mkdir(exist_ok=True)
  save_file(tensors, str(src / name))
  (src / "config.json").write_text(CFG.to_json())
  return src


def _assert_bit_exact(original, exported):
  assert set(original) == set(exported)
  for name, t in original.items():
    assert exported[name].dtype == t.dtype, name
    np.testing.assert_array_equal(exported[name].view(np.uint16), t.view(np.uint16),
                                  err_msg=name)


def test_round_trip_is_bit_exact(tmp_path, state):
  src = _write(tmp_path, state)
  dest = convert(src, tmp_path / "jax", progress=False)
  config, params, *_ = load(dest)
  assert config == CFG
  assert params["layer_2"]["mlp"]["experts"]["gate_up_proj"]["weight"].dtype == np.float16
  assert params["layer_2"]["mlp"]["experts"]["gate_up_proj"]["weight"].shape == (
      CFG.n_routed_experts, 2 * CFG.expert_d_ff, CFG.d_model)
  _assert_bit_exact(state, jax_to_torch(params, config))
  # export writes the PyTorch format that conversion reads.
  again = convert(export(params, config, tmp_path / "exported"), tmp_path / "jax2",
                  progress=False)
  _assert_bit_exact(state, jax_to_torch(load(again)[1], config))


def test_sharded_safetensors_folder(tmp_path, state):
  src = tmp_path / "sharded"
  src.mkdir()
  names = sorted(state)
  shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
  weight_map = {}
  for shard, keys in shards.items():
    save_file({k: state[k] for k in keys}, str(src / shard))
    weight_map.update({k: shard for k in keys})
  (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  (src / "config.json").write_text(CFG.to_json())
  _, params, *_ = load(convert(src, tmp_path / "jax", progress=False))
  _assert_bit_exact(state, jax_to_torch(params, CFG))


def test_torch_pt_file_loaded_with_weights_only(tmp_path, state):
  src = tmp_path / "pt"
  src.mkdir()
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, src / "model.pt")
  (src / "config.json").write_text(CFG.to_json())
  _, params, *_ = load(convert(src / "model.pt", tmp_path / "jax", progress=False))
  _assert_bit_exact(state, jax_to_torch(params, CFG))


def test_pickled_object_is_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("executed",))
  torch.save({"x": Evil()}, tmp_path / "evil.pt")
  (tmp_path / "config.json").write_text(CFG.to_json())
  with pytest.raises(CheckpointError, match=r"evil.pt: not loaded \(.*Unsupported global: "
                     r"GLOBAL print was not an allowed global by default\); .*never executed"):
    convert(tmp_path / "evil.pt", tmp_path / "out", progress=False)


@pytest.mark.parametrize("damage, message", [
    ("missing", r"missing tensors \(1\): \['layers.1.self_attn.k_proj.weight'\]"),
    ("unexpected", r"unexpected tensors \(1\): \['layers.0.extra.weight'\]"),
    ("shape", r"wrong shapes \(1\): \['heads.2.proj.weight: \(16, 63\) \(expected \(16, 64\)\)'\]"),
    ("nan", r"tensor 'layers.3.mlp.experts.5.up_proj.weight' has 1 NaN/Inf values"),
    ("inf", r"tensor 'context.k_norms.1.weight' has 2 NaN/Inf values"),
])
def test_bad_checkpoints_fail_naming_the_tensor(tmp_path, state, damage, message):
  bad = dict(state)
  if damage == "missing":
    del bad["layers.1.self_attn.k_proj.weight"]
  elif damage == "unexpected":
    bad["layers.0.extra.weight"] = np.zeros((2, 2), np.float16)
  elif damage == "shape":
    bad["heads.2.proj.weight"] = bad["heads.2.proj.weight"][:, :63].copy()
  elif damage == "nan":
    t = bad["layers.3.mlp.experts.5.up_proj.weight"].copy()
    t[1, 2] = np.nan
    bad["layers.3.mlp.experts.5.up_proj.weight"] = t
  else:
    t = bad["context.k_norms.1.weight"].copy()
    t[:2] = np.inf
    bad["context.k_norms.1.weight"] = t
  src = _write(tmp_path, bad)
  with pytest.raises(CheckpointError, match=message):
    convert(src, tmp_path / "jax", progress=False)
  assert not (tmp_path / "jax").exists()


def test_interrupted_conversion_leaves_nothing_that_loads(tmp_path, state, monkeypatch):
  src = _write(tmp_path, state)

  def boom(*args, **kwargs):
    raise KeyboardInterrupt("interrupted")

  monkeypatch.setattr(checkpoint.store.ocp.StandardCheckpointer, "wait_until_finished", boom)
  with pytest.raises(KeyboardInterrupt):
    convert(src, tmp_path / "jax", progress=False)
  assert not (tmp_path / "jax").exists()
  assert not list(tmp_path.glob(".jax.partial-*"))
  with pytest.raises(CheckpointError, match="checkpoint not found"):
    load(tmp_path / "jax")


def test_half_written_folder_does_not_load(tmp_path, state):
  dest = convert(_write(tmp_path, state), tmp_path / "jax", progress=False)
  (dest / checkpoint.store.METADATA_NAME).unlink()
  with pytest.raises(CheckpointError, match="onerec_checkpoint.json missing"):
    load(dest)


def test_existing_destination_needs_overwrite(tmp_path, state):
  src = _write(tmp_path, state)
  convert(src, tmp_path / "jax", progress=False)
  with pytest.raises(CheckpointError, match="exists; pass overwrite=True"):
    convert(src, tmp_path / "jax", progress=False)
  convert(src, tmp_path / "jax", progress=False, overwrite=True)
  assert load(tmp_path / "jax")[0] == CFG


def test_source_errors(tmp_path, state):
  with pytest.raises(CheckpointError, match="checkpoint not found"):
    convert(tmp_path / "nope.safetensors", tmp_path / "jax", config=CFG)
  src = tmp_path / "noconfig"
  src.mkdir()
  save_file(state, str(src / "model.safetensors"))
  with pytest.raises(CheckpointError, match="no config.json beside"):
    convert(src, tmp_path / "jax")
  (tmp_path / "weights.npz").write_bytes(b"x")
  with pytest.raises(CheckpointError, match="unknown checkpoint format"):
    convert(tmp_path / "weights.npz", tmp_path / "jax", config=CFG)
  with pytest.raises(CheckpointError, match="precision 'int4'"):
    convert(src, tmp_path / "jax", config=CFG, precision="int4")
  (src / "config.json").write_text(json.dumps({**CFG.to_dict(), "n_heads": 3}))
  with pytest.raises(CheckpointError, match=r"kv_heads=2: must divide n_heads=3"):
    convert(src, tmp_path / "jax")


def test_cli_convert(tmp_path, state):
  from onerec_jax.cli import main
  src = _write(tmp_path, state)
  assert main(["convert", str(src), str(tmp_path / "jax")]) == 0
  _assert_bit_exact(state, jax_to_torch(load(tmp_path / "jax")[1], CFG))


def test_convert_script_to_fp16(tmp_path, state):
  import pathlib
  import subprocess
  import sys
  src = _write(tmp_path, state)
  script = pathlib.Path(__file__).parents[1] / "scripts" / "convert_checkpoint.py"
  done = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "jax")],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "wrote" in done.stdout
  _assert_bit_exact(state, jax_to_torch(load(tmp_path / "jax")[1], CFG))


def test_cli_lists_every_subcommand(capsys):
  from onerec_jax.cli import SUBCOMMANDS, main
  with pytest.raises(SystemExit) as done:
    main(["--help"])
  assert done.value.code == 0
  out = capsys.readouterr().out
  assert all(name in out for name in SUBCOMMANDS)


def test_load_demo_reconverts_when_the_shipped_files_change(tmp_path, monkeypatch, state):
  """The demo's converted copy lives in the user cache folder, never beside the source."""
  src = _write(tmp_path, state)
  monkeypatch.setattr(checkpoint.loader, "DEMO_SOURCE", src)
  monkeypatch.setenv("ONEREC_JAX_CACHE", str(tmp_path / "cache"))
  cached = tmp_path / "cache" / "demo" / "fp16"
  assert checkpoint.demo_converted() == cached
  first = checkpoint.load().params  # no path: the demo
  meta = checkpoint.read_metadata(cached)
  assert meta["source"].startswith(f"{src} sha256:")
  checkpoint.load_demo()  # unchanged: no new conversion
  assert checkpoint.read_metadata(cached)["created"] == meta["created"]
  changed = dict(state)
  changed["embed.bos"] = (state["embed.bos"] + 1).astype(np.float16)
  save_file(changed, str(src / "model.safetensors"))
  second = checkpoint.load_demo().params
  np.testing.assert_array_equal(np.asarray(second["embed"]["bos"]), changed["embed.bos"])
  assert not np.array_equal(np.asarray(first["embed"]["bos"]), changed["embed.bos"])
  assert sorted(p.name for p in src.iterdir()) == ["config.json", "model.safetensors"]


def test_make_random_checkpoint_script_writes_what_convert_reads(tmp_path):
  import pathlib
  import subprocess
  import sys
  script = pathlib.Path(__file__).parents[1] / "scripts" / "make_random_checkpoint.py"
  done = subprocess.run([sys.executable, str(script), "--preset", "tiny-moe", "--out",
                         str(tmp_path / "rnd")], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  config, params, *_ = load(convert(tmp_path / "rnd", tmp_path / "jax", progress=False))
  assert config == CFG
  assert params["layer_3"]["mlp"]["router"]["weight"].dtype == np.float16


@pytest.mark.parametrize("name", ["tiny-moe", "qwen3-moe-tiny"])
def test_parameter_tree_is_kept_in_the_compile_cache(compile_cache_dir, monkeypatch, name):
  import jax
  from onerec_jax.checkpoint import store
  from onerec_jax.model import default_rules
  cfg = preset(name)
  files = lambda: set((compile_cache_dir / "onerec-param-trees").glob("*.json"))
  for rules in (None, default_rules(cfg)):
    before = files() if compile_cache_dir.exists() else set()
    traced = store.abstract_params(cfg, rules)  # traced, and written to the folder
    (stored,) = files() - before
    with monkeypatch.context() as m:  # read back without tracing anything
      m.setattr(store, "init_params", lambda *a: pytest.fail("traced again"))
      read = store.abstract_params(cfg, rules)
    assert jax.tree.structure(read) == jax.tree.structure(traced)
    assert [(x.shape, x.dtype) for x in jax.tree.leaves(read)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(traced)]
    stored.write_text("{not json")  # a damaged file is traced again and rewritten
    assert jax.tree.structure(store.abstract_params(cfg, rules)) == jax.tree.structure(traced)
    assert json.loads(stored.read_text())
  assert len(files()) == 2
  other = store.abstract_params(cfg.replace(n_layers=cfg.n_layers + 1))  # another file
  assert len(files()) == 3
  assert jax.tree.structure(other) != jax.tree.structure(traced)


def test_parameter_tree_is_not_kept_with_the_cache_off(tmp_path, monkeypatch):
  import jax
  from onerec_jax.checkpoint import store
  assert not jax.config.jax_compilation_cache_dir
  calls = []
  real = store.init_params
  monkeypatch.setattr(store, "init_params", lambda *a: calls.append(1) or real(*a))
  store.abstract_params(preset("tiny"))
  store.abstract_params(preset("tiny"))
  assert len(calls) == 2


def test_parameter_tree_unkept_where_the_folder_cannot_be_written(compile_cache_dir):
  import jax
  from onerec_jax.checkpoint import store
  compile_cache_dir.mkdir(parents=True)
  (compile_cache_dir / "onerec-param-trees").write_text("a file where the folder goes")
  tree = store.abstract_params(preset("tiny"))  # traced; the keeping fails quietly
  assert jax.tree.leaves(tree) and sorted(p.name for p in compile_cache_dir.iterdir()) == [
      "onerec-param-trees"]


def test_write_whole(tmp_path):
  import concurrent.futures
  from onerec_jax.cache import write_whole
  path = tmp_path / "deeper" / "f.json"
  assert write_whole(path, b"one") and path.read_bytes() == b"one"  # folder made
  datas = [bytes([65 + i]) * 200_000 for i in range(8)]  # threads racing for one path
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    assert all(pool.map(lambda d: write_whole(path, d), datas))
  assert path.read_bytes() in datas  # one of them whole, never a mix
  assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temporary left
  blocked = tmp_path / "file"
  blocked.write_text("x")
  assert not write_whole(blocked / "f.json", b"y")  # its folder is a file: not written
  assert blocked.read_text() == "x"
