"""The declarative name maps between PyTorch state_dicts and the JAX parameter trees, one
table per model family: OneRec-V2's (checkpoints/README.md) and Qwen3's (Hugging Face's
Qwen3ForCausalLM / Qwen3MoeForCausalLM names, docs/qwen3.md).

Each row maps one JAX parameter to the PyTorch tensors it is made of: fused projections
concatenate their parts along the output axis (q/k/v -> qkv_proj, gate/up -> gate_up_proj;
parts of equal size unless the row says otherwise) and routed experts stack over {e}.
Templates expand over {i} (decoder layer), {j} (level), {s} (KV set), {p} (pathway) and
{e} (expert). Every conversion is exact: concatenation and stacking only, so the inverse
(export) gives the same bits back.
"""

import dataclasses
from typing import Callable

from onerec_jax.config import ModelConfig as Config


@dataclasses.dataclass(frozen=True)
class Row:
  """Template row: JAX path, the PyTorch parts concatenated along axis 0, and the layers or
  indices it applies to."""

  jax: str  # "/"-joined path in the params tree
  torch: tuple[str, ...]  # parts, concatenated along axis 0 in this order
  where: str = "all"  # "all", "dense", "moe", "moe_shared" layers; "kv_split2"; "untied"
  stack_experts: bool = False  # stack the parts over {e} into [E, ...]
  part_rows: Callable[[Config], tuple[int, ...]] | None = None  # axis-0 sizes; None: equal


_LAYER = "layers.{i}."
ONEREC_TABLE: tuple[Row, ...] = (
    Row("context/pathway_{p}/weight", ("context.pathways.{p}.weight",)),
    Row("context/k_norm_{s}/weight", ("context.k_norms.{s}.weight",)),
    Row("context/v_norm_{s}/weight", ("context.v_norms.{s}.weight",), where="kv_split2"),
    Row("embed/bos", ("embed.bos",)),
    Row("embed/level_{j}", ("embed.levels.{j}.weight",), where="input_levels"),
    Row("embed/position", ("embed.positions.weight",)),
    Row("layer_{i}/cross_attn_norm/weight", (_LAYER + "cross_attn_norm.weight",)),
    Row("layer_{i}/cross_attn/q_proj/weight", (_LAYER + "cross_attn.q_proj.weight",)),
    Row("layer_{i}/cross_attn/o_proj/weight", (_LAYER + "cross_attn.o_proj.weight",)),
    Row("layer_{i}/self_attn_norm/weight", (_LAYER + "self_attn_norm.weight",)),
    Row("layer_{i}/self_attn/qkv_proj/weight",
        tuple(_LAYER + f"self_attn.{x}_proj.weight" for x in "qkv")),
    Row("layer_{i}/self_attn/o_proj/weight", (_LAYER + "self_attn.o_proj.weight",)),
    Row("layer_{i}/mlp_norm/weight", (_LAYER + "mlp_norm.weight",)),
    Row("layer_{i}/mlp/gate_up_proj/weight",
        (_LAYER + "mlp.gate_proj.weight", _LAYER + "mlp.up_proj.weight"), where="dense"),
    Row("layer_{i}/mlp/down_proj/weight", (_LAYER + "mlp.down_proj.weight",), where="dense"),
    Row("layer_{i}/mlp/router/weight", (_LAYER + "mlp.gate.weight",), where="moe"),
    Row("layer_{i}/mlp/router/score_bias", (_LAYER + "mlp.gate.e_score_correction_bias",),
        where="moe"),
    Row("layer_{i}/mlp/experts/gate_up_proj/weight",
        (_LAYER + "mlp.experts.{e}.gate_proj.weight", _LAYER + "mlp.experts.{e}.up_proj.weight"),
        where="moe", stack_experts=True),
    Row("layer_{i}/mlp/experts/down_proj/weight", (_LAYER + "mlp.experts.{e}.down_proj.weight",),
        where="moe", stack_experts=True),
    Row("layer_{i}/mlp/shared_experts/gate_up_proj/weight",
        (_LAYER + "mlp.shared_experts.gate_proj.weight",
         _LAYER + "mlp.shared_experts.up_proj.weight"), where="moe_shared"),
    Row("layer_{i}/mlp/shared_experts/down_proj/weight",
        (_LAYER + "mlp.shared_experts.down_proj.weight",), where="moe_shared"),
    Row("head_{j}_norm/weight", ("heads.{j}.norm.weight",)),
    Row("head_{j}_proj/weight", ("heads.{j}.proj.weight",)),
)


_QWEN_LAYER = "model.layers.{i}."
QWEN3_TABLE: tuple[Row, ...] = (
    Row("embed/embedding", ("model.embed_tokens.weight",)),
    Row("layer_{i}/attn_norm/weight", (_QWEN_LAYER + "input_layernorm.weight",)),
    Row("layer_{i}/self_attn/qkv_proj/weight",
        tuple(_QWEN_LAYER + f"self_attn.{x}_proj.weight" for x in "qkv"),
        part_rows=lambda c: (c.n_heads * c.d_head, c.kv_heads * c.d_head,
                             c.kv_heads * c.d_head)),
    Row("layer_{i}/self_attn/q_norm/weight", (_QWEN_LAYER + "self_attn.q_norm.weight",)),
    Row("layer_{i}/self_attn/k_norm/weight", (_QWEN_LAYER + "self_attn.k_norm.weight",)),
    Row("layer_{i}/self_attn/o_proj/weight", (_QWEN_LAYER + "self_attn.o_proj.weight",)),
    Row("layer_{i}/mlp_norm/weight", (_QWEN_LAYER + "post_attention_layernorm.weight",)),
    Row("layer_{i}/mlp/gate_up_proj/weight",
        (_QWEN_LAYER + "mlp.gate_proj.weight", _QWEN_LAYER + "mlp.up_proj.weight"),
        where="dense"),
    Row("layer_{i}/mlp/down_proj/weight", (_QWEN_LAYER + "mlp.down_proj.weight",),
        where="dense"),
    Row("layer_{i}/mlp/router/weight", (_QWEN_LAYER + "mlp.gate.weight",), where="moe"),
    Row("layer_{i}/mlp/experts/gate_up_proj/weight",
        (_QWEN_LAYER + "mlp.experts.{e}.gate_proj.weight",
         _QWEN_LAYER + "mlp.experts.{e}.up_proj.weight"), where="moe", stack_experts=True),
    Row("layer_{i}/mlp/experts/down_proj/weight",
        (_QWEN_LAYER + "mlp.experts.{e}.down_proj.weight",), where="moe",
        stack_experts=True),
    Row("final_norm/weight", ("model.norm.weight",)),
    Row("lm_head/weight", ("lm_head.weight",), where="untied"),
)
TABLES = {"onerec_v2": ONEREC_TABLE, "qwen3": QWEN3_TABLE}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One concrete JAX parameter and its PyTorch sources.

  sources[e][c]: part c of expert e (one outer item when not stacked over experts).
  """

  jax: str
  sources: tuple[tuple[str, ...], ...]
  stacked: bool
  part_rows: tuple[int, ...] | None = None  # axis-0 size of each part; None: equal

  @property
  def torch_names(self) -> tuple[str, ...]:
    return tuple(name for group in self.sources for name in group)


def _layers(cfg: Config, pred: Callable[[int], bool]) -> list[dict[str, int]]:
  return [{"i": i} for i in range(cfg.n_layers) if pred(i)]


def _bindings(row: Row, cfg: Config) -> list[dict]:
  """Every assignment of the row's placeholders that the config has."""
  if row.where == "untied":
    return [] if cfg.tie_embeddings else [{}]
  if "{i}" in row.jax:
    pred = {"all": lambda i: True, "dense": lambda i: not cfg.is_moe(i),
            "moe": cfg.is_moe, "moe_shared": lambda i: cfg.is_moe(i) and cfg.n_shared_experts > 0
            }[row.where]
    return _layers(cfg, pred)
  if "{p}" in row.jax:
    return [{"p": p.name} for p in cfg.pathways]
  if "{s}" in row.jax:
    if row.where == "kv_split2" and cfg.kv_split != 2:
      return []
    return [{"s": s} for s in range(cfg.kv_sets)]
  if "{j}" in row.jax:
    n = cfg.levels - 1 if row.where == "input_levels" else cfg.levels
    return [{"j": j} for j in range(n)]
  return [{}]


def entries(cfg: Config) -> list[Entry]:
  """The config family's table expanded for one config, in table order."""
  out = []
  for row in TABLES[cfg.family]:
    for b in _bindings(row, cfg):
      if row.stack_experts:
        sources = tuple(tuple(t.format(e=e, **b) for t in row.torch)
                        for e in range(cfg.n_routed_experts))
      else:
        sources = (tuple(t.format(**b) for t in row.torch),)
      out.append(Entry(row.jax.format(**b), sources, row.stack_experts,
                       None if row.part_rows is None else row.part_rows(cfg)))
  return out
