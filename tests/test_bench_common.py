"""scripts/bench_common.py: the commit recorded with every benchmark result."""

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
