"""The model of each config family, behind one decode interface (encode, decode, head)
that the beam search calls, and their parameters."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from onerec_jax.config import ModelConfig
from onerec_jax.model.onerec import OneRecV2
from onerec_jax.model.qwen3 import Qwen3

MODELS = {"onerec_v2": OneRecV2, "qwen3": Qwen3}


def model_for(config: ModelConfig) -> nn.Module:
  """The Flax module of the config's family."""
  return MODELS[config.family](config)


def example_inputs(config: ModelConfig, batch: int = 1) -> dict[str, jax.Array]:
  """Zero inputs of every pathway, one token each: features [B, 1, width], token ids
  [B, 1] where the width is 0."""
  return {p.name: jnp.zeros((batch, 1), jnp.int32) if p.width == 0 else
          jnp.zeros((batch, 1, p.width), config.compute_dtype) for p in config.pathways}


def init_params(config: ModelConfig, rng: jax.Array, batch: int = 1) -> dict[str, Any]:
  """Random parameters in config.param_dtype (fan-in scaled matmul weights)."""
  ids = jnp.zeros((batch, config.levels), jnp.int32)
  return model_for(config).init(rng, example_inputs(config, batch), ids)["params"]
