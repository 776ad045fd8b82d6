"""Writes a PyTorch-format FP16 checkpoint with random weights (fan-in scaled, fixed seed)
of a config preset: what conversion reads, for trying conversion, generation and
benchmarks at any size. (The shipped demo is trained: scripts/train_demo.py writes it.)

  python scripts/make_random_checkpoint.py --preset moe-4b --out /tmp/moe4b
"""

import argparse
import pathlib

import jax

from onerec_jax.checkpoint import export
from onerec_jax.config import preset
from onerec_jax.model import init_params


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, required=True, help="folder to write")
  parser.add_argument("--preset", default="demo")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  config = preset(args.preset).replace(param_dtype="float16")
  params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(args.seed))
  path = export(params, config, args.out)
  size = sum(f.stat().st_size for f in path.iterdir())
  print(f"wrote {path} ({size / 1e6:.1f} MB, {config.param_count()['total']:,} parameters)")


if __name__ == "__main__":
  main()
