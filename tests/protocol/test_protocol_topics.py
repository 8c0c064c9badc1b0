"""Topic builders, subscription filters and broker ACL templates."""

from __future__ import annotations

import pytest

from protocol import InvalidMessageError, topics


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (``+`` one level, ``#`` the rest)."""
    filter_levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def test_topic_builders():
    assert topics.task("run-1") == "feddst/v1/runs/run-1/task"
    assert topics.model_chunk("run-1", 3, 0) == "feddst/v1/runs/run-1/model/3/0"
    assert topics.model_filter("run-1", 3) == "feddst/v1/runs/run-1/model/3/+"
    assert _matches(topics.model_filter("run-1", 3), topics.model_chunk("run-1", 3, 12))
    assert not _matches(topics.model_filter("run-1", 3), topics.model_chunk("run-1", 4, 0))
    assert topics.model_round_of(topics.model_chunk("run-1", 3, 12)) == ("run-1", 3)
    assert topics.model_round_of(topics.task("run-1")) is None
    assert topics.model_round_of("feddst/v1/runs/run-1/model/x/0") is None
    assert topics.control("run-1") == "feddst/v1/runs/run-1/control"
    assert topics.final("run-1") == "feddst/v1/runs/run-1/final"
    assert topics.update("run-1", "dev-9") == "feddst/v1/runs/run-1/update/dev-9"
    assert topics.ack("run-1", "dev-9") == "feddst/v1/runs/run-1/ack/dev-9"
    assert topics.register("dev-9") == "feddst/v1/devices/dev-9/register"
    assert topics.status("dev-9") == "feddst/v1/devices/dev-9/status"
    assert topics.inbox("dev-9") == "feddst/v1/devices/dev-9/inbox"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "dev 1", "x" * 65])
def test_topic_builders_refuse_unsafe_identifiers(bad):
    with pytest.raises(InvalidMessageError):
        topics.update("run-1", bad)
    with pytest.raises(InvalidMessageError):
        topics.model_chunk(bad, 1, 0)
    with pytest.raises(InvalidMessageError):
        topics.model_chunk("run-1", -1, 0)
    with pytest.raises(InvalidMessageError):
        topics.model_chunk("run-1", 1, -2)


def _acl_allows(lines: list[str], access: str, topic: str) -> bool:
    for line in lines:
        parts = line.split()
        if parts[0] == "topic" and parts[1] in (access, "readwrite") and _matches(parts[2], topic):
            return True
    return False


def test_device_acl_gives_exactly_its_own_topics():
    lines = topics.device_acl("dev-1")
    assert lines[0] == "user dev-1"
    assert _acl_allows(lines, "write", topics.update("run-1", "dev-1"))
    assert _acl_allows(lines, "write", topics.status("dev-1"))
    assert _acl_allows(lines, "write", topics.register("dev-1"))
    assert _acl_allows(lines, "read", topics.task("run-1"))
    assert _acl_allows(lines, "read", topics.model_chunk("run-1", 2, 5))
    assert _acl_allows(lines, "read", topics.ack("run-1", "dev-1"))
    assert _acl_allows(lines, "read", topics.final("run-1"))
    assert not _acl_allows(lines, "write", topics.final("run-1"))
    assert not _acl_allows(lines, "write", topics.update("run-1", "dev-2"))
    assert not _acl_allows(lines, "read", topics.update("run-1", "dev-2"))
    assert not _acl_allows(lines, "read", topics.ack("run-1", "dev-2"))
    assert not _acl_allows(lines, "write", topics.status("dev-2"))
    assert not _acl_allows(lines, "write", topics.task("run-1"))
    assert not _acl_allows(lines, "write", topics.model_chunk("run-1", 2, 5))


def test_subscriptions_are_covered_by_the_acls():
    device_lines = topics.device_acl("dev-1")
    for topic_filter, qos in topics.device_subscriptions("dev-1", final_model=True):
        assert qos == 1
        assert any(line.endswith(" " + topic_filter) and " read " in line for line in device_lines)
    coordinator_lines = topics.coordinator_acl()
    for topic_filter, _ in topics.coordinator_subscriptions():
        assert any(line.endswith(" " + topic_filter) for line in coordinator_lines)
    assert _matches(topics.device_subscriptions("dev-1", "run-1")[0][0], topics.task("run-1"))
    assert _acl_allows(coordinator_lines, "write", topics.final("run-1"))
    model_filter = topics.model_filter("run-1", 4)  # subscribed to on selection
    assert any(line.startswith("topic read ") and _matches(line.split()[2], model_filter) for line in device_lines)
    assert not any(_matches(f, topics.model_chunk("run-1", 4, 0)) for f, _ in topics.device_subscriptions("dev-1"))


def test_only_devices_that_keep_the_final_model_subscribe_to_it():
    def receives_final(filters: list[tuple[str, int]]) -> bool:
        return any(_matches(topic_filter, topics.final("run-1")) for topic_filter, _ in filters)

    assert not receives_final(topics.device_subscriptions("dev-1"))
    assert receives_final(topics.device_subscriptions("dev-1", final_model=True))
    assert receives_final(topics.device_subscriptions("dev-1", "run-1", final_model=True))


def test_pattern_acl_uses_the_username():
    patterns = topics.device_acl_patterns()
    assert all(line.startswith("pattern ") for line in patterns)
    assert "pattern write feddst/v1/runs/+/update/%u" in patterns


def test_only_model_chunks_and_status_are_retained_and_everything_is_qos1():
    retained = [policy.pattern for policy in topics.TOPIC_POLICIES if policy.retain]
    assert retained == ["feddst/v1/runs/<run>/model/<round>/<chunk>", "feddst/v1/devices/<device>/status"]
    assert {policy.qos for policy in topics.TOPIC_POLICIES} == {1}
