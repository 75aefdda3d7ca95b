"""Configuration (service.config): BROKER_* variables and .env, one clear line
per problem, no secret echoed. No database, no process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from service.config import ConfigError, Settings, normalize_database_url
from service.config_loading import load_database_url, load_settings, require_database_url
from tests.support.config_values import (
    ADMIN_BLANK,
    ADMIN_SHORT,
    BAD_KEY_MATERIAL,
    CLIENT_SECRET,
    DB_PASSWORD,
    REQUIRED,
    SECRETS,
    SHORT_KEY_MATERIAL,
    WEBHOOK_SECRET,
    assert_no_secret,
    good_values,
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No BROKER_* variable and no .env: each test sets exactly what it means."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("BROKER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _set(env: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        env.setenv(name, value)


def _problems(env: pytest.MonkeyPatch, values: dict[str, str]) -> list[str]:
    _set(env, values)
    with pytest.raises(ConfigError) as info:
        load_settings()
    problems = info.value.problems
    assert str(info.value) == "\n".join(problems)
    assert all(problem and "\n" not in problem for problem in problems)
    return problems


# Missing and malformed values --------------------------------------------------------------


def test_good_minimal_configuration_loads_with_contract_defaults(env: pytest.MonkeyPatch) -> None:
    _set(env, good_values())
    settings = load_settings()
    assert settings.database_url is None
    assert settings.client_secret is not None
    assert settings.client_secret.get_secret_value() == CLIENT_SECRET
    assert CLIENT_SECRET not in repr(settings)
    assert settings.token_auth == "basic_json"
    assert settings.workfront_api_version == "v21.0"
    assert settings.admin_api_key is None
    assert settings.session_ttl_seconds == 1800
    assert settings.refresh_ahead_seconds == 300
    assert settings.require_state is True
    assert settings.pkce is False
    assert settings.webhook_url is None
    assert settings.return_url_prefixes == []
    assert settings.connect_link_ttl_seconds == 1800
    assert settings.connect_page_enabled is True
    assert settings.status_page_enabled is False


def test_every_missing_required_variable_gets_exactly_one_line(env: pytest.MonkeyPatch) -> None:
    problems = _problems(env, {})
    assert len(problems) == len(REQUIRED)
    for variable, problem in zip(REQUIRED, sorted(problems, key=_order), strict=True):
        assert problem.startswith(f"{variable}:"), problem
        assert "required" in problem


def _order(problem: str) -> int:
    return next(i for i, name in enumerate(REQUIRED) if problem.startswith(f"{name}:"))


@pytest.mark.parametrize("missing", REQUIRED)
def test_one_missing_variable_is_named(env: pytest.MonkeyPatch, missing: str) -> None:
    values = good_values()
    del values[missing]
    problems = _problems(env, values)
    assert problems == [f"{missing}: required but not set"]
    assert_no_secret("\n".join(problems), CLIENT_SECRET, values.get("BROKER_ENCRYPTION_KEYS", "?"))


BAD_VALUES = [
    ("BROKER_PUBLIC_URL", "https://broker.example.com/base"),
    ("BROKER_PUBLIC_URL", "broker.example.com"),
    ("BROKER_WORKFRONT_URL", "not a url"),
    ("BROKER_WORKFRONT_URL", "ftp://acme.my.workfront.com"),
    ("BROKER_REDIRECT_URI", "/oauth/callback"),
    ("BROKER_TOKEN_AUTH", "other"),
    ("BROKER_WORKFRONT_API_VERSION", "21.0"),
    ("BROKER_WORKFRONT_API_VERSION", "v21"),
    ("BROKER_ENCRYPTION_KEYS", f"k1:{BAD_KEY_MATERIAL}"),
    ("BROKER_ENCRYPTION_KEYS", f"k1:{SHORT_KEY_MATERIAL}"),
    ("BROKER_ENCRYPTION_KEYS", ""),
    ("BROKER_ADMIN_API_KEY", ADMIN_BLANK),
    ("BROKER_SESSION_TTL_SECONDS", "-5"),
    ("BROKER_SESSION_TTL_SECONDS", "0"),
    ("BROKER_SESSION_TTL_SECONDS", "soon"),
    ("BROKER_REFRESH_AHEAD_SECONDS", "-1"),
    ("BROKER_REQUIRE_STATE", "maybe"),
    ("BROKER_PKCE", "perhaps"),
    ("BROKER_DATABASE_URL", f"mysql://broker:{DB_PASSWORD}@db/broker"),
    ("BROKER_WEBHOOK_URL", "not-a-url"),
    ("BROKER_ALLOWED_RETURN_URLS", "https://app.example.com/,javascript:alert(1)"),
    ("BROKER_CONNECT_LINK_TTL_SECONDS", "10"),
    ("BROKER_CONNECT_LINK_TTL_SECONDS", "a week"),
    ("BROKER_CONNECT_PAGE_ENABLED", "sometimes"),
    ("BROKER_STATUS_PAGE_ENABLED", "please"),
    ("BROKER_CLIENT_ID", ""),
    ("BROKER_EVENT_RETENTION_DAYS", "-1"),
    ("BROKER_EVENT_RETENTION_DAYS", "a month"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_malformed_value_gives_one_line_naming_the_variable(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    values = good_values()
    values[variable] = value
    if variable == "BROKER_WEBHOOK_URL":
        values["BROKER_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    problems = _problems(env, values)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{variable}: "), problems
    assert_no_secret(problems[0], *SECRETS, SHORT_KEY_MATERIAL)


def test_all_malformed_values_at_once_give_one_line_each(env: pytest.MonkeyPatch) -> None:
    values = {
        **good_values(),
        "BROKER_WORKFRONT_URL": "not a url",
        "BROKER_TOKEN_AUTH": "other",
        "BROKER_WORKFRONT_API_VERSION": "latest",
        "BROKER_ENCRYPTION_KEYS": f"k1:{BAD_KEY_MATERIAL}",
        "BROKER_ADMIN_API_KEY": ADMIN_BLANK,
        "BROKER_SESSION_TTL_SECONDS": "-5",
        "BROKER_DATABASE_URL": f"mysql://broker:{DB_PASSWORD}@db/broker",
    }
    problems = _problems(env, values)
    named = sorted(problem.partition(":")[0] for problem in problems)
    assert named == sorted(
        [
            "BROKER_WORKFRONT_URL",
            "BROKER_TOKEN_AUTH",
            "BROKER_WORKFRONT_API_VERSION",
            "BROKER_ENCRYPTION_KEYS",
            "BROKER_ADMIN_API_KEY",
            "BROKER_SESSION_TTL_SECONDS",
            "BROKER_DATABASE_URL",
        ]
    )
    assert_no_secret("\n".join(problems), *SECRETS)


@pytest.mark.parametrize(
    "given",
    [
        {"BROKER_WEBHOOK_URL": "https://hooks.example.com/in"},
        {"BROKER_WEBHOOK_SECRET": WEBHOOK_SECRET},
    ],
    ids=["url-without-secret", "secret-without-url"],
)
def test_webhook_url_and_secret_go_together(env: pytest.MonkeyPatch, given: dict[str, str]) -> None:
    problems = _problems(env, {**good_values(), **given})
    assert len(problems) == 1
    assert "BROKER_WEBHOOK_URL" in problems[0]
    assert "BROKER_WEBHOOK_SECRET" in problems[0]
    assert_no_secret(problems[0], WEBHOOK_SECRET)


def test_webhook_pairing_is_reported_with_the_other_problems(env: pytest.MonkeyPatch) -> None:
    values = {
        **good_values(),
        "BROKER_TOKEN_AUTH": "other",
        "BROKER_WEBHOOK_URL": "https://h.example/in",
    }
    problems = _problems(env, values)
    assert len(problems) == 2, problems
    assert problems[0].startswith("BROKER_TOKEN_AUTH: ")
    assert "BROKER_WEBHOOK_URL and BROKER_WEBHOOK_SECRET" in problems[1]


def test_webhook_url_with_secret_loads(env: pytest.MonkeyPatch) -> None:
    _set(env, {**good_values(), "BROKER_WEBHOOK_URL": "https://hooks.example.com/in"})
    env.setenv("BROKER_WEBHOOK_SECRET", WEBHOOK_SECRET)
    settings = load_settings()
    assert settings.webhook_url == "https://hooks.example.com/in"
    assert settings.webhook_secret is not None
    assert WEBHOOK_SECRET not in repr(settings)


@pytest.mark.parametrize("secret", ["whsec_", "whsec-SENTINEL-0b9e", "===="])
def test_malformed_webhook_secret_is_refused_without_echo(
    env: pytest.MonkeyPatch, secret: str
) -> None:
    values = {**good_values(), "BROKER_WEBHOOK_URL": "https://hooks.example.com/in"}
    problems = _problems(env, {**values, "BROKER_WEBHOOK_SECRET": secret})
    assert [problem.partition(":")[0] for problem in problems] == ["BROKER_WEBHOOK_SECRET"]
    material = secret.removeprefix("whsec_")
    if material:
        assert_no_secret(problems[0], material)


@pytest.mark.parametrize(
    ("variable", "value", "warning"),
    [
        ("BROKER_ADMIN_API_KEY", ADMIN_SHORT, "BROKER_ADMIN_API_KEY is shorter than 32"),
        ("BROKER_WEBHOOK_SECRET", "whsec_c2hvcnQtU0VOVElORUw=", "BROKER_WEBHOOK_SECRET holds"),
        ("BROKER_WEBHOOK_SECRET", "plain-SENTINEL-words", "BROKER_WEBHOOK_SECRET holds"),
    ],
)
def test_weak_secret_starts_with_a_warning_without_echo(
    env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    warning: str,
) -> None:
    """The contract sets no strength for these: a weak one is the operator's
    call, so start-up warns (without the value) rather than refusing it."""
    values = {**good_values(), "BROKER_WEBHOOK_URL": "https://hooks.example.com/in"}
    values.setdefault("BROKER_WEBHOOK_SECRET", WEBHOOK_SECRET)
    _set(env, {**values, variable: value})
    with caplog.at_level(logging.WARNING, logger="service.config"):
        load_settings()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert warning in text
    assert_no_secret(text, value, value.removeprefix("whsec_"))


@pytest.mark.parametrize(("value", "warns"), [("false", True), ("true", False)])
def test_turning_the_state_check_off_warns_loudly(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str, warns: bool
) -> None:
    _set(env, {**good_values(), "BROKER_REQUIRE_STATE": value})
    with caplog.at_level(logging.WARNING, logger="service.config"):
        load_settings()
    said = [r.getMessage() for r in caplog.records if "BROKER_REQUIRE_STATE" in r.getMessage()]
    assert bool(said) is warns
    assert all("CSRF" in line for line in said)


def test_the_retired_debounce_variable_says_what_replaced_it(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _set(env, {**good_values(), "BROKER_FORCE_REFRESH_DEBOUNCE_SECONDS": "5"})
    with caplog.at_level(logging.WARNING, logger="service.config"):
        settings = load_settings()
    said = [r.getMessage() for r in caplog.records if "DEBOUNCE" in r.getMessage()]
    assert len(said) == 1
    assert "BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS" in said[0]
    assert settings.force_refresh_min_interval_seconds == 1


def test_strong_secrets_start_without_a_warning(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    values = {**good_values(), "BROKER_WEBHOOK_URL": "https://hooks.example.com/in"}
    _set(env, {**values, "BROKER_WEBHOOK_SECRET": WEBHOOK_SECRET, "BROKER_ADMIN_API_KEY": "a" * 32})
    with caplog.at_level(logging.WARNING, logger="service.config"):
        load_settings()
    assert not [
        r for r in caplog.records if "BROKER_ADMIN" in r.getMessage() or "WEBHOOK" in r.getMessage()
    ]


def test_empty_client_secret_is_refused(env: pytest.MonkeyPatch) -> None:
    problems = _problems(env, {**good_values(), "BROKER_CLIENT_SECRET": ""})
    assert [problem.partition(":")[0] for problem in problems] == ["BROKER_CLIENT_SECRET"]


# Database URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/broker", "postgresql+asyncpg://u:p@db:5432/broker"),
        ("postgres://u@db/broker", "postgresql+asyncpg://u@db/broker"),
        ("postgresql+asyncpg://u@db/broker", "postgresql+asyncpg://u@db/broker"),
        (
            "postgresql://postgres@/broker?host=/tmp/socket-dir",
            "postgresql+asyncpg://postgres@/broker?host=/tmp/socket-dir",
        ),
    ],
)
def test_database_url_is_normalized_to_asyncpg(
    env: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    assert normalize_database_url(given) == expected
    _set(env, {**good_values(), "BROKER_DATABASE_URL": given})
    settings = load_settings()
    assert settings.database_url == expected
    assert require_database_url(settings) == expected
    assert load_database_url() == expected


def test_missing_database_url_is_named(env: pytest.MonkeyPatch) -> None:
    _set(env, good_values())
    with pytest.raises(ConfigError) as info:
        require_database_url(load_settings())
    assert info.value.problems == ["BROKER_DATABASE_URL: required but not set"]
    with pytest.raises(ConfigError) as only_db:
        load_database_url()
    assert only_db.value.problems == ["BROKER_DATABASE_URL: required but not set"]


# Domain and lane ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://acme.preview.workfront.com", ("acme", "preview")),
        ("https://acme.my.workfront.adobe.com", ("acme", "my")),
        ("https://acme.my.workfront.com/", ("acme", "my")),
        ("https://ACME.My.Workfront.com", ("acme", "my")),
        ("https://acme.sb01.workfront.com:443", ("acme", "sb01")),
        ("http://127.0.0.1:8001", None),
        ("https://acme.my.workfront.com.evil.example", None),
        ("https://workfront.com", None),
    ],
)
def test_domain_and_lane_are_derived_from_the_host(
    env: pytest.MonkeyPatch, url: str, expected: tuple[str, str] | None
) -> None:
    _set(env, {**good_values(), "BROKER_WORKFRONT_URL": url})
    settings = load_settings()
    assert settings.workfront_url == url.rstrip("/")
    assert settings.instances["default"].expected_domain_lane() == expected


def test_check_off_warns_at_start(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.config")
    _set(env, {**good_values(), "BROKER_WORKFRONT_URL": "http://127.0.0.1:8001"})
    assert load_settings().instances["default"].expected_domain_lane() is None
    assert any(
        "BROKER_WORKFRONT_DOMAIN" in record.getMessage() and record.levelno == logging.WARNING
        for record in caplog.records
    )


def test_explicit_domain_and_lane_win(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.config")
    _set(
        env,
        {
            **good_values(),
            "BROKER_WORKFRONT_URL": "http://127.0.0.1:8001",
            "BROKER_WORKFRONT_DOMAIN": "emulator",
            "BROKER_WORKFRONT_LANE": "my",
        },
    )
    assert load_settings().instances["default"].expected_domain_lane() == ("emulator", "my")
    assert not caplog.records
    env.setenv("BROKER_WORKFRONT_URL", "https://acme.my.workfront.com")
    env.delenv("BROKER_WORKFRONT_LANE")
    assert load_settings().instances["default"].expected_domain_lane() == ("emulator", "my")


# .env ---------------------------------------------------------------------------------------


def _write_env(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))


def test_dotenv_file_is_read(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {
        **good_values(),
        "BROKER_DATABASE_URL": "postgresql://broker@db/broker",
        "BROKER_TOKEN_AUTH": "form",
        "BROKER_SESSION_TTL_SECONDS": "900",
        "BROKER_ALLOWED_RETURN_URLS": "https://app.example.com/, https://other.example.com/x",
        "UNRELATED_VARIABLE": "ignored",
    }
    _write_env(tmp_path / ".env", values)
    settings = load_settings()
    assert settings.workfront_url == "https://acme.my.workfront.com"
    assert settings.client_id == "client-id"
    assert settings.client_secret is not None
    assert settings.client_secret.get_secret_value() == CLIENT_SECRET
    assert settings.database_url == "postgresql+asyncpg://broker@db/broker"
    assert settings.token_auth == "form"
    assert settings.session_ttl_seconds == 900
    assert settings.return_url_prefixes == [
        "https://app.example.com/",
        "https://other.example.com/x",
    ]
    assert load_database_url() == "postgresql+asyncpg://broker@db/broker"


def test_environment_wins_over_dotenv(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _write_env(tmp_path / ".env", {**good_values(), "BROKER_CLIENT_ID": "from-dotenv"})
    env.setenv("BROKER_CLIENT_ID", "from-environment")
    assert load_settings().client_id == "from-environment"


def test_bad_dotenv_value_is_named_without_its_secret(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _write_env(
        tmp_path / ".env",
        {
            **good_values(),
            "BROKER_ENCRYPTION_KEYS": f"k1:{BAD_KEY_MATERIAL}",
            "BROKER_SESSION_TTL_SECONDS": "-5",
        },
    )
    with pytest.raises(ConfigError) as info:
        load_settings()
    named = sorted(problem.partition(":")[0] for problem in info.value.problems)
    assert named == ["BROKER_ENCRYPTION_KEYS", "BROKER_SESSION_TTL_SECONDS"]
    assert_no_secret(str(info.value), *SECRETS)


def test_settings_constructor_ignores_dotenv_when_told(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _write_env(tmp_path / ".env", {"BROKER_CLIENT_ID": "from-dotenv"})
    _set(env, {name: value for name, value in good_values().items() if name != "BROKER_CLIENT_ID"})
    assert load_settings().client_id == "from-dotenv"
    assert Settings(_env_file=None, client_id="explicit").client_id == "explicit"


# `python -m service serve` with bad configuration ----------------------------------------
