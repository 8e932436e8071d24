"""Old versions kio has no schema for, served by mapping them onto a version it has.

kio is generated from Kafka 4's schemas, which dropped the versions KIP-896 retired. One of
them is still wanted here: DeleteTopics v0 (the issue asks for DeleteTopics 0-3). Its wire
format differs from v1 in a single place, so it needs no codec of its own:

  DeleteTopics v0 request   = v1 request:  topic_names [STRING], timeout_ms INT32
  DeleteTopics v0 response  = v1 response without its leading throttle_time_ms INT32:
                              responses [name STRING, error_code INT16]
  headers                   = v1's: request header v1, response header v0

(Kafka's DeleteTopicsRequest.json / DeleteTopicsResponse.json: "Version 1 adds the throttle
time", nothing else.) A ``LegacyVersion`` names the kio version to borrow and whether the
response drops a leading throttle field; ``codec`` wraps kio's reader and writer accordingly,
and handlers build the borrowed version's kio entities (the throttle value is not sent).
"""
from __future__ import annotations

from typing import NamedTuple

from pylog.protocol.versions import ApiKey


class LegacyVersion(NamedTuple):
    """How to carry (api key, ``version``) with kio's schemas of ``schema_version``."""

    schema_version: int
    # The response of ``version`` lacks the INT32 throttle_time_ms that
    # ``schema_version``'s response starts with.
    response_without_leading_throttle: bool


#: (api key, version) -> the kio version that carries it.
LEGACY_VERSIONS: dict[tuple[int, int], LegacyVersion] = {
    (ApiKey.DELETE_TOPICS, 0): LegacyVersion(schema_version=1,
                                             response_without_leading_throttle=True),
}

#: Bytes of the throttle_time_ms field a legacy response leaves out.
THROTTLE_FIELD_BYTES = 4


def schema_version(api_key: int, api_version: int) -> int:
    """The kio schema version that encodes (api_key, api_version) on the wire."""
    legacy = LEGACY_VERSIONS.get((api_key, api_version))
    return api_version if legacy is None else legacy.schema_version
