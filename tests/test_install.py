"""Packaging: the extension is built in optimised API mode and a plain (non-editable) install
works from outside the source tree, CLI included."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pylog
from pylog import _core

ROOT = Path(__file__).resolve().parents[1]


def test_editable_tree_imports_the_built_extension():
    # cffi API mode produces a compiled module (not an ABI-mode dlopen wrapper)
    assert Path(_core.__file__).suffix == ".so"
    assert Path(pylog.__file__).resolve().parent == Path(_core.__file__).resolve().parent


@pytest.mark.timeout(600)
def test_plain_install_from_outside_the_source_tree(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, timeout=540)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = ("import pylog, pylog.core as c; "
             "assert pylog.__file__.startswith(%r), pylog.__file__; "
             "assert c.crc32c(b'123456789') == 0xE3069283; print('ok')" % str(target))
    out = subprocess.run([sys.executable, "-c", probe], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    cli = subprocess.run([sys.executable, "-m", "pylog.cli", "--version"], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and "pylog" in cli.stdout, cli.stderr
