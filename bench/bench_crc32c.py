"""CRC-32C throughput beside the `crc32c` and `google-crc32c` packages.

The three run the same algorithm on the same hardware instruction, so the aim is parity: the
ratio test below alternates the implementations round by round (the machine is shared and
noisy, so interleaving matters more than repetition) and reports the median ratio.

    pytest bench/bench_crc32c.py --benchmark-only
"""
import os
import statistics
import time

import pytest

from pylog import core

MIB = 1 << 20
DATA = os.urandom(MIB)

crc32c_pkg = pytest.importorskip("crc32c")
google_crc32c = pytest.importorskip("google_crc32c")

IMPLEMENTATIONS = {
    "pylog": core.crc32c,
    "pylog-portable": core.crc32c_portable,
    "crc32c": crc32c_pkg.crc32c,
    "google-crc32c": google_crc32c.value,
}


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_crc32c_1mib(benchmark, name):
    fn = IMPLEMENTATIONS[name]
    benchmark.group = "crc32c 1 MiB"
    result = benchmark(fn, DATA)
    assert result == crc32c_pkg.crc32c(DATA)
    benchmark.extra_info["GB/s"] = round(MIB / benchmark.stats.stats.median / 1e9, 2)


def _best_of(fn, rounds: int = 20) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn(DATA)
        best = min(best, time.perf_counter() - start)
    return best


def test_crc32c_ratio_alternating(benchmark):
    """Median over alternating rounds of (reference time / pylog time); >= 0.95 is the target."""
    ratios = {"crc32c": [], "google-crc32c": []}

    def one_round():
        for ref in ratios:
            pylog_t = _best_of(core.crc32c)
            ref_t = _best_of(IMPLEMENTATIONS[ref])
            ratios[ref].append(ref_t / pylog_t)

    benchmark.pedantic(one_round, rounds=9, iterations=1)
    for ref, values in ratios.items():
        benchmark.extra_info[f"pylog/{ref} speed ratio (median)"] = round(statistics.median(values), 3)
    benchmark.extra_info["pylog GB/s"] = round(MIB / _best_of(core.crc32c) / 1e9, 2)
