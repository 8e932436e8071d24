"""The Kafka wire protocol, sans IO: bytes in, kio objects out, and back.

- ``framing``: split a byte stream into size-prefixed frames (``FrameDecoder``), prefix sizes.
- ``header``: request/response headers and which header version each api version uses.
- ``versions``: the api keys and version ranges pylog advertises.
- ``codec``: decode requests / encode responses (broker), encode requests / decode responses
  (client), the ApiVersions fallback; bodies through kio.
- ``fetch_response``: the hand-framed Fetch response that carries log bytes without a copy.
- ``errors``: Kafka error codes (sent in responses) and the local exceptions.
"""
from pylog.protocol.codec import (
    Request,
    api_versions_fallback_response,
    api_versions_response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from pylog.protocol.errors import (
    EncodeError,
    ErrorCode,
    FrameError,
    FrameTooLargeError,
    InvalidFrameError,
    MalformedRequestError,
    MalformedResponseError,
    ProtocolError,
    RequestError,
    UnknownApiKeyError,
    UnsupportedVersionError,
)
from pylog.protocol.fetch_response import (
    FetchPartitionResponse,
    FetchTopicResponse,
    encode_fetch_response,
)
from pylog.protocol.framing import FrameDecoder, frame, frame_iovec
from pylog.protocol.header import RequestHeader
from pylog.protocol.versions import ADVERTISED_VERSIONS, ApiKey, VersionRange, advertised

__all__ = [
    "ADVERTISED_VERSIONS",
    "ApiKey",
    "EncodeError",
    "ErrorCode",
    "FetchPartitionResponse",
    "FetchTopicResponse",
    "FrameDecoder",
    "FrameError",
    "FrameTooLargeError",
    "InvalidFrameError",
    "MalformedRequestError",
    "MalformedResponseError",
    "ProtocolError",
    "Request",
    "RequestError",
    "RequestHeader",
    "UnknownApiKeyError",
    "UnsupportedVersionError",
    "VersionRange",
    "advertised",
    "api_versions_fallback_response",
    "api_versions_response",
    "decode_request",
    "decode_response",
    "encode_fetch_response",
    "encode_request",
    "encode_response",
    "frame",
    "frame_iovec",
]
