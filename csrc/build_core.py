"""cffi builder for pylog's C core, in API (out-of-line) mode: produces the module pylog._core.

setup.py names this file in ``cffi_modules``; ``pip install .`` and ``pip install -e .`` both
compile it. CPU-specific code (SSE4.2, ARMv8 CRC) is enabled per function with target
attributes inside crc32c.c, never with a global -m flag, so the run-time detection holds.

Environment knobs (for CI and benchmarks, never needed by users):
  PYLOG_CFLAGS     extra compiler flags appended to the defaults (e.g. "-O0 -g")
"""
import os
import re
import shlex

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["crc32c.c", "batch.c", "records.c", "segment.c"]


def _cdef_text() -> str:
    with open(os.path.join(HERE, "pylog_core.h"), encoding="utf-8") as f:
        header = f.read()
    match = re.search(r"/\* cffi-begin \*/(.*)/\* cffi-end \*/", header, re.S)
    if match is None:
        raise RuntimeError("pylog_core.h lacks the cffi-begin/cffi-end markers")
    return match.group(1)


def _cflags() -> list[str]:
    flags = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing",
             "-D_GNU_SOURCE"]
    flags += shlex.split(os.environ.get("PYLOG_CFLAGS", ""))
    return flags


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "pylog._core",
    '#include "pylog_core.h"',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_cflags(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
