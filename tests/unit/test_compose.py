"""docker-compose.yml gives the same broker (no Docker engine here: the file is checked)."""

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def load():
    return yaml.safe_load(COMPOSE.read_text())


def test_official_kafka4_image_in_kraft_mode():
    kafka = load()["services"]["kafka"]
    image, tag = kafka["image"].split(":")
    assert image == "apache/kafka" and tag.startswith("4.")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert not any("ZOOKEEPER" in key for key in env)
    assert "zookeeper" not in load()["services"]


def test_single_node_settings():
    env = load()["services"]["kafka"]["environment"]
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_advertised_address_comes_from_the_environment():
    env = load()["services"]["kafka"]["environment"]
    assert "${KAFKA_ADVERTISED_HOST" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "0.0.0.0" not in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "0.0.0.0:9092" in env["KAFKA_LISTENERS"]
    assert "9092:9092" in load()["services"]["kafka"]["ports"]


def test_named_volume_and_healthcheck():
    doc = load()
    kafka = doc["services"]["kafka"]
    volume = kafka["volumes"][0].split(":")[0]
    assert volume in doc["volumes"]
    assert kafka["healthcheck"]["test"]


def test_the_cluster_profile_runs_three_brokers_that_replicate_everything():
    services = load()["services"]
    nodes = {name: services[name] for name in ("kafka-1", "kafka-2", "kafka-3")}
    ports = set()
    for i, (_name, node) in enumerate(sorted(nodes.items()), start=1):
        assert node["profiles"] == ["cluster"] and node["image"] == services["kafka"]["image"]
        env = node["environment"]
        assert env["KAFKA_NODE_ID"] == str(i)
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == \
            "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["CLUSTER_ID"] == nodes["kafka-1"]["environment"]["CLUSTER_ID"]
        (port,) = node["ports"]
        ports.add(port)
        assert port.split(":")[0] in env["KAFKA_ADVERTISED_LISTENERS"]
        assert "${KAFKA_ADVERTISED_HOST" in env["KAFKA_ADVERTISED_LISTENERS"]
        assert f"kafka-{i}-data:/var/lib/kafka/data" in node["volumes"]
    assert len(ports) == 3
    assert "profiles" not in services["kafka"]  # `docker compose up -d`: the one broker
