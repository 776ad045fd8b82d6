"""The paper's FP8 rule set, written for the models' module paths (onerec_jax.quant
applies rules to any model; which paths exist is the model's business)."""

from onerec_jax.config import ModelConfig
from onerec_jax.quant import Rules


def default_rules(config: ModelConfig) -> Rules:
  """The paper's set: self-attention qkv/o, cross-attention q/o (OneRec-V2), dense FFN
  and shared experts per channel; routed experts in 128x128 blocks; the rest (embeddings,
  norms, routers, context processor, heads) unquantized. Rules for parts the config does
  not have are left out, so that every rule matches some weight."""
  layers = range(config.n_layers)
  dense = [i for i in layers if not config.is_moe(i)]
  ffn = "(gate_up_proj|down_proj)"
  rules = [(r"layer_\d+/self_attn/(qkv_proj|o_proj)", "per_channel")]
  if config.family == "onerec_v2":
    rules.append((r"layer_\d+/cross_attn/(q_proj|o_proj)", "per_channel"))
  if dense:
    rules.append((rf"layer_\d+/mlp/{ffn}", "per_channel"))
  if config.moe_layers and config.n_shared_experts:
    rules.append((rf"layer_\d+/mlp/shared_experts/{ffn}", "per_channel"))
  if config.moe_layers:
    rules.append((rf"layer_\d+/mlp/experts/{ffn}", "block"))
  return Rules(tuple(rules))
