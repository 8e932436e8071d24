"""CRC-32C of the C core: known vectors on both paths, chaining, and agreement with the
`crc32c` package on awkward lengths and alignments."""
import os

import pytest

from pylog import core

# RFC 3720 appendix B.4 test vectors, and the common check value.
ISCSI_READ_PDU = bytes.fromhex(
    "01c00000000000000000000000000000"
    "14000000000004000000001400000018"
    "28000000000000000200000000000000")
VECTORS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (ISCSI_READ_PDU, 0xD9963A56),
    (b"", 0),
]


@pytest.fixture(params=["detected", "portable"])
def crc_path(request):
    """Run a test once on the run-time-chosen path and once forced onto the portable one."""
    core.force_portable_crc32c(request.param == "portable")
    yield request.param
    core.force_portable_crc32c(False)


@pytest.mark.parametrize("data,expected", VECTORS)
def test_known_vectors(crc_path, data, expected):
    assert core.crc32c(data) == expected
    assert core.crc32c_portable(data) == expected


def test_forcing_portable_is_visible():
    core.force_portable_crc32c(True)
    try:
        assert core.crc32c_implementation() == "portable"
    finally:
        core.force_portable_crc32c(False)


def test_detection_picks_hardware_when_the_cpu_has_it():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " sse4_2" in flags:
        assert core.crc32c_implementation() == "sse4.2"
    elif "crc32" in flags and os.uname().machine == "aarch64":
        assert core.crc32c_implementation() == "armv8"
    else:
        pytest.skip("CPU without a CRC-32C instruction")


def test_lengths_and_alignments_agree_across_paths_and_with_reference():
    crc32c_ref = pytest.importorskip("crc32c")
    buf = os.urandom(3 * 8192 * 2 + 4096)
    lengths = [0, 1, 7, 8, 9, 255, 256, 767, 768, 769, 3 * 256 * 5 + 3, 3 * 8192 - 1,
               3 * 8192, 3 * 8192 + 1, 3 * 8192 * 2 + 17]
    for offset in range(8):
        view = memoryview(buf)[offset:]
        for length in lengths:
            chunk = view[:length]
            expected = crc32c_ref.crc32c(bytes(chunk))
            assert core.crc32c(chunk) == expected, (offset, length)
            assert core.crc32c_portable(chunk) == expected, (offset, length)


def test_chaining_equals_one_pass(crc_path):
    data = os.urandom(100_003)
    for cut in (0, 1, 8, 4097, 50_000, 100_003):
        assert core.crc32c(data[cut:], core.crc32c(data[:cut])) == core.crc32c(data)


def test_accepts_any_buffer_type():
    data = b"pylog" * 1000
    expected = core.crc32c(data)
    assert core.crc32c(bytearray(data)) == expected
    assert core.crc32c(memoryview(data)) == expected
