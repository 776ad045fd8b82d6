"""Converts a PyTorch FP16 checkpoint to a JAX checkpoint: `onerec-jax convert` as a script.

  python scripts/convert_checkpoint.py SOURCE DEST [--config config.json]
      [--precision fp16|fp8] [--overwrite]

The Python API is onerec_jax.checkpoint.convert(source, dest, ...).
"""

import sys

from onerec_jax.cli import main

if __name__ == "__main__":
  sys.exit(main(["convert", *sys.argv[1:]]))
