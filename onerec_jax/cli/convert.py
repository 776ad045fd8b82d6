"""Convert a PyTorch FP16 checkpoint (safetensors file or sharded folder, or .pt/.bin) to a
JAX checkpoint, optionally quantized to FP8."""

import argparse
import pathlib

from onerec_jax import checkpoint
from onerec_jax.config import Config, ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("source", type=pathlib.Path,
                      help="PyTorch-format checkpoint: .safetensors file, folder with one "
                           "or a sharded index, or .pt/.bin")
  parser.add_argument("dest", type=pathlib.Path, help="folder to write the JAX checkpoint to")
  parser.add_argument("--config", type=pathlib.Path, default=None,
                      help="config.json (default: the one beside the source)")
  parser.add_argument("--precision", choices=checkpoint.store.PRECISIONS, default="fp16",
                      help="fp8 quantizes offline with the paper's rules")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing dest")


def run(args: argparse.Namespace) -> int:
  config = None
  if args.config is not None:
    try:
      config = Config.from_json(args.config.read_text())
    except ConfigError as e:
      raise ConfigError(f"{args.config}: {e}") from None
  dest = checkpoint.convert(args.source, args.dest, config=config, precision=args.precision,
                            overwrite=args.overwrite)
  print(f"wrote {dest}")
  return 0
