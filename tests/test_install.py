"""A regular (non-editable) install works from any folder: the wheel carries the demo as
package data, every default path resolves inside the installed package or the user cache
folder, and the main command runs."""

import os
import pathlib
import site
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
  done = subprocess.run(cmd, capture_output=True, text=True, **kw)
  assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-4000:])
  return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A fresh venv holding only the built wheel; the dependencies come from this test's
  environment through path entries: its site-packages folders on sys.path, those that its
  .pth files add included (a venv layered on another's packages), while the .pth files
  themselves, the editable install's finder among them, are not run."""
  tmp = tmp_path_factory.mktemp("install")
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"),
        str(ROOT)])
  wheel = next((tmp / "dist").glob("onerec_jax-*.whl"))
  venv = tmp / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
  purelib = pathlib.Path(sysconfig.get_path("purelib", vars={"base": str(venv),
                                                             "platbase": str(venv)}))
  deps = [p for p in dict.fromkeys(site.getsitepackages() + sys.path)
          if pathlib.Path(p).is_dir() and pathlib.Path(p).name == "site-packages"]
  (purelib / "_test_dependencies.pth").write_text("\n".join(deps) + "\n")
  _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
        "-q", "--no-deps", str(wheel)])
  return venv, purelib


def test_wheel_install_runs_the_demo_from_another_folder(installed, tmp_path):
  venv, purelib = installed
  env = {**os.environ, "ONEREC_JAX_CACHE": str(tmp_path / "cache"),
         "ONEREC_JAX_COMPILE_CACHE": "off", "PYTHONPATH": ""}
  where = _run([str(venv / "bin" / "python"), "-c",
                "import onerec_jax, onerec_checkpoints; print(onerec_jax.__file__); "
                "print(onerec_checkpoints.DEMO)"], cwd=tmp_path, env=env).stdout.split()
  assert all(pathlib.Path(p).is_relative_to(purelib) for p in where), where
  assert (pathlib.Path(where[1]) / "model.safetensors").is_file()
  done = _run([str(venv / "bin" / "onerec-jax"), "generate", "--beam-width", "4",
               "--output", "top.json"], cwd=tmp_path, env=env)
  assert done.stdout.splitlines()[0].split()[:3] == ["request_id", "rank", "item_id"]
  assert (tmp_path / "top.json").is_file()
  # The converted demo went to the user cache, nothing into the installed package.
  assert (tmp_path / "cache" / "demo" / "fp16" / "onerec_checkpoint.json").is_file()
  assert not list(purelib.rglob("onerec_checkpoint.json"))
