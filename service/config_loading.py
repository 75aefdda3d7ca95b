"""Reading the configuration at start: ``load_settings``, and the one line per
problem it reports (``ConfigError.problems``) when the configuration is bad.

pydantic skips model validators once a field is bad, so the problems those
validators would report (the webhook pair, the single-instance variables)
are looked for here too, and every problem is reported at once.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.config import (
    ENV_PREFIX,
    WEBHOOK_PAIR_PROBLEM,
    ConfigError,
    Settings,
    normalize_database_url,
)
from service.instances import DEFAULT

log = logging.getLogger("service.config")  # pinned: operators filter on it


class _WebhookPair(BaseSettings):
    """The two webhook variables as given, for the pairing check when other
    values are bad (pydantic skips model validators then)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    webhook_url: str | None = None
    webhook_secret: str | None = None


class _InstanceVars(BaseSettings):
    """The single-instance variables as given, for reporting them missing when
    other values are bad too (pydantic skips model validators then)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    workfront_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    instances_file: str | None = None


def _missing_instance_vars(overrides: dict[str, Any]) -> list[str]:
    given = _InstanceVars()
    if (overrides.get("instances_file") or given.instances_file) is not None:
        return []
    return [
        f"{ENV_PREFIX}{name.upper()}: required but not set"
        for name in ("workfront_url", "client_id", "client_secret")
        if overrides.get(name, getattr(given, name)) is None
    ]


def _webhook_pair_broken(overrides: dict[str, Any]) -> bool:
    given = _WebhookPair()
    url = overrides.get("webhook_url", given.webhook_url) or None
    secret = overrides.get("webhook_secret", given.webhook_secret) or None
    return (url is None) != (secret is None)


def _problem_line(error: Any) -> str:
    loc = error.get("loc") or ()
    field = str(loc[0]) if loc else ""
    variable = f"{ENV_PREFIX}{field.upper()}" if field else "configuration"
    if error.get("type") == "missing":
        return f"{variable}: required but not set"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if not field:
        return message
    return f"{variable}: {message}"


def load_settings(*, require_database: bool = False, **overrides: Any) -> Settings:
    """Settings from the environment and .env; ConfigError holds one line per problem."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = [line for error in exc.errors() for line in _problem_line(error).split("\n")]
        problems += [p for p in _missing_instance_vars(overrides) if p not in problems]
        if WEBHOOK_PAIR_PROBLEM not in problems and _webhook_pair_broken(overrides):
            problems.append(WEBHOOK_PAIR_PROBLEM)
        if require_database and not _database_url_given(overrides):
            problems.append(f"{ENV_PREFIX}DATABASE_URL: required but not set")
        raise ConfigError(sorted(problems)) from None
    if require_database:
        require_database_url(settings)
    for warning in (*settings.weak_secrets(), *settings.risky_switches()):
        log.warning("%s", warning)
    default = settings.instances.get(DEFAULT)
    if default is not None and default.expected_domain_lane() is None:
        log.warning(
            "BROKER_WORKFRONT_DOMAIN/BROKER_WORKFRONT_LANE not set and not derivable from "
            "the instance host: the callback's domain/lane check is off"
        )
    return settings


def _database_url_given(overrides: dict[str, Any]) -> bool:
    """Whether a database URL is set anywhere, for reporting it with the other problems."""
    if overrides.get("database_url"):
        return True
    try:
        return DatabaseSettings().database_url is not None
    except ValidationError as exc:
        # Present but malformed is reported by Settings itself.
        return any(error.get("type") != "missing" for error in exc.errors())


def require_database_url(settings: Settings) -> str:
    if settings.database_url is None:
        raise ConfigError([f"{ENV_PREFIX}DATABASE_URL: required but not set"])
    return settings.database_url


class DatabaseSettings(BaseSettings):
    """Just the database, for commands that need nothing else (migrate, clients)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    database_url: str

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)


def load_database_url() -> str:
    try:
        return DatabaseSettings().database_url
    except ValidationError as exc:
        raise ConfigError([_problem_line(error) for error in exc.errors()]) from None
