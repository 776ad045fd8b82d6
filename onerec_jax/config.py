"""Model configurations: frozen, validated dataclasses with presets, one per model family.

Config is the OneRec-V2 lazy decoder (docs/architecture.md; docs/bring_your_model.md
lists its fields), Qwen3Config a Qwen3 decoder serving semantic IDs as tokens of its
vocabulary (docs/qwen3.md). `config.json` beside every converted checkpoint is
`to_json()`, whose "family" field says which; `config_from_json` reads either.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

import jax.numpy as jnp
from onerec_kernels.topk import ROUTER_SCORES

from onerec_jax.errors import InputError

_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}


class ConfigError(InputError):
  """An invalid configuration; the message names the offending field and value."""


@dataclasses.dataclass(frozen=True)
class Pathway:
  """One context input of a request: up to max_len tokens, each an upstream feature
  vector of `width` (OneRec-V2's pathways, projected to d_context), or with width 0 a
  token id the model embeds (a Qwen3 prompt)."""

  name: str
  width: int  # input feature width
  max_len: int  # most tokens this pathway contributes to the context


def _need(config, ok: bool, field: str, why: str) -> None:
  if not ok:
    raise ConfigError(f"{type(config).__name__}.{field}={getattr(config, field)!r}: {why}")


class _Family:
  """What every family's config shares: dtypes, levels, MoE layers, JSON."""

  @property
  def levels(self) -> int:
    return len(self.codebook_sizes)

  @property
  def max_context_len(self) -> int:
    return sum(p.max_len for p in self.pathways)

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return _DTYPES[self.param_dtype]

  def is_moe(self, layer: int) -> bool:
    return layer in self.moe_layers

  def replace(self, **changes: Any):
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]):
    if not isinstance(d, dict):
      raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"config has unknown fields {unknown}; known: {sorted(known)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in d and f.default is dataclasses.MISSING)
    if missing:
      raise ConfigError(f"config is missing required fields {missing}")
    try:
      return cls(**d)
    except (TypeError, ValueError) as e:  # a field of the wrong type or shape
      if isinstance(e, ConfigError):
        raise
      raise ConfigError(f"config: {e}") from None

  @classmethod
  def from_json(cls, text: str):
    return cls.from_dict(_json_object(text))

  def _validate_common(self):
    need = functools.partial(_need, self)
    need(all(0 <= i < self.n_layers for i in self.moe_layers), "moe_layers",
         f"indices must lie in [0, {self.n_layers})")
    need(len(set(self.moe_layers)) == len(self.moe_layers), "moe_layers", "has repeats")
    if self.moe_layers:
      need(self.n_routed_experts > 0, "n_routed_experts", "MoE layers need routed experts")
      need(0 < self.top_k <= self.n_routed_experts, "top_k",
           f"must lie in [1, n_routed_experts={self.n_routed_experts}]")
      need(self.expert_d_ff > 0, "expert_d_ff", "MoE layers need an expert width")
    need(len(self.codebook_sizes) >= 1 and all(c > 0 for c in self.codebook_sizes),
         "codebook_sizes", "needs at least one level, each codebook non-empty")
    need(self.rms_eps > 0, "rms_eps", "must be positive")
    need(self.dtype in _DTYPES, "dtype", f"must be one of {sorted(_DTYPES)}")
    need(self.param_dtype in _DTYPES, "param_dtype", f"must be one of {sorted(_DTYPES)}")


def _json_object(text: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"config is not valid JSON: {e}") from None


@dataclasses.dataclass(frozen=True)
class Config(_Family):
  """Architecture of a OneRec-V2 lazy decoder (the paper's symbols: docs/architecture.md).

  kv_heads is G_kv, kv_sets is L_kv, kv_split is S_kv (1: V = K; 2: separate V chunk).
  """

  d_model: int
  n_layers: int
  n_heads: int
  d_head: int
  kv_heads: int
  kv_sets: int = 1
  kv_split: int = 1
  pathways: tuple[Pathway, ...] = (
      Pathway("static", 64, 32),
      Pathway("short_term", 64, 128),
      Pathway("long_term", 64, 352),
  )
  d_ff: int = 0  # dense SwiGLU width; 0 means 4 * d_model
  moe_layers: tuple[int, ...] = ()  # indices of decoder layers whose FFN is MoE
  n_routed_experts: int = 0
  n_shared_experts: int = 0
  top_k: int = 0
  expert_d_ff: int = 0
  router_score: str = "sigmoid"
  routed_scaling_factor: float = 1.0
  norm_topk_prob: bool = True
  codebook_sizes: tuple[int, ...] = (8192, 8192, 8192)
  rms_eps: float = 1e-6
  dtype: str = "bfloat16"  # compute dtype
  param_dtype: str = "float32"
  family: str = "onerec_v2"

  router_bias = True  # the aux-loss-free balancing bias of the router (not a field)

  def __post_init__(self):
    # Normalise JSON lists to tuples so equality and hashing work after a round trip.
    object.__setattr__(self, "pathways", tuple(
        p if isinstance(p, Pathway) else Pathway(**p) for p in self.pathways))
    object.__setattr__(self, "moe_layers", tuple(int(i) for i in self.moe_layers))
    object.__setattr__(self, "codebook_sizes", tuple(int(c) for c in self.codebook_sizes))
    if self.d_ff == 0:
      object.__setattr__(self, "d_ff", 4 * self.d_model)
    self._validate()

  def _validate(self):
    need = functools.partial(_need, self)
    need(self.family == "onerec_v2", "family", "must be 'onerec_v2' for this class")
    for f in ("d_model", "n_layers", "n_heads", "d_head", "kv_heads", "kv_sets", "d_ff"):
      need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f,
           "must be a positive integer")
    need(self.n_heads % self.kv_heads == 0, "kv_heads",
         f"must divide n_heads={self.n_heads} (GQA groups query heads evenly)")
    need(self.kv_split in (1, 2), "kv_split", "must be 1 (V = K) or 2 (separate V)")
    need(self.kv_sets <= self.n_layers, "kv_sets", f"exceeds n_layers={self.n_layers}")
    need(len(self.pathways) > 0, "pathways", "needs at least one context pathway")
    names = [p.name for p in self.pathways]
    need(len(set(names)) == len(names), "pathways", "pathway names must be unique")
    for p in self.pathways:
      need(p.width > 0 and p.max_len > 0, "pathways",
           f"pathway {p.name!r} needs positive width and max_len")
    need(self.n_shared_experts >= 0, "n_shared_experts", "must be >= 0")
    need(self.router_score in ROUTER_SCORES, "router_score", f"must be one of {ROUTER_SCORES}")
    need(self.routed_scaling_factor > 0, "routed_scaling_factor", "must be positive")
    self._validate_common()

  # Derived sizes -------------------------------------------------------------------------
  @property
  def d_context(self) -> int:
    """Width of a pathway projection: S_kv * L_kv * G_kv * d_head."""
    return self.kv_split * self.kv_sets * self.kv_heads * self.d_head

  def kv_set_of(self, layer: int) -> int:
    """KV set used by decoder layer `layer`: floor(layer * L_kv / n_layers)."""
    return layer * self.kv_sets // self.n_layers

  # Parameter counts ----------------------------------------------------------------------
  def param_count(self) -> dict[str, int]:
    """Parameters by part, plus 'total' and 'active' (per decoded token)."""
    d, hd = self.d_model, self.n_heads * self.d_head
    context = sum(p.width * self.d_context for p in self.pathways)
    context += self.kv_sets * self.kv_split * self.kv_heads * self.d_head  # K/V norms
    embed = d + self.levels * d + sum(self.codebook_sizes[:-1]) * d
    heads = sum(c * d + d for c in self.codebook_sizes)
    attn = 2 * d * hd + 4 * d * hd + 3 * d  # cross q/o, self qkv/o, three norms
    dense_ffn = 3 * d * self.d_ff
    expert = 3 * d * self.expert_d_ff
    total = active = context + embed + heads
    for layer in range(self.n_layers):
      total += attn
      active += attn
      if self.is_moe(layer):
        router = self.n_routed_experts * (d + 1)
        total += router + (self.n_routed_experts + self.n_shared_experts) * expert
        active += router + (self.top_k + self.n_shared_experts) * expert
      else:
        total += dense_ffn
        active += dense_ffn
    return {"context": context, "embed": embed, "heads": heads, "total": total,
            "active": active}


@dataclasses.dataclass(frozen=True)
class Qwen3Config(_Family):
  """A Qwen3 (or Qwen3-MoE) decoder that writes semantic IDs as tokens of its vocabulary
  (OpenOneRec's layout): level j's code c is token sid_token_offsets[j] + c. A request is
  a prompt of up to max_prompt_len token ids (its one pathway, "prompt"); the level-0
  logits come from the prompt's last position, each later level's from decoding the
  previous level's token. Field names follow Config where the concept is the same
  (Hugging Face's names: from_hf)."""

  vocab_size: int
  d_model: int  # hidden_size
  n_layers: int  # num_hidden_layers
  n_heads: int  # num_attention_heads
  d_head: int  # head_dim
  kv_heads: int  # num_key_value_heads
  d_ff: int  # intermediate_size (dense MLP layers)
  sid_token_offsets: tuple[int, ...]  # first token id of each level's codes
  codebook_sizes: tuple[int, ...] = (8192, 8192, 8192)
  max_prompt_len: int = 1024  # the prompt bucket: longer prompts are refused
  rope_theta: float = 1_000_000.0
  rms_eps: float = 1e-6
  tie_embeddings: bool = False  # the LM head is the token embedding
  max_position_embeddings: int = 40960
  moe_layers: tuple[int, ...] = ()  # layers whose MLP is a Qwen3-MoE block
  n_routed_experts: int = 0  # num_experts
  top_k: int = 0  # num_experts_per_tok
  expert_d_ff: int = 0  # moe_intermediate_size
  norm_topk_prob: bool = True
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  family: str = "qwen3"

  # Qwen3-MoE's router, in Config's terms: softmax scores, no balancing bias, no shared
  # expert, gates unscaled (not fields).
  n_shared_experts = 0
  router_score = "softmax"
  router_bias = False
  routed_scaling_factor = 1.0

  def __post_init__(self):
    for f in ("sid_token_offsets", "codebook_sizes", "moe_layers"):
      object.__setattr__(self, f, tuple(int(i) for i in getattr(self, f)))
    need = functools.partial(_need, self)
    need(self.family == "qwen3", "family", "must be 'qwen3' for this class")
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "kv_heads", "d_ff",
              "max_prompt_len", "max_position_embeddings"):
      need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f,
           "must be a positive integer")
    need(self.n_heads % self.kv_heads == 0, "kv_heads",
         f"must divide n_heads={self.n_heads} (GQA groups query heads evenly)")
    need(self.d_head % 2 == 0, "d_head", "must be even (rotary embedding pairs)")
    need(self.rope_theta > 0, "rope_theta", "must be positive")
    need(len(self.sid_token_offsets) == len(self.codebook_sizes), "sid_token_offsets",
         f"needs one offset per level ({len(self.codebook_sizes)})")
    ranges = sorted((o, o + c) for o, c in zip(self.sid_token_offsets, self.codebook_sizes))
    need(all(0 <= lo and hi <= self.vocab_size for lo, hi in ranges), "sid_token_offsets",
         f"every level's tokens must lie in the vocabulary [0, {self.vocab_size})")
    need(all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])), "sid_token_offsets",
         "the levels' token ranges overlap")
    need(self.max_prompt_len + self.levels <= self.max_position_embeddings, "max_prompt_len",
         f"plus {self.levels} decoded tokens exceeds max_position_embeddings="
         f"{self.max_position_embeddings}")
    self._validate_common()

  @property
  def pathways(self) -> tuple[Pathway, ...]:
    return (Pathway(PROMPT, 0, self.max_prompt_len),)

  @classmethod
  def from_hf(cls, hf: dict[str, Any], sid_layout: dict[str, Any]) -> "Qwen3Config":
    """From a Hugging Face Qwen3 / Qwen3-MoE config.json and the semantic-ID token layout
    {"sid_token_offsets": [...], "codebook_sizes": [...], optional "max_prompt_len"}."""
    kind = hf.get("model_type")
    if kind not in ("qwen3", "qwen3_moe"):
      raise ConfigError(f"config.json: model_type {kind!r}; this family reads 'qwen3' and "
                        f"'qwen3_moe'")
    try:
      unknown = sorted(set(sid_layout) - {"sid_token_offsets", "codebook_sizes",
                                          "max_prompt_len"})
      if unknown:
        raise ConfigError(f"semantic-ID layout: unknown fields {unknown}")
      heads = hf["num_attention_heads"]
      rope = hf.get("rope_parameters") or {}
      if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"config.json: rope_type {rope['rope_type']!r}; only the default "
                          f"rotary embedding is implemented")
      for flag in ("attention_bias", "use_sliding_window"):
        if hf.get(flag):
          raise ConfigError(f"config.json: {flag}=true is not implemented")
      experts = hf.get("num_experts", hf.get("num_local_experts", 0)) or 0
      layers = hf["num_hidden_layers"]
      step = hf.get("decoder_sparse_step", 1) or 1
      only_mlp = set(hf.get("mlp_only_layers") or ())
      moe = tuple(i for i in range(layers) if kind == "qwen3_moe" and experts > 0
                  and i not in only_mlp and (i + 1) % step == 0)
      kw = dict(
          vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=layers,
          n_heads=heads, d_head=hf.get("head_dim") or hf["hidden_size"] // heads,
          kv_heads=hf.get("num_key_value_heads") or heads, d_ff=hf["intermediate_size"],
          rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
          rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
          tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
          max_position_embeddings=hf.get("max_position_embeddings", 40960),
          moe_layers=moe, n_routed_experts=experts if moe else 0,
          top_k=hf.get("num_experts_per_tok", 0) if moe else 0,
          expert_d_ff=hf.get("moe_intermediate_size", 0) if moe else 0,
          norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
          sid_token_offsets=sid_layout["sid_token_offsets"],
          codebook_sizes=sid_layout["codebook_sizes"])
      if "max_prompt_len" in sid_layout:
        kw["max_prompt_len"] = sid_layout["max_prompt_len"]
      # Weights kept in the checkpoint's dtype; FP32 checkpoints compute in FP32.
      dtype = hf.get("dtype") or hf.get("torch_dtype") or "bfloat16"
      if dtype not in _DTYPES:
        raise ConfigError(f"config.json: dtype {dtype!r} not in {sorted(_DTYPES)}")
      kw.update(param_dtype=dtype, dtype="float32" if dtype == "float32" else "bfloat16")
      return cls(**kw)
    except KeyError as e:
      raise ConfigError(f"config: missing field {e}") from None
    except TypeError as e:
      raise ConfigError(f"config: {e}") from None

  def to_hf(self) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Hugging Face config.json, semantic-ID layout) that from_hf reads back."""
    moe = bool(self.moe_layers)
    hf = {"architectures": ["Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM"],
          "model_type": "qwen3_moe" if moe else "qwen3", "vocab_size": self.vocab_size,
          "hidden_size": self.d_model, "num_hidden_layers": self.n_layers,
          "num_attention_heads": self.n_heads, "head_dim": self.d_head,
          "num_key_value_heads": self.kv_heads, "intermediate_size": self.d_ff,
          "rms_norm_eps": self.rms_eps, "tie_word_embeddings": self.tie_embeddings,
          "max_position_embeddings": self.max_position_embeddings,
          "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
          "hidden_act": "silu", "attention_bias": False, "dtype": self.param_dtype}
    if moe:
      hf.update(num_experts=self.n_routed_experts, num_experts_per_tok=self.top_k,
                moe_intermediate_size=self.expert_d_ff, norm_topk_prob=self.norm_topk_prob,
                decoder_sparse_step=1,
                mlp_only_layers=[i for i in range(self.n_layers) if not self.is_moe(i)])
    layout = {"sid_token_offsets": list(self.sid_token_offsets),
              "codebook_sizes": list(self.codebook_sizes),
              "max_prompt_len": self.max_prompt_len}
    return hf, layout

  def param_count(self) -> dict[str, int]:
    """Parameters by part, plus 'total' and 'active' (per decoded token)."""
    d, hd, kvd = self.d_model, self.n_heads * self.d_head, self.kv_heads * self.d_head
    embed = self.vocab_size * d
    heads = d + (0 if self.tie_embeddings else self.vocab_size * d)
    attn = d * (hd + 2 * kvd) + hd * d + 2 * self.d_head + 2 * d
    total = active = embed + heads
    for layer in range(self.n_layers):
      total, active = total + attn, active + attn
      if self.is_moe(layer):
        router, expert = self.n_routed_experts * d, 3 * d * self.expert_d_ff
        total += router + self.n_routed_experts * expert
        active += router + self.top_k * expert
      else:
        total, active = total + 3 * d * self.d_ff, active + 3 * d * self.d_ff
    return {"embed": embed, "heads": heads, "total": total, "active": active}


PROMPT = "prompt"  # the one pathway of a Qwen3 request
FAMILIES = {"onerec_v2": Config, "qwen3": Qwen3Config}
ModelConfig = Config | Qwen3Config


def config_from_dict(d: Any) -> ModelConfig:
  """The config of whichever family d's "family" field names (OneRec-V2 without one)."""
  family = d.get("family", "onerec_v2") if isinstance(d, dict) else "onerec_v2"
  if family not in FAMILIES:
    raise ConfigError(f"config: unknown family {family!r}; known: {sorted(FAMILIES)}")
  return FAMILIES[family].from_dict(d)


def config_from_json(text: str) -> ModelConfig:
  return config_from_dict(_json_object(text))


def _dense(d_model: int, n_layers: int, n_heads: int, **kw) -> Config:
  d_head = kw.pop("d_head", d_model // n_heads)
  return Config(d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_head=d_head,
                kv_heads=n_heads, **kw)


def _production_pathways(d_model: int) -> tuple[Pathway, ...]:
  # About 512 context tokens as in the paper's experiments; upstream feature widths are not
  # published, d_model is our stand-in.
  return (Pathway("static", d_model, 32), Pathway("short_term", d_model, 128),
          Pathway("long_term", d_model, 352))


def _preset(d_model, n_layers, n_heads, **kw) -> Config:
  return _dense(d_model, n_layers, n_heads, pathways=_production_pathways(d_model), **kw)


PRESETS: dict[str, Config] = {
    # The paper's Table 5 (docs/architecture.md).
    "0.1b": _preset(640, 12, 10),
    "0.2b": _preset(896, 12, 14),
    "0.5b": _preset(1408, 14, 11),
    "1b": _preset(1792, 18, 14),
    "2b": _preset(2304, 22, 18),
    "4b": _preset(2944, 26, 23),
    "8b": _preset(3584, 34, 28),
    "moe-4b": _preset(1408, 14, 11, moe_layers=tuple(range(2, 14)), n_routed_experts=53,
                      n_shared_experts=1, top_k=3, expert_d_ff=1408),
    # Our own small presets for tests and the demo.
    "tiny": Config(d_model=64, n_layers=2, n_heads=4, d_head=16, kv_heads=2,
                   pathways=(Pathway("static", 16, 4), Pathway("short_term", 24, 8),
                             Pathway("long_term", 24, 12)),
                   codebook_sizes=(16, 16, 16), param_dtype="float16", dtype="float32"),
    "tiny-moe": Config(d_model=64, n_layers=4, n_heads=4, d_head=16, kv_heads=2, kv_sets=2,
                       kv_split=2, pathways=(Pathway("static", 16, 4),
                                             Pathway("short_term", 24, 8),
                                             Pathway("long_term", 24, 12)),
                       moe_layers=(2, 3), n_routed_experts=8, n_shared_experts=1, top_k=2,
                       expert_d_ff=64, codebook_sizes=(16, 16, 16), param_dtype="float16",
                       dtype="float32"),
    "demo": Config(d_model=128, n_layers=4, n_heads=4, d_head=32, kv_heads=2,
                   pathways=(Pathway("static", 16, 4), Pathway("short_term", 32, 16),
                             Pathway("long_term", 32, 44)),
                   moe_layers=(2, 3), n_routed_experts=8, n_shared_experts=1, top_k=2,
                   expert_d_ff=128, codebook_sizes=(64, 64, 64), param_dtype="float16",
                   dtype="float32"),
    # MovieLens-100k (onerec_jax.lab.movielens, whose feature widths these are: a static
    # summary token of 53, history tokens of 62); larger than the demo.
    "movielens": Config(d_model=256, n_layers=4, n_heads=4, d_head=64, kv_heads=2,
                        pathways=(Pathway("static", 53, 1), Pathway("short_term", 62, 16),
                                  Pathway("long_term", 62, 48)),
                        moe_layers=(2, 3), n_routed_experts=8, n_shared_experts=1, top_k=2,
                        expert_d_ff=256, codebook_sizes=(32, 32, 32), param_dtype="float16",
                        dtype="float32"),
    # A Qwen3-1.7B shape (OpenOneRec's backbone; its vocabulary extended by three levels
    # of 8192 itemic tokens after Qwen3's 151669), and small ones for tests.
    "qwen3-1.7b": Qwen3Config(vocab_size=176256, d_model=2048, n_layers=28, n_heads=16,
                              d_head=128, kv_heads=8, d_ff=6144, tie_embeddings=True,
                              sid_token_offsets=(151669, 159861, 168053)),
    "qwen3-tiny": Qwen3Config(vocab_size=96, d_model=64, n_layers=2, n_heads=4, d_head=16,
                              kv_heads=2, d_ff=128, sid_token_offsets=(40, 56, 72),
                              codebook_sizes=(16, 16, 16), max_prompt_len=24,
                              rope_theta=10000.0, dtype="float32", param_dtype="float32"),
    "qwen3-moe-tiny": Qwen3Config(vocab_size=96, d_model=64, n_layers=3, n_heads=4,
                                  d_head=16, kv_heads=2, d_ff=128,
                                  sid_token_offsets=(40, 56, 72), codebook_sizes=(16, 16, 16),
                                  max_prompt_len=24, rope_theta=10000.0, moe_layers=(1, 2),
                                  n_routed_experts=6, top_k=2, expert_d_ff=32,
                                  dtype="float32", param_dtype="float32"),
}


def preset(name: str) -> ModelConfig:
  """Returns the named preset; the error lists the known names."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None


# Sizes the paper names for each preset (parameters), for the size-class check.
PAPER_SIZES: dict[str, float] = {
    "0.1b": 0.1e9, "0.2b": 0.2e9, "0.5b": 0.5e9, "1b": 1e9, "2b": 2e9, "4b": 4e9, "8b": 8e9,
    "moe-4b": 4e9,
}


def size_class_matches(name: str) -> bool:
  """True when the preset's total parameter count rounds to the paper's size class."""
  total = PRESETS[name].param_count()["total"]
  return abs(math.log(total / PAPER_SIZES[name])) < math.log(1.5)
