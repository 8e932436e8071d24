"""The C core under AddressSanitizer and UndefinedBehaviorSanitizer, fed hostile bytes.

tests/c/hostile_input.c is compiled together with every csrc/*.c with the sanitizers on and
run over real clients' batches, batches built here, and mutations of both (truncations, flipped
bytes, extreme length fields, unterminated varints, random buffers; CRCs recomputed after half
the mutations so the record walker sees the damage). Any out-of-bounds access or undefined
behaviour aborts the program and fails the test.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pylog.records import Compression, build_batch

ROOT = Path(__file__).resolve().parents[1]
CLIENT_BATCHES = ROOT.parent / "shared" / "testdata" / "client-batches"


def _compiler():
    for name in ("gcc", "cc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def hostile_binary(tmp_path_factory):
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler on this machine")
    out = tmp_path_factory.mktemp("asan") / "hostile_input"
    sources = [str(ROOT / "tests" / "c" / "hostile_input.c")]
    sources += sorted(str(p) for p in (ROOT / "csrc").glob("*.c"))
    cmd = [cc, "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           "-fno-omit-frame-pointer", "-std=c11", "-D_GNU_SOURCE", f"-I{ROOT / 'csrc'}",
           "-o", str(out), *sources]
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    return out


def _seed_files(tmp_path):
    seeds = sorted(str(p) for p in CLIENT_BATCHES.glob("*/*.bin"))
    # batches written here: several per file, every codec, headers and null fields
    for codec in Compression:
        records = [(None if i % 5 == 0 else b"k%d" % i, None if i % 7 == 0 else b"v" * i,
                    [("h", b"x"), ("n", None)] if i % 3 == 0 else [], 1_700_000_000_000 + i)
                   for i in range(40)]
        data = b"".join(build_batch(records[j:j + 10], compression=codec, base_offset=j)
                        for j in range(0, 40, 10))
        path = tmp_path / f"built-{codec.name.lower()}.bin"
        path.write_bytes(data)
        seeds.append(str(path))
    return seeds


def test_hostile_bytes_under_sanitizers(hostile_binary, tmp_path):
    iterations = int(os.environ.get("PYLOG_HOSTILE_ITERATIONS", "20000"))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", TMPDIR=str(tmp_path))
    proc = subprocess.run([str(hostile_binary), str(iterations), "12345", *_seed_files(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "survived" in proc.stdout
    assert "runtime error" not in proc.stderr, proc.stderr[-4000:]
