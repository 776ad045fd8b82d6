"""Test helpers: random PyTorch reference models and inputs shared by several test files."""

import numpy as np
import torch

from onerec_jax.config import Config
from torch_reference import OneRecV2Torch


def torch_model(cfg: Config, seed: int = 0, dtype=torch.float16) -> OneRecV2Torch:
  """A reference model with every parameter random (norm weights and router biases too,
  so a wrong name mapping cannot hide behind an all-ones or all-zeros tensor)."""
  torch.manual_seed(seed)
  model = OneRecV2Torch(cfg)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or ".norms." in name or "norms." in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith("e_score_correction_bias"):
        p.copy_(0.05 * torch.randn_like(p))
  return model.to(dtype).eval()


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def random_features(cfg: Config, batch: int, seed: int = 1, lengths=None
                    ) -> dict[str, np.ndarray]:
  """Random context features, one [B, n, width] float32 array per pathway."""
  rng = np.random.default_rng(seed)
  return {p.name: rng.standard_normal((batch, (lengths or {}).get(p.name, p.max_len),
                                       p.width)).astype(np.float32) for p in cfg.pathways}


def random_ids(cfg: Config, batch: int, seed: int = 2) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(0, c, batch) for c in cfg.codebook_sizes], 1).astype(np.int32)
