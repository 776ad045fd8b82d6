"""Trains the MovieLens-100k model (preset "movielens", onerec_jax.lab.movielens) with a
fixed seed on the CPU and exports it into --out (default out/movielens/, git-ignored: the
data's licence forbids redistributing it, and this script rebuilds the model from the
RecBole 1.2.1 wheel, which it fetches with pip into the user cache unless --wheel names it).
The files are those of onerec_jax.lab.train.write_model_folder; `onerec-jax eval
out/movielens` and `onerec-jax stats out/movielens --test-requests` read them.
"""

import argparse
import pathlib
import time

from onerec_jax.config import preset
from onerec_jax.lab import movielens, train

# Measured on the shared 2-core CPU: docs/frontier.md.
DEFAULTS = train.TrainConfig(steps=2400, batch_size=256, learning_rate=3e-3,
                             warmup_steps=100)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out/movielens"))
  parser.add_argument("--wheel", type=pathlib.Path, help="the RecBole 1.2.1 wheel (default: "
                      "fetched into the user cache)")
  train.add_arguments(parser, DEFAULTS, "out/train_movielens")
  args = parser.parse_args()
  tc = train.config_from_arguments(args, DEFAULTS)

  options = movielens.MovieLensConfig(seed=args.seed)
  t0 = time.perf_counter()
  dataset = movielens.make_movielens(options, preset("movielens"), args.wheel)
  data_s = time.perf_counter() - t0
  print(f"MovieLens-100k: {movielens.describe(dataset)} ({data_s:.0f} s)")
  train.train_and_write(args.out, dataset, options, tc, args.workdir, data_s)


if __name__ == "__main__":
  main()
