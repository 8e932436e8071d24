"""BrokerConfig: defaults, Kafka-named properties files, flags over --set over file, and errors
that name the key."""
import pytest

from pylog.broker.config import (KNOWN_KEYS, BrokerConfig, BrokerConfigError, load_properties,
                                 new_cluster_id, parse_properties)
from pylog.storage.config import DEFAULT_MESSAGE_MAX_BYTES, LogConfig


def test_defaults(tmp_path):
    config = BrokerConfig(data_dir=str(tmp_path))
    assert (config.node_id, config.host, config.port) == (1, "127.0.0.1", 9092)
    assert (config.control_host, config.control_port) == ("127.0.0.1", 9644)
    assert config.auto_create_topics_enable is True
    assert (config.num_partitions, config.default_replication_factor) == (1, 1)
    assert config.min_insync_replicas == 1
    assert config.message_max_bytes == DEFAULT_MESSAGE_MAX_BYTES == 1048588
    assert config.socket_request_max_bytes == 104857600
    assert config.fsync is None and config.group_initial_rebalance_delay_ms == 0
    assert config.advertised_hostname == "127.0.0.1"
    assert config.log_config() == LogConfig()


def test_properties_file_with_kafka_names(tmp_path):
    path = tmp_path / "server.properties"
    path.write_text(
        "# a comment\n"
        "! another\n"
        f"log.dirs={tmp_path / 'data'}\n"
        "broker.id = 7\n"
        "listeners=PLAINTEXT://0.0.0.0:19092\n"
        "advertised.listeners=PLAINTEXT://kafka.example:29092\n"
        "auto.create.topics.enable=false\n"
        "num.partitions: 3\n"
        "default.replication.factor 1\n"
        "log.segment.bytes=1048576\n"
        "log.roll.hours=2\n"
        "log.retention.hours=1\n"
        "log.retention.bytes=-1\n"
        "log.flush.interval.messages=9223372036854775807\n"
        "log.flush.interval.ms=1000\n"
        "message.max.bytes=2000000\n"
        "socket.request.max.bytes=\\\n"
        "    5000000\n"
        "min.insync.replicas=1\n")
    config = BrokerConfig.load(config_file=str(path))
    assert config.data_dir == str(tmp_path / "data")
    assert config.node_id == 7
    assert (config.host, config.port) == ("0.0.0.0", 19092)
    assert (config.advertised_host, config.advertised_port) == ("kafka.example", 29092)
    assert config.advertised_hostname == "kafka.example"
    assert config.auto_create_topics_enable is False
    assert config.num_partitions == 3
    assert config.log_segment_ms == 2 * 3600 * 1000
    assert config.log_retention_ms == 3600 * 1000
    assert config.socket_request_max_bytes == 5_000_000
    log_config = config.log_config()
    assert log_config.segment_bytes == 1048576
    assert log_config.flush_messages is None and log_config.flush_ms == 1000
    assert log_config.message_max_bytes == 2_000_000


def test_flags_override_set_override_file(tmp_path):
    path = tmp_path / "p.properties"
    path.write_text(f"log.dirs={tmp_path}\nport=1000\nnum.partitions=2\nnode.id=3\n")
    config = BrokerConfig.load(config_file=str(path),
                               overrides=[("port", "2000"), ("num.partitions", "5")],
                               port=3000, node_id=None)
    assert config.port == 3000            # flag beats --set beats file
    assert config.num_partitions == 5     # --set beats file
    assert config.node_id == 3            # a flag left out (None) changes nothing


def test_wildcard_host_advertises_loopback(tmp_path):
    config = BrokerConfig(data_dir=str(tmp_path), host="0.0.0.0")
    assert config.advertised_hostname == "127.0.0.1"


def test_fsync_policy_flag(tmp_path):
    assert BrokerConfig(data_dir=str(tmp_path), fsync="always").fsync == "always"
    assert BrokerConfig(data_dir=str(tmp_path), fsync="250").fsync == 250
    assert BrokerConfig.load(overrides={"fsync": "os"}, data_dir=str(tmp_path)).fsync == "os"
    with pytest.raises(BrokerConfigError, match="fsync"):
        BrokerConfig(data_dir=str(tmp_path), fsync="sometimes")


@pytest.mark.parametrize("key,value,match", [
    ("log.retention.hourz", "1", r"log\.retention\.hourz: unknown setting \(did you mean "
                                 r"log\.retention\.hours\?\)"),
    ("bogus", "1", "bogus: unknown setting"),
    ("num.partitions", "three", "num.partitions: bad value 'three'"),
    ("num.partitions", "0", "num.partitions: 0 is outside"),
    ("auto.create.topics.enable", "yes", "auto.create.topics.enable: bad value"),
    ("listeners", "SSL://h:1", "listeners: bad value"),
    ("listeners", "PLAINTEXT://a:1,PLAINTEXT://b:2", "exactly one listener"),
    ("port", "70000", "listeners: 70000 is outside"),
    ("message.max.bytes", "10", "message.max.bytes"),
    ("log.segment.bytes", "10", "log.segment.bytes"),
    ("socket.request.max.bytes", "0", "socket.request.max.bytes"),
    ("cluster.id", "a=b", "cluster.id"),
])
def test_bad_settings_name_the_key(tmp_path, key, value, match):
    with pytest.raises(BrokerConfigError, match=match) as info:
        BrokerConfig.load(overrides=[(key, value)], data_dir=str(tmp_path))
    assert info.value.key is not None


def test_data_dir_is_required():
    with pytest.raises(BrokerConfigError, match="log.dirs"):
        BrokerConfig.load()


def test_file_errors(tmp_path):
    with pytest.raises(BrokerConfigError, match="cannot read config file"):
        load_properties(str(tmp_path / "missing.properties"))
    path = tmp_path / "dup.properties"
    path.write_text("port=1\nport=2\n")
    with pytest.raises(BrokerConfigError, match="port: given twice"):
        load_properties(str(path))
    with pytest.raises(BrokerConfigError, match="no key"):
        parse_properties("=value\n")


def test_properties_syntax():
    parsed = parse_properties("a=1\n  b : two words \nc\\\n  ontinued=x\nempty=\n# x=y\n"
                              "trailing=end\\\n")
    assert parsed == {"a": "1", "b": "two words", "continued": "x", "empty": "",
                      "trailing": "end"}


def test_every_known_key_is_accepted(tmp_path):
    samples = {"log.dirs": str(tmp_path), "log.dir": str(tmp_path), "cluster.id": "c1",
               "listeners": "PLAINTEXT://127.0.0.1:9092",
               "advertised.listeners": "PLAINTEXT://[::1]:9092", "host.name": "localhost",
               "advertised.host.name": "h", "control.host": "127.0.0.1",
               "auto.create.topics.enable": "true", "fsync": "always",
               "log.flush.interval.messages": "1", "log.flush.interval.ms": "5",
               "fetch.send.mode": "sendfile"}
    for key in sorted(KNOWN_KEYS):
        value = samples.get(key, "1000000")
        if key in ("node.id", "broker.id", "num.partitions", "default.replication.factor",
                   "min.insync.replicas", "log.roll.hours", "log.retention.hours",
                   "log.retention.minutes"):
            value = "1"
        if key in ("port", "advertised.port", "control.port"):
            value = "9000"
        BrokerConfig.load(overrides={key: value}, data_dir=str(tmp_path))


def test_new_cluster_ids_look_like_kafkas():
    ids = {new_cluster_id() for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) == 22 and "=" not in i for i in ids)
