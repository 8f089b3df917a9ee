from __future__ import annotations

import pytest

from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings


def test_defaults_keep_the_seed_names_and_values() -> None:
    s = Settings()
    assert (s.LEASE_TTL_SECONDS, s.RUN_TIMEOUT_SECONDS, s.MAX_RETRIES) == (30.0, 900.0, 3)
    assert s.MODEL_PROVIDER == "openai" and s.DEFAULT_MODEL == "gpt-4o"


def test_an_unknown_key_lists_the_valid_keys() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"unknown setting AGENTSTREAM\['LEASE_TTL'\]; valid settings: .*LEASE_TTL_SECONDS",
    ):
        Settings.from_mapping({"LEASE_TTL": 5})


def test_a_seed_only_key_says_what_to_do_instead() -> None:
    with pytest.raises(ConfigurationError, match=r"QUEUE_BACKEND.*Redis Streams"):
        Settings.from_mapping({"QUEUE_BACKEND": "postgres"})


def test_a_value_of_the_wrong_type_names_the_key_and_the_type() -> None:
    with pytest.raises(ConfigurationError, match=r"AGENTSTREAM\['PARTITIONS'\] = 'many' is not a valid int"):
        Settings.from_mapping({"PARTITIONS": "many"})
    with pytest.raises(ConfigurationError, match="DEBUG_MODE"):
        Settings.from_mapping({"DEBUG_MODE": "perhaps"})


def test_invalid_values_are_refused_with_the_rule() -> None:
    with pytest.raises(ConfigurationError, match="PARTITIONS must be at least 1"):
        Settings.from_mapping({"PARTITIONS": 0})
    with pytest.raises(ConfigurationError, match="use one of internal, debug, user"):
        Settings.from_mapping({"EVENT_VISIBILITY": {"tool.call": "public"}})
    with pytest.raises(ConfigurationError, match="DEFAULT_CONVERSATION_POLICY"):
        Settings.from_mapping({"DEFAULT_CONVERSATION_POLICY": "queue"})


def test_environment_strings_are_parsed_like_the_settings_dict() -> None:
    s = Settings.from_env(
        {
            "AGENTSTREAM_LEASE_TTL_SECONDS": "5",
            "AGENTSTREAM_DEBUG_MODE": "true",
            "AGENTSTREAM_RUNTIME_REGISTRY": "a.b:register, c.d.register",
            "AGENTSTREAM_EVENT_VISIBILITY": '{"tool.call": "user"}',
            "AGENTSTREAM_OPENAI_BASE_URL": "none",
            "AGENTSTREAM_DEMO_TOKEN": "not-a-setting",
            "REDIS_URL": "redis://example:6379/1",
            "UNRELATED": "x",
        }
    )
    assert s.LEASE_TTL_SECONDS == 5.0 and s.DEBUG_MODE is True
    assert s.RUNTIME_REGISTRY == ("a.b:register", "c.d.register")
    assert s.EVENT_VISIBILITY == {"tool.call": "user"}
    assert s.OPENAI_BASE_URL is None
    assert s.REDIS_URL == "redis://example:6379/1"


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.PARTITIONS = 3  # type: ignore[misc]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
@pytest.mark.parametrize("name", ["LEASE_TTL_SECONDS", "RUN_TIMEOUT_SECONDS", "RETRY_BACKOFF_MAX"])
def test_a_float_setting_that_is_not_finite_is_refused_by_name(name: str, value: str) -> None:
    """'inf' parses as a float and passed every 'positive' rule; as milliseconds it crashed each
    submit (RUN_TIMEOUT_SECONDS) or lease with an OverflowError, far from the setting."""
    with pytest.raises(ConfigurationError, match=rf"{name} must be a finite number"):
        Settings.from_env({f"AGENTSTREAM_{name}": value})


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("IDEMPOTENCY_TTL_SECONDS", "0", "at least 1"),
        ("IDEMPOTENCY_TTL_SECONDS", "-5", "at least 1"),
        ("DEFAULT_CONCURRENCY", "0", "at least 1"),
        ("DEFAULT_PROCESSES", "0", "at least 1"),
        ("SSE_CLIENT_BUFFER", "0", "at least 1"),
        ("STEP_TIMEOUT_SECONDS", "0", "positive"),
        ("SSE_KEEPALIVE_SECONDS", "0", "positive"),
        ("RETRY_BACKOFF_BASE", "-2", "not be negative"),
        ("SHUTDOWN_GRACE_SECONDS", "-1", "not be negative"),
    ],
)
def test_a_number_outside_its_range_is_refused_with_the_rule(name: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"{name} must (be )?{rule}"):
        Settings.from_env({f"AGENTSTREAM_{name}": value})


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("PARTITIONS", 4.0, "int"),
        ("PARTITIONS", "4", "int"),
        ("DEBUG_MODE", "yes", "bool"),
        ("KEY_PREFIX", None, "str"),
    ],
)
def test_a_keyword_argument_of_the_wrong_type_is_refused_by_name(name: str, value: object, kind: str) -> None:
    """Keyword arguments are not parsed: PARTITIONS=4.0 silently made keys tagged {1.0} that no
    worker with PARTITIONS=4 reads, and PARTITIONS='4' was a bare TypeError."""
    with pytest.raises(ConfigurationError, match=rf"{name} = .* is not a valid {kind}; pass a {kind}"):
        Settings(**{name: value})


def test_keyword_arguments_of_the_right_type_pass() -> None:
    s = Settings(PARTITIONS=4, LEASE_TTL_SECONDS=5, OPENAI_BASE_URL=None, DEBUG_MODE=True)
    assert (s.PARTITIONS, s.LEASE_TTL_SECONDS, s.OPENAI_BASE_URL) == (4, 5, None)
