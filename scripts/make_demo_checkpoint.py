"""Writes the shipped demo checkpoint (checkpoints/demo/) in the PyTorch FP16 format that
conversion reads: random weights of the "demo" preset, fan-in scaled, from a fixed seed."""

import argparse
import pathlib

import jax

from onerec_jax.checkpoint import DEMO_SOURCE, export
from onerec_jax.config import preset
from onerec_jax.model import init_params


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--out", type=pathlib.Path, default=DEMO_SOURCE)
  parser.add_argument("--preset", default="demo")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  config = preset(args.preset)
  params = init_params(config, jax.random.key(args.seed))
  path = export(params, config, args.out)
  size = sum(f.stat().st_size for f in path.iterdir())
  print(f"wrote {path} ({size / 1e6:.1f} MB, {config.param_count()['total']:,} parameters)")


if __name__ == "__main__":
  main()
