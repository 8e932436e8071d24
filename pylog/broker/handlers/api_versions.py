"""ApiVersions (key 18, v0-v2), with the KIP-511 fallback for versions above 2.

An ApiVersions request of a version pylog does not serve (librdkafka sends v3, kafka-python
v4, both flexible) is not an error that closes the connection: it gets the v0-layout answer
with error 35 and the supported ranges (``api_versions_fallback_response``), and the client
retries with a version from the list (KAFKA-PROTOCOL.md §2). Every other answer lists exactly
the api keys this broker has handlers for (``supported``), Produce from v0 (see ``listed``).

The response body never changes while the broker runs, so each version's bytes are encoded
once; only the correlation id (bytes 4-8 of the frame) is patched per request.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from pylog.protocol.codec import (Request, api_versions_fallback_response, api_versions_response,
                                  decode_request, encode_response)
from pylog.protocol.errors import ErrorCode, UnsupportedVersionError
from pylog.protocol.header import RequestHeader
from pylog.protocol.versions import ApiKey, VersionRange

from pylog.broker.handlers.base import Handler, Response

_CORRELATION_ID = struct.Struct(">i")
_CORRELATION_ID_AT = 4   # after the size prefix


class UnsupportedApiVersionsRequest(NamedTuple):
    """An ApiVersions request of a version above the served range (answered by fallback)."""

    api_version: int
    correlation_id: int


class ApiVersionsHandler(Handler):
    api_key = ApiKey.API_VERSIONS

    def __init__(self, broker, supported):
        super().__init__(broker, supported)
        # The ranges listed to clients: ``supported``, except that Produce is listed from v0.
        # librdkafka before 2.11.1 (kcat's 2.0.2) compresses with gzip, snappy and lz4 only
        # when the listed Produce range contains v0, and otherwise silently sends them
        # uncompressed (librdkafka #4956). Kafka 4 lists Produce v0-v2 for the same reason
        # while refusing them (KAFKA-18659); so does pylog: requests are still decoded
        # against ``supported``, and a Produce v0-v2 closes the connection.
        self.listed = dict(supported)
        if ApiKey.PRODUCE in supported:
            self.listed[ApiKey.PRODUCE] = VersionRange(0, supported[ApiKey.PRODUCE].max)
        # api_version -> the encoded response frame with correlation id 0.
        self._encoded: dict[int, bytes] = {}

    def decode(self, frame: memoryview) -> Request | UnsupportedApiVersionsRequest:
        try:
            return decode_request(frame, self.supported)
        except UnsupportedVersionError as exc:
            if exc.correlation_id is None or exc.api_version is None:
                raise
            return UnsupportedApiVersionsRequest(exc.api_version, exc.correlation_id)

    def handle(self, request: Request | UnsupportedApiVersionsRequest) -> Response:
        if isinstance(request, UnsupportedApiVersionsRequest):
            return api_versions_fallback_response(request.correlation_id, self.listed)
        version = request.api_version
        template = self._encoded.get(version)
        if template is None:
            body = api_versions_response(version, self.listed)
            template = encode_response(RequestHeader(self.api_key, version, 0, None, 1), body)
            self._encoded[version] = template
        frame = bytearray(template)
        _CORRELATION_ID.pack_into(frame, _CORRELATION_ID_AT, request.correlation_id)
        return bytes(frame)

    def error_response(self, request, error_code: ErrorCode) -> Response:
        if isinstance(request, UnsupportedApiVersionsRequest):
            return None
        body = api_versions_response(request.api_version, {}, error_code=error_code)
        return encode_response(request.header, body)
