"""``manage.py check`` names every setting that points at something missing (agentstream.E003),
so a typo stops the deployment at start-up instead of a 500 on the first request or a failed run."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings


def check_errors(agentstream: dict[str, Any]) -> str:
    with override_settings(AGENTSTREAM=agentstream), pytest.raises(SystemCheckError) as raised:
        call_command("check")
    return str(raised.value)


def allow(value: object) -> bool:
    return True


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("AUTHZ_HOOK", "no.such.module.hook", "AUTHZ_HOOK = 'no.such.module.hook' cannot be imported"),
        ("QUOTA_HOOK", "tests.demo.test_checks.nothing", "QUOTA_HOOK = 'tests.demo.test_checks.nothing'"),
        ("RUN_COMPLETED_HOOK", "no.such.hook", "RUN_COMPLETED_HOOK = 'no.such.hook' cannot be imported"),
        ("PROJECTIONS", ["no.such.Projection"], "PROJECTIONS'] entry 'no.such.Projection' does not import"),
        ("ANONYMOUS_SESSION_MODEL", "nowhere.Session", "ANONYMOUS_SESSION_MODEL = 'nowhere.Session'"),
        ("MODEL_PROVIDER", "openia", "MODEL_PROVIDER = 'openia' is not a provider; use one of anthropic"),
        ("REDIS_URL", "http://user:secret@host:6379", "REDIS_URL is a http URL; use one of redis://"),
    ],
)
def test_a_setting_that_names_something_missing_is_a_check_error_saying_which(
    setting: str, value: object, said: str
) -> None:
    message = check_errors({setting: value})
    assert "agentstream.E003" in message and said in message
    assert "secret" not in message  # a URL's password is never repeated
    assert message.count("agentstream.E003") == 1


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("QUOTA_HOOK", "tests.demo.test_checks.allow"),
        ("MODEL_PROVIDER", "fake"),
        ("REDIS_URL", "redis+cluster://10.0.0.1:6379,10.0.0.2:6379"),
        ("REDIS_URL", "unix:///run/redis.sock"),
    ],
)
def test_settings_that_name_what_exists_pass_the_check(setting: str, value: object) -> None:
    with override_settings(AGENTSTREAM={setting: value}):
        call_command("check")
