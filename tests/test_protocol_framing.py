"""FrameDecoder and the size-prefix helpers."""
import gc
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pylog.protocol.errors import FrameError, FrameTooLargeError, InvalidFrameError
from pylog.protocol.framing import FrameDecoder, frame, frame_iovec


def sized(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def drain(decoder: FrameDecoder) -> list[bytes]:
    return [bytes(f) for f in decoder.frames()]


def feed_with_buffer(decoder: FrameDecoder, data: bytes, sizehint: int = -1) -> None:
    """What asyncio's BufferedProtocol does: read into get_buffer(), report the count."""
    position = 0
    while position < len(data):
        room = decoder.get_buffer(sizehint)
        n = min(len(room), len(data) - position)
        room[:n] = data[position:position + n]
        room.release()
        decoder.buffer_updated(n)
        position += n


payloads = st.lists(st.binary(max_size=3000), max_size=12)


@settings(max_examples=200, deadline=None)
@given(payloads=payloads, cuts=st.lists(st.integers(min_value=0, max_value=40000), max_size=30),
       small=st.booleans())
def test_arbitrary_chunking_yields_the_same_frames(payloads, cuts, small):
    stream = b"".join(sized(p) for p in payloads)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder(read_bytes=7 if small else 4096)
    got = []
    for lo, hi in zip(bounds, bounds[1:]):
        decoder.feed(stream[lo:hi])
        got.extend(drain(decoder))
    assert got == payloads
    assert decoder.pending_bytes == 0


@settings(max_examples=100, deadline=None)
@given(payloads=payloads, sizehint=st.sampled_from([-1, 0, 1, 5, 100000]))
def test_buffered_protocol_path(payloads, sizehint):
    stream = b"".join(sized(p) for p in payloads)
    decoder = FrameDecoder(read_bytes=13)
    got = []
    position = 0
    while position < len(stream):
        room = decoder.get_buffer(sizehint)
        assert len(room) >= max(sizehint, 1)
        n = min(len(room), len(stream) - position, 17)   # short reads, as sockets do
        room[:n] = stream[position:position + n]
        room.release()
        decoder.buffer_updated(n)
        position += n
        got.extend(drain(decoder))
    assert got == payloads


def test_pipelined_frames_in_one_read():
    decoder = FrameDecoder()
    decoder.feed(sized(b"one") + sized(b"") + sized(b"three") + b"\x00\x00")
    assert drain(decoder) == [b"one", b"", b"three"]
    assert decoder.pending_bytes == 2
    decoder.feed(b"\x00\x01x")
    assert drain(decoder) == [b"x"]


def test_zero_size_is_an_empty_frame():
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    assert decoder.next_frame().nbytes == 0
    assert decoder.next_frame() is None


def test_frame_of_exactly_the_limit_is_accepted():
    decoder = FrameDecoder(max_frame_bytes=10)
    decoder.feed(sized(b"0123456789"))
    assert drain(decoder) == [b"0123456789"]


def test_oversized_frame_fails_on_its_prefix_and_stays_failed():
    decoder = FrameDecoder(max_frame_bytes=10)
    decoder.feed(struct.pack(">i", 11))        # only the prefix: rejected before any payload
    with pytest.raises(FrameTooLargeError) as info:
        decoder.next_frame()
    assert info.value.size == 11 and info.value.limit == 10
    for call in (decoder.next_frame, lambda: decoder.get_buffer(-1),
                 lambda: decoder.feed(b"x"), lambda: decoder.buffer_updated(0)):
        with pytest.raises(FrameTooLargeError):
            call()


@pytest.mark.parametrize("size", [-1, -2**31])
def test_negative_size_is_invalid(size):
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">i", size) + b"abc")
    with pytest.raises(InvalidFrameError) as info:
        decoder.next_frame()
    assert isinstance(info.value, FrameError) and info.value.size == size


def test_hostile_prefix_is_rejected_by_get_buffer_without_allocating():
    decoder = FrameDecoder(max_frame_bytes=1 << 20)
    room = decoder.get_buffer(-1)
    room[:4] = b"\x7f\xff\xff\xff"
    room.release()
    decoder.buffer_updated(4)
    with pytest.raises(FrameTooLargeError):
        decoder.get_buffer(-1)               # a caller that forgot to drain frames first


def test_buffer_updated_beyond_the_offered_room_is_refused():
    decoder = FrameDecoder(read_bytes=8)
    room = decoder.get_buffer(-1)
    n = len(room)
    room.release()
    with pytest.raises(ValueError):
        decoder.buffer_updated(n + 1)
    with pytest.raises(ValueError):
        decoder.buffer_updated(-1)


def test_get_buffer_covers_the_rest_of_a_known_large_frame():
    decoder = FrameDecoder(read_bytes=64)
    payload = bytes(range(256)) * 4000                     # ~1 MB
    decoder.feed(sized(payload)[:10])
    room = decoder.get_buffer(-1)
    assert len(room) >= len(payload) - 6
    room.release()
    decoder.feed(sized(payload)[10:])
    (got,) = drain(decoder)
    assert got == payload


def test_held_frames_are_never_overwritten():
    """Frames the caller keeps stay intact while the decoder receives more."""
    decoder = FrameDecoder(read_bytes=16)
    held = []
    expected = []
    for i in range(200):
        payload = bytes([i % 251]) * (i % 37)
        expected.append(payload)
        feed_with_buffer(decoder, sized(payload))
        held.extend(decoder.frames())
    assert [bytes(f) for f in held] == expected


def test_buffer_is_reused_when_no_frame_is_held():
    decoder = FrameDecoder(read_bytes=64)
    first = decoder.get_buffer(-1)
    owner = first.obj
    first.release()
    for _ in range(100):
        decoder.feed(sized(b"abc" * 5))
        assert drain(decoder) == [b"abc" * 5]           # frames dropped right away
    room = decoder.get_buffer(-1)
    assert room.obj is owner
    room.release()


def test_buffer_is_replaced_while_a_frame_is_held():
    decoder = FrameDecoder(read_bytes=32)
    decoder.feed(sized(b"x" * 20))
    held = decoder.next_frame()
    decoder.feed(sized(b"y" * 40))                     # needs the room the held frame sits in
    assert bytes(held) == b"x" * 20
    assert held.obj is not decoder.get_buffer(-1).obj
    assert drain(decoder) == [b"y" * 40]


def test_big_buffer_is_returned_once_empty():
    decoder = FrameDecoder(read_bytes=64, retain_bytes=1024)
    decoder.feed(sized(b"z" * 100_000))
    assert drain(decoder) == [b"z" * 100_000]
    gc.collect()
    room = decoder.get_buffer(-1)
    assert len(room.obj) < 100_000
    room.release()


def test_frames_are_writable_views_of_the_payload():
    decoder = FrameDecoder()
    decoder.feed(sized(b"abcd"))
    f = decoder.next_frame()
    assert isinstance(f, memoryview) and not f.readonly
    f[0:1] = b"Z"                                      # in-place patching is allowed
    assert bytes(f) == b"Zbcd"


def test_constructor_rejects_impossible_limits():
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_bytes=-1)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_bytes=2**31)
    with pytest.raises(ValueError):
        FrameDecoder(read_bytes=0)


def test_frame_and_frame_iovec():
    parts = [b"ab", bytearray(b"cd"), memoryview(b"efg")]
    assert frame(parts) == b"\x00\x00\x00\x07abcdefg"
    iov = frame_iovec(parts)
    assert iov[0] == b"\x00\x00\x00\x07"
    assert all(a is b for a, b in zip(iov[1:], parts))   # the parts themselves, not copies
    assert frame([]) == b"\x00\x00\x00\x00"
    decoder = FrameDecoder()
    decoder.feed(b"".join(bytes(p) for p in iov))
    assert drain(decoder) == [b"abcdefg"]
