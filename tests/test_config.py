"""Config validation, JSON round trip, presets and their parameter counts."""

import dataclasses
import json

import pytest

from onerec_jax.config import (PAPER_SIZES, PRESETS, Config, ConfigError, Pathway,
                               Qwen3Config, config_from_json, preset, size_class_matches)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
  cfg = PRESETS[name]
  again = config_from_json(cfg.to_json())
  assert type(again) is type(cfg) and again.family == cfg.family
  assert again == cfg
  assert hash(again) == hash(cfg)
  assert json.loads(again.to_json()) == json.loads(cfg.to_json())


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_preset_parameter_counts_match_paper_size_class(name):
  counts = PRESETS[name].param_count()
  assert size_class_matches(name), (name, counts["total"])
  if name == "moe-4b":  # 4B total, 0.5B active per token
    assert 3.5e9 < counts["total"] < 4.5e9
    assert 0.4e9 < counts["active"] < 0.65e9
  else:
    assert counts["active"] == counts["total"]


def test_param_count_matches_initialised_tree():
  import jax
  from onerec_jax.model import init_params
  for name in ("tiny", "tiny-moe", "demo", "qwen3-tiny", "qwen3-moe-tiny", "qwen3-1.7b"):
    cfg = PRESETS[name]
    tree = jax.eval_shape(lambda c=cfg: init_params(c, jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(tree)) == cfg.param_count()["total"]


def test_derived_sizes():
  cfg = preset("tiny-moe")
  assert cfg.d_context == 2 * 2 * 2 * 16
  assert cfg.levels == 3
  assert [cfg.kv_set_of(i) for i in range(4)] == [0, 0, 1, 1]
  assert cfg.max_context_len == 24
  assert preset("tiny").d_ff == 4 * 64


@pytest.mark.parametrize("change, message", [
    ({"n_heads": 3}, r"Config.kv_heads=2: must divide n_heads=3"),
    ({"kv_split": 3}, r"Config.kv_split=3: must be 1 \(V = K\) or 2"),
    ({"kv_sets": 9}, r"Config.kv_sets=9: exceeds n_layers=4"),
    ({"d_model": 0}, r"Config.d_model=0: must be a positive integer"),
    ({"moe_layers": (1, 7)}, r"Config.moe_layers=\(1, 7\): indices must lie in \[0, 4\)"),
    ({"top_k": 9}, r"Config.top_k=9: must lie in \[1, n_routed_experts=8\]"),
    ({"n_routed_experts": 0}, r"Config.n_routed_experts=0: MoE layers need routed experts"),
    ({"router_score": "relu"}, r"Config.router_score='relu': must be one of"),
    ({"codebook_sizes": ()}, r"Config.codebook_sizes=\(\): needs at least one level"),
    ({"dtype": "float8"}, r"Config.dtype='float8': must be one of"),
    ({"pathways": (Pathway("a", 4, 2), Pathway("a", 4, 2))}, r"pathway names must be unique"),
    ({"pathways": (Pathway("a", 0, 2),)}, r"pathway 'a' needs positive width"),
])
def test_validation_names_the_field(change, message):
  with pytest.raises(ConfigError, match=message):
    dataclasses.replace(preset("tiny-moe"), **change)


def test_from_dict_rejects_unknown_and_missing_fields():
  d = preset("tiny").to_dict()
  with pytest.raises(ConfigError, match=r"unknown fields \['d_modle'\]"):
    Config.from_dict({**d, "d_modle": 3})
  del d["n_layers"]
  with pytest.raises(ConfigError, match=r"missing required fields \['n_layers'\]"):
    Config.from_dict(d)


def test_unknown_preset_lists_names():
  with pytest.raises(ConfigError, match=r"unknown preset 'huge'; known: \['0.1b'"):
    preset("huge")


def test_qwen3_config_checks_and_hugging_face_round_trip():
  cfg = preset("qwen3-moe-tiny")
  hf, layout = cfg.to_hf()
  assert Qwen3Config.from_hf({**hf, "dtype": "float32"}, layout) == cfg
  assert preset("qwen3-1.7b").param_count()["total"] == 1_770_382_336  # ~1.7B + itemic rows
  with pytest.raises(ConfigError, match="the levels' token ranges overlap"):
    cfg.replace(sid_token_offsets=(40, 50, 72))
  with pytest.raises(ConfigError, match="needs one offset per level"):
    cfg.replace(sid_token_offsets=(40, 56))
  with pytest.raises(ConfigError, match="exceeds max_position_embeddings"):
    cfg.replace(max_prompt_len=40959)
  with pytest.raises(ConfigError, match="rope_type 'yarn'"):
    Qwen3Config.from_hf({**hf, "rope_parameters": {"rope_type": "yarn"}}, layout)
  with pytest.raises(ConfigError, match="unknown family 'gpt'"):
    config_from_json('{"family": "gpt"}')
