"""The advertised version table and the error codes, checked against kio's schemas."""
import pytest
from pylog.protocol.codec import request_schema as load_request_schema
from pylog.protocol.codec import response_schema as load_response_schema
from kio.schema.errors import ErrorCode as KioErrorCode

from pylog.protocol.errors import ErrorCode
from pylog.protocol.versions import ADVERTISED_VERSIONS, ApiKey, VersionRange, advertised

# KAFKA-PROTOCOL.md section 1 (recommended set) plus the later apis, with the floors raised
# where kio (Kafka 4 schemas) has no older version: CreateTopics 2, OffsetForLeaderEpoch 2.
# DeleteTopics 0 is carried by v1's schemas (pylog.protocol.legacy).
EXPECTED = {
    18: (0, 2), 3: (0, 8), 0: (3, 8), 1: (4, 11), 2: (1, 5), 10: (0, 2), 11: (0, 5),
    14: (0, 3), 12: (0, 3), 13: (0, 3), 8: (2, 7), 9: (1, 5), 19: (2, 4), 22: (0, 1),
    20: (0, 3), 23: (2, 3), 16: (0, 2), 15: (0, 4), 42: (0, 1),
}


def test_table_is_the_recommended_set():
    assert {int(k): tuple(r) for k, r in ADVERTISED_VERSIONS.items()} == EXPECTED


@pytest.mark.parametrize("api_key", list(ADVERTISED_VERSIONS))
def test_every_advertised_version_has_a_non_flexible_kio_schema(api_key):
    served = ADVERTISED_VERSIONS[api_key]
    for version in range(served.min, served.max + 1):
        request = load_request_schema(api_key, version)
        response = load_response_schema(api_key, version)
        assert not request.__flexible__, (api_key, version)
        assert not response.__flexible__, (api_key, version)


def test_api_key_names_match_kio():
    from kio.index import api_key_map
    for key in ApiKey:
        assert api_key_map[key.value] == key.name.lower(), key


def test_advertised_filters_by_implemented_keys_in_key_order():
    ranges = advertised([ApiKey.METADATA, 18, 0, 1, 999])
    assert list(ranges) == [ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.METADATA, ApiKey.API_VERSIONS]
    assert ranges[ApiKey.FETCH] == VersionRange(4, 11)
    assert advertised([]) == {}


def test_version_range_membership():
    served = VersionRange(2, 4)
    assert 2 in served and 4 in served
    assert 1 not in served and 5 not in served and "3" not in served


def test_error_codes_match_kio_names_codes_and_retriability():
    for code in ErrorCode:
        theirs = KioErrorCode(code.value)
        assert theirs.name.upper() == code.name, code
        assert theirs.retriable == code.retriable, code


def test_error_codes_named_in_the_brief():
    expected = {
        "NONE": 0, "OFFSET_OUT_OF_RANGE": 1, "CORRUPT_MESSAGE": 2,
        "UNKNOWN_TOPIC_OR_PARTITION": 3, "INVALID_FETCH_SIZE": 4, "LEADER_NOT_AVAILABLE": 5,
        "NOT_LEADER_OR_FOLLOWER": 6, "REQUEST_TIMED_OUT": 7, "MESSAGE_TOO_LARGE": 10,
        "COORDINATOR_NOT_AVAILABLE": 15, "NOT_COORDINATOR": 16, "INVALID_TOPIC_EXCEPTION": 17,
        "RECORD_LIST_TOO_LARGE": 18, "NOT_ENOUGH_REPLICAS": 19,
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND": 20, "INVALID_REQUIRED_ACKS": 21,
        "ILLEGAL_GENERATION": 22, "INVALID_GROUP_ID": 24, "UNKNOWN_MEMBER_ID": 25,
        "INVALID_SESSION_TIMEOUT": 26, "REBALANCE_IN_PROGRESS": 27, "UNSUPPORTED_VERSION": 35,
        "TOPIC_ALREADY_EXISTS": 36, "INVALID_PARTITIONS": 37, "INVALID_REPLICATION_FACTOR": 38,
        "INVALID_CONFIG": 40, "NOT_CONTROLLER": 41, "INVALID_REQUEST": 42,
        "OUT_OF_ORDER_SEQUENCE_NUMBER": 45, "DUPLICATE_SEQUENCE_NUMBER": 46,
        "INVALID_PRODUCER_EPOCH": 47, "UNKNOWN_PRODUCER_ID": 59, "GROUP_ID_NOT_FOUND": 69,
        "FENCED_LEADER_EPOCH": 74, "UNKNOWN_LEADER_EPOCH": 75, "MEMBER_ID_REQUIRED": 79,
    }
    for name, code in expected.items():
        assert ErrorCode[name] == code
    assert ErrorCode.NOT_LEADER_OR_FOLLOWER.retriable
    assert not ErrorCode.OFFSET_OUT_OF_RANGE.retriable
