"""What every benchmark script records beside its timings."""

import json
import os
import subprocess


def git_commit(explicit: str | None = None) -> str:
  """The commit a result was measured at: `explicit` (a --commit flag), else $GIT_COMMIT,
  else `git rev-parse HEAD`, else "unknown" (a copy of the tree without .git)."""
  if explicit or os.environ.get("GIT_COMMIT"):
    return explicit or os.environ["GIT_COMMIT"]
  try:
    return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                   stderr=subprocess.DEVNULL).strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def header(timing: str) -> dict:
  """The fields every result starts with: device, jax version, commit, how it was timed."""
  import jax
  return dict(device=jax.devices()[0].device_kind, jax_version=jax.__version__,
              git_commit=git_commit(), timing=timing)


def write_json(path: str, result: dict) -> None:
  """Writes a benchmark result, creating the folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
