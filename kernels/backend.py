"""One switch over every kernel entry point: by default each picks its fast backend where
that runs (Hopper GPUs) and its reference elsewhere; ONEREC_KERNELS=reference pins all of
them to their references, for baselines and debugging. Read when a function is traced, so
set it before the first call."""

import os

import jax

ENV = "ONEREC_KERNELS"
CHOICES = ("auto", "reference")


def reference_only() -> bool:
  """True when ONEREC_KERNELS=reference; an unknown value is an error."""
  value = os.environ.get(ENV, "auto")
  if value not in CHOICES:
    raise ValueError(f"{ENV}={value!r}: must be one of {CHOICES}")
  return value == "reference"


def on_hopper() -> bool:
  """True when the default device is an sm_90 GPU, where the fast backends run natively."""
  dev = jax.devices()[0]
  return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")
