"""scripts/bench_common.py: the fields recorded with every benchmark result."""

import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
from bench_common import git_commit  # noqa: E402


def test_git_commit_order(monkeypatch, tmp_path):
  monkeypatch.setenv("GIT_COMMIT", "from-env")
  assert git_commit("explicit") == "explicit"
  assert git_commit() == "from-env"
  monkeypatch.delenv("GIT_COMMIT")
  head = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                 cwd=pathlib.Path(__file__).parent).strip()
  monkeypatch.chdir(pathlib.Path(__file__).parent)
  assert git_commit() == head
  monkeypatch.chdir(tmp_path)  # no repository here
  assert git_commit() == "unknown"


def test_write_json_creates_the_folder(tmp_path):
  import json
  from bench_common import write_json
  write_json(str(tmp_path / "a" / "b.json"), {"x": [1, 2]})
  assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": [1, 2]}


def test_header_names_device_jax_and_commit(monkeypatch):
  import jax
  from bench_common import header
  monkeypatch.setenv("GIT_COMMIT", "abc123")
  assert header("median of 30") == dict(device=jax.devices()[0].device_kind,
                                        jax_version=jax.__version__, git_commit="abc123",
                                        timing="median of 30")


def test_timed_ms_warms_up_then_times_each_call_waited_for():
  """2 warm-up calls, then `runs` timed ones; each time covers the wait for the result,
  the host's launch time (returned) only the call."""
  import time
  from bench_common import timed_ms

  class Slow:  # jax.block_until_ready waits on block_until_ready()
    def block_until_ready(self):
      time.sleep(0.02)
      return self

  calls = []
  returned = []
  times = timed_ms(lambda: calls.append(1) or Slow(), 3, returned)
  assert len(calls) == 5 and len(times) == len(returned) == 3
  assert all(t >= 20 for t in times) and all(r < 20 for r in returned)
