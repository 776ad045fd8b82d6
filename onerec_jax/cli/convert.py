"""Convert a PyTorch FP16 checkpoint (safetensors file or sharded folder, or .pt/.bin) to a
JAX checkpoint, optionally quantized to FP8: a OneRec-V2 source, or a Hugging Face Qwen3 /
Qwen3-MoE folder with its semantic-ID token layout (sid_tokens.json, docs/qwen3.md)."""

import argparse
import pathlib

from onerec_jax import checkpoint
from onerec_jax.config import ConfigError, config_from_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("source", type=pathlib.Path,
                      help="PyTorch-format checkpoint: .safetensors file, folder with one "
                           "or a sharded index, or .pt/.bin")
  parser.add_argument("dest", type=pathlib.Path, help="folder to write the JAX checkpoint to")
  parser.add_argument("--config", type=pathlib.Path, default=None,
                      help="a OneRec-V2 config.json (default: the one beside the source)")
  parser.add_argument("--sid-tokens", type=pathlib.Path, default=None,
                      help="a Qwen3 source's semantic-ID token layout (default: "
                           "sid_tokens.json beside its config.json)")
  parser.add_argument("--precision", choices=checkpoint.store.PRECISIONS, default="fp16",
                      help="fp8 quantizes offline with the paper's rules")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing dest")


def run(args: argparse.Namespace) -> int:
  config = None
  if args.config is not None:
    try:
      config = config_from_json(args.config.read_text())
    except ConfigError as e:
      raise ConfigError(f"{args.config}: {e}") from None
  elif args.sid_tokens is not None:
    config = checkpoint.read_config(args.source, sid_layout=args.sid_tokens)
  dest = checkpoint.convert(args.source, args.dest, config=config, precision=args.precision,
                            overwrite=args.overwrite)
  print(f"wrote {dest}")
  return 0
