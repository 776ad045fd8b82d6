"""The command paths no other test runs: `generate` from a converted FP8 checkpoint (with
the rules it was saved with) and from a PyTorch-format source, `--dtype`, and `stats
--preset`; each against the same computation through the API."""

import json

import jax
import numpy as np

from onerec_jax import checkpoint
from onerec_jax import generate as gen
from onerec_jax.cli import main
from onerec_jax.lab import analysis
from onerec_jax.model import init_params
from test_cli import CFG, source  # noqa: F401  (source: the tiny preset's PyTorch-format source)


def _generate(tmp_path, *argv) -> dict:
  out = tmp_path / "out.json"
  assert main(["generate", *argv, "--random", "3", "--beam-width", "4", "--seed", "2",
               "--output", str(out)]) == 0
  return json.loads(out.read_text())


def _api(ckpt: checkpoint.Checkpoint, config=None, rules=None):
  """The same 3 random requests through generate()."""
  config = config or ckpt.config
  return gen.generate(ckpt.params, config, gen.random_contexts(config, 3, 2), beam_width=4,
                      rules=rules if rules is not None else ckpt.rules)


def _ids(report: dict) -> np.ndarray:
  return np.array([[it["semantic_ids"] for it in r["items"]] for r in report["results"]])


def test_generate_from_an_fp8_checkpoint_runs_its_saved_rules(tmp_path, source):
  dest = checkpoint.convert(source, tmp_path / "fp8", precision="fp8", progress=False)
  report = _generate(tmp_path, str(dest))
  ckpt = checkpoint.load(dest)
  assert report["fp8"] and ckpt.rules is not None and report["source"] == str(dest)
  np.testing.assert_array_equal(_ids(report), _api(ckpt).semantic_ids)


def test_generate_from_a_pytorch_source(tmp_path, source):
  report = _generate(tmp_path, str(source))
  assert not report["fp8"] and report["source"] == str(source)
  np.testing.assert_array_equal(_ids(report), _api(checkpoint.load(source)).semantic_ids)


def test_generate_dtype(tmp_path, source, capsys):
  report = _generate(tmp_path, str(source), "--dtype", "bfloat16")
  assert report["config"]["dtype"] == "bfloat16" and "dtype bfloat16" in capsys.readouterr().err
  res = _api(checkpoint.load(source), config=CFG.replace(dtype="bfloat16"))
  np.testing.assert_array_equal(_ids(report), res.semantic_ids)


def test_stats_preset(tmp_path, capsys):
  assert main(["stats", "--preset", "tiny", "--seed", "4", "--batch", "2", "--out",
               str(tmp_path)]) == 0
  data = json.loads((tmp_path / "stats.json").read_text())
  assert data["source"] == "preset tiny, random weights, seed 4" and data["batch"] == 2
  params = jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(4))  # the seed's
  w = params["layer_1"]["self_attn"]["o_proj"]["weight"]
  row = next(r for r in data["weights"] if r["path"] == "layer_1/self_attn/o_proj")
  assert row == {"path": "layer_1/self_attn/o_proj", "shape": list(w.shape),
                 "scheme": "per_channel", **analysis.tensor_stats(w)}
  assert len(data["activations"]) == 2 * 6 and len(data["logits"]) == CFG.levels
  assert "mean, quantized modules" in capsys.readouterr().out
