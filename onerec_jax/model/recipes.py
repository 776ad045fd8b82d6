"""Recipes: named whole-model rule sets (a recipe is how the whole model is quantized, a
scheme how one module is; onerec_jax.quant.schemes). Every recipe quantizes the modules of
the paper's rule set (default_rules: attention, dense FFN, shared and routed experts;
embeddings, norms, router, context processor and heads stay in the compute dtype), so
that recipes differ only in how, not in what."""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
from flax import traverse_util

from onerec_jax.config import ModelConfig as Config
from onerec_jax.errors import InputError
from onerec_jax.model.fp8_rules import default_rules
from onerec_jax.model.family import init_params
from onerec_jax.quant import Rules


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Schemes for the paper's per-channel modules (Linear) and for its block-quantized
  routed experts; `keep`: (module regex, scheme) rules put first, for modules that stay
  in a higher precision than the rest (those matching no module of the config are left
  out, as default_rules leaves out parts a config does not have)."""

  name: str
  about: str
  linear: str
  experts: str
  keep: tuple[tuple[str, str], ...] = ()

  def rules(self, config: Config) -> Rules:
    mine = {"per_channel": self.linear, "block": self.experts}
    paths = _weight_paths(config)
    keep = tuple((p, s) for p, s in self.keep
                 if any(re.fullmatch(p, path) for path in paths))
    return Rules(keep + tuple((p, mine[s]) for p, s in default_rules(config).rules))


@functools.cache
def _weight_paths(config: Config) -> tuple[str, ...]:
  """Module paths of the config's weights (shapes only, nothing computed)."""
  tree = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  return tuple("/".join(k[:-1]) for k in traverse_util.flatten_dict(tree)
               if k[-1] == "weight")


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("fp8", "the paper's: FP8 e4m3, per channel / per token, experts in 128 x 128 "
           "blocks", "per_channel", "block"),
    Recipe("per_tensor", "FP8 e4m3, one scale per weight tensor and one per activation "
           "tensor (deliberately bad)", "fp8_tensor", "fp8_tensor"),
    Recipe("int8", "INT8 W8A8, per channel / per token, int32 accumulation", "int8", "int8"),
    Recipe("fp8_e5m2", "FP8 e5m2, per channel / per token", "e5m2", "e5m2"),
    Recipe("mxfp8", "MXFP8: e4m3 in 1 x 32 blocks with E8M0 scales, weights and activations",
           "mxfp8", "mxfp8"),
    Recipe("int4_w4a16", "INT4 weights in 1 x 128 groups, 16-bit activations",
           "int4_w4a16", "int4_w4a16"),
    Recipe("int4_w4a8", "INT4 weights in 1 x 128 groups, FP8 e4m3 per-token activations",
           "int4_w4a8", "int4_w4a8"),
    Recipe("mxfp4_w4a16", "MXFP4 weights (e2m1, 1 x 32, E8M0 scales), 16-bit activations",
           "mxfp4_w4a16", "mxfp4_w4a16"),
    Recipe("mxfp4_w4a8", "MXFP4 weights, FP8 e4m3 per-token activations", "mxfp4_w4a8",
           "mxfp4_w4a8"),
    Recipe("int4_tensor", "INT4 weights with one scale per tensor, 16-bit activations "
           "(deliberately bad)", "int4_tensor", "int4_tensor"),
    # The FFN down projections (dense, shared and routed experts) read the activations with
    # outliers (`onerec-jax stats --test-requests`: AbsMax 9-29x AbsP99 on MovieLens,
    # 4-10x on the demo, every other input below 3x), which multiply their weights' 4-bit
    # error; under int4_w4a8 they are 4 of the 7 noisiest modules on MovieLens
    # (`stats --recipe int4_w4a8`). They keep the paper's FP8.
    Recipe("mixed", "INT4 W4A8 (as int4_w4a8), the FFN down projections in the paper's "
           "FP8", "int4_w4a8", "int4_w4a8",
           keep=((r"layer_\d+/mlp/(shared_experts/)?down_proj", "per_channel"),
                 (r"layer_\d+/mlp/experts/down_proj", "block"))),
)}


def check_recipe(name: str) -> str:
  """name, if a recipe has it; else InputError listing the recipes."""
  if name not in RECIPES:
    raise InputError(f"unknown recipe {name!r}; known: {list(RECIPES)}")
  return name


def recipe_rules(name: str, config: Config) -> Rules:
  """The named recipe's rules for this config."""
  return RECIPES[check_recipe(name)].rules(config)
