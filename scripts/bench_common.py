"""What every benchmark script records beside its timings."""

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
