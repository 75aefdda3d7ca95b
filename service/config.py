"""Configuration: the contract's ``BROKER_*`` variables, also read from ``.env``.

Bad configuration must stop start-up with one line per problem, naming the
variable and never echoing a secret, so ``load_settings``
(service.config_loading) turns pydantic's errors into such lines
(``ConfigError.problems``). The Workfront instances are built here, once, from
the single-instance variables and BROKER_INSTANCES_FILE (service.instances).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.crypto import KeyringError, parse_keyring
from service.instances import DEFAULT, Instance, Instances, read_instances_file

ENV_PREFIX = "BROKER_"
_API_VERSION = re.compile(r"^v\d+\.\d+$")


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def normalize_database_url(url: str) -> str:
    """Accept ``postgresql://`` (and ``postgres://``) as well as the asyncpg form."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("must start with postgresql:// or postgresql+asyncpg://")


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,
    )

    _built_instances: Instances = PrivateAttr(default_factory=lambda: Instances([]))

    database_url: str | None = None
    # The instance "default" (service.instances); not needed when
    # BROKER_INSTANCES_FILE names the instances.
    workfront_url: str | None = None
    workfront_domain: str | None = None
    workfront_lane: str | None = None
    client_id: str | None = Field(default=None, min_length=1)
    client_secret: SecretStr | None = None
    instances_file: str | None = None
    redirect_uri: str
    # The broker's public origin; every absolute URL it emits is built from it.
    public_url: str | None = None
    token_auth: Literal["basic_json", "form"] = "basic_json"
    workfront_api_version: str = "v21.0"
    encryption_keys: SecretStr
    admin_api_key: SecretStr | None = None
    session_ttl_seconds: int = Field(default=1800, gt=0)
    refresh_ahead_seconds: int = Field(default=300, ge=0)
    require_state: bool = True
    pkce: bool = False
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    allowed_return_urls: str = ""
    # How long a connect link made by POST /v1/connect-sessions can be opened.
    # Short, because whoever holds the link can attach a Workfront account to
    # the app's external_ref.
    connect_link_ttl_seconds: int = Field(default=1800, ge=60, le=86_400)
    # The plain /connect page (and a bare /oauth/authorize) lets anyone who can
    # reach the broker connect an account with no external_ref. Operators who
    # only onboard users through their apps' connect links turn it off.
    connect_page_enabled: bool = True
    # GET /status: connection counts and the soonest expiries for operators,
    # behind an admin key. Off unless asked for.
    status_page_enabled: bool = False
    # Not in the contract's table but needed by an operator: how long one
    # upstream call may take, and how long a refresh may wait for the row lock.
    upstream_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # A refresh's call to the token endpoint may take longer: given up after
    # Workfront completed it, the rotated refresh token is lost and the user
    # must sign in again, which is worse than waiting. The row lock (and the
    # refresher's lease) cover the wait; callers bound theirs with their own
    # timeout (the refresh carries on without them).
    refresh_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    lock_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # On SIGTERM: how long requests in flight may take before they are
    # cancelled. Refreshes that already presented a refresh token are then
    # given as long as their upstream call may take (refresh_call_ceiling_seconds)
    # and 5 s more to commit it.
    shutdown_timeout_seconds: int = Field(default=10, ge=0, le=300)
    # A connection whose request headers are not in this long after its first
    # byte (or after connecting) is closed: silent and slowloris sockets.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Client connections per process; 0: what the open-files limit leaves.
    max_connections: int = Field(default=0, ge=0, le=1_000_000)
    # JSON lines for log collectors; `dev` always logs readable text.
    log_format: Literal["json", "text"] = "json"
    # A forced refresh without If-Match this soon after the last refresh gets
    # that fresh session instead of calling Workfront again: callers that saw
    # the old session rejected at about the same time share one refresh even
    # when their requests are spread out a little (or reach different
    # replicas), and a client forcing in a loop costs one refresh per
    # connection per interval. A caller whose brand-new session was rejected
    # sends If-Match (the session's ETag), which is never held back.
    force_refresh_min_interval_seconds: float = Field(default=1.0, ge=0, le=3600)
    # Retired (BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS replaced it): read
    # only to tell an operator who still sets it.
    force_refresh_debounce_seconds: float | None = None
    # Connections this process keeps open to PostgreSQL. Requests beyond it
    # wait for a free one (up to 10 s) rather than opening and closing extra
    # connections, which under load costs more than the query.
    db_pool_size: int = Field(default=20, ge=1, le=500)
    # Refreshes of different connections on their way to Workfront at once,
    # per process. None holds a database connection while Workfront answers
    # (service.tokens.lease), so this bounds only the connections to Workfront.
    refresh_concurrency: int = Field(default=100, ge=1, le=10_000)
    # The proxy (/v1/connections/{id}/workfront/...), per instance and per
    # process: Workfront limits each customer's concurrent API requests (no
    # number published) and answers 429 past it. Calls beyond this wait, at
    # most proxy_queue of them for at most proxy_queue_timeout_seconds;
    # beyond that the caller is told to come back (429 / 503, Retry-After).
    proxy_concurrency: int = Field(default=10, ge=1, le=1000)
    proxy_queue: int = Field(default=100, ge=0, le=100_000)
    proxy_queue_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # How long the proxy waits for Workfront's answer to start, and then for
    # each further part of it (an export may take a while to begin).
    proxy_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    # In-memory caches of the hot path (API key -> client, connection -> its
    # decrypted session). Their lifetime bounds how long another replica may
    # go on honouring a revoked key or a deleted connection: the contract says
    # one second, and an entry is made after its row was read, hence < 1 s.
    # 0 turns them off.
    hot_cache_seconds: float = Field(default=0.9, ge=0, lt=1.0)
    # Per cache, least recently used dropped first: bounds memory whatever
    # the number of keys or connections in use.
    hot_cache_max_entries: int = Field(default=10_000, ge=1, le=1_000_000)
    # The proactive refresher (one per serve process; replicas share the work).
    refresher_enabled: bool = True
    refresher_poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    refresher_batch_size: int = Field(default=100, ge=1, le=10_000)
    refresher_concurrency: int = Field(default=8, ge=1, le=256)
    # How long a sign-in may take from the broker's redirect to Workfront's
    # callback (the state, signed, carries its start): long enough for a slow
    # single sign-on with MFA, short enough that a leaked state goes stale.
    signin_ttl_seconds: int = Field(default=600, ge=1, le=3600)
    # Refresh policy. Connections read or (re)connected within the keep-warm
    # window are refreshed ahead of expiry, so readers never wait; idle ones
    # only as often as their grant needs to stay alive (Workfront apps may set
    # an inactivity expiry on refresh tokens), and on demand when read again
    # (that first read pays one refresh). A huge keep-warm keeps all warm.
    keep_warm_seconds: float = Field(default=7 * 86_400, ge=0, le=100 * 365 * 86_400)
    keep_alive_seconds: float = Field(default=86_400, ge=60, le=365 * 86_400)
    # How often each process writes down which connections it served (one
    # statement for all of them; a connection at most once per
    # usage_granularity_seconds, see service.tokens.usage).
    usage_flush_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Spread of the refresh schedule: up to this fraction of
    # BROKER_REFRESH_AHEAD_SECONDS earlier, so connections made together do
    # not all come due in the same second.
    refresh_jitter_fraction: float = Field(default=0.2, ge=0, le=1)
    # Backoff after a transient failure: base * 2**failures, capped, jittered.
    retry_base_seconds: float = Field(default=5.0, gt=0, le=3600)
    retry_max_seconds: float = Field(default=300.0, gt=0, le=86_400)
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=3600)
    # Audit events older than this are deleted (service.workers.retention); 0 keeps
    # them forever.
    event_retention_days: int = Field(default=30, ge=0, le=36_500)
    webhook_max_attempts: int = Field(default=30, ge=1, le=1000)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        return None if value is None else normalize_database_url(value)

    @field_validator("workfront_url")
    @classmethod
    def _workfront_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value).rstrip("/")

    @field_validator("redirect_uri")
    @classmethod
    def _redirect_uri(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(_http_url(value))
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be an origin such as https://broker.example.com (no path)")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("workfront_api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not _API_VERSION.match(value):
            raise ValueError("must look like v21.0")
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _encryption_keys(cls, value: SecretStr) -> SecretStr:
        try:
            parse_keyring(value.get_secret_value())
        except KeyringError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("client_secret")
    @classmethod
    def _client_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    # A short admin key or webhook secret is weak, not unusable: start-up warns
    # (see weak_secrets) rather than refusing a value the contract allows.

    @field_validator("admin_api_key")
    @classmethod
    def _admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not webhook_key(value):
            raise ValueError(
                "must be a Standard Webhooks secret: whsec_ followed by base64 of random bytes"
            )
        return value

    @field_validator("allowed_return_urls")
    @classmethod
    def _return_urls(cls, value: str) -> str:
        for prefix in _split_csv(value):
            _http_url(prefix)
        return value

    @model_validator(mode="after")
    def _webhook_pair(self) -> Settings:
        if (self.webhook_url is None) != (self.webhook_secret is None):
            raise ValueError(WEBHOOK_PAIR_PROBLEM)
        return self

    @model_validator(mode="after")
    def _instances(self) -> Settings:
        # Built (and the file read) once, here: a bad file stops start-up.
        problems = self._instance_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _instance_problems(self) -> list[str]:
        given = {
            "BROKER_WORKFRONT_URL": self.workfront_url,
            "BROKER_CLIENT_ID": self.client_id,
            "BROKER_CLIENT_SECRET": self.client_secret,
        }
        instances: list[Instance] = []
        problems: list[str] = []
        if any(value is not None for value in given.values()) or self.instances_file is None:
            problems += [
                f"{name}: required but not set"
                + ("" if self.instances_file is None else f" (with {'/'.join(given)})")
                for name, value in given.items()
                if value is None
            ]
        if (
            not problems
            and self.workfront_url is not None
            and self.client_id is not None
            and self.client_secret is not None
        ):
            instances.append(
                Instance(
                    name=DEFAULT,
                    workfront_url=self.workfront_url,
                    client_id=self.client_id,
                    client_secret=self.client_secret,
                    redirect_uri=self.redirect_uri,
                    token_auth=self.token_auth,
                    api_version=self.workfront_api_version,
                    pkce=self.pkce,
                    domain=self.workfront_domain,
                    lane=self.workfront_lane,
                )
            )
        if self.instances_file is not None:
            found, more = read_instances_file(self.instances_file, redirect_uri=self.redirect_uri)
            problems += more
            for instance in found:
                if any(known.name == instance.name for known in instances):
                    problems.append(
                        f"BROKER_INSTANCES_FILE: instance {instance.name!r}: the name is taken"
                        " (the BROKER_WORKFRONT_URL variables describe 'default')"
                    )
                else:
                    instances.append(instance)
        self._built_instances = Instances(instances)
        return problems

    # Derived values -------------------------------------------------------

    def weak_secrets(self) -> list[str]:
        """Warnings for secrets that work but are easy to guess."""
        weak = []
        if self.admin_api_key is not None and len(self.admin_api_key.get_secret_value()) < 32:
            weak.append(
                "BROKER_ADMIN_API_KEY is shorter than 32 characters: use a long random value"
            )
        if self.webhook_secret is not None and len(webhook_key(self.webhook_secret)) < 24:
            weak.append(
                "BROKER_WEBHOOK_SECRET holds fewer than 24 bytes: use whsec_ followed by"
                " base64 of 24 or more random bytes"
            )
        return weak

    def risky_switches(self) -> list[str]:
        """Warnings for settings that turn a protection off, or are no longer read."""
        risky = []
        if self.force_refresh_debounce_seconds is not None:
            risky.append(
                "BROKER_FORCE_REFRESH_DEBOUNCE_SECONDS is no longer read:"
                " BROKER_FORCE_REFRESH_MIN_INTERVAL_SECONDS replaces it (default 1)"
            )
        if not self.require_state:
            risky.append(
                "BROKER_REQUIRE_STATE=false: callbacks without state are accepted, which"
                " reopens OAuth login CSRF (an attacker's Workfront account can be bound to"
                " a victim's browser or external_ref); set it to true unless your Workfront"
                " cannot send state back"
            )
        return risky

    @property
    def refresh_call_ceiling_seconds(self) -> float:
        """The longest one refresh's call to Workfront can take (connect and
        answer): what shutdown waits for and the refresher's lease outlasts."""
        return max(2 * self.upstream_timeout_seconds, self.refresh_timeout_seconds)

    @property
    def return_url_prefixes(self) -> list[str]:
        return _split_csv(self.allowed_return_urls)

    @property
    def instances(self) -> Instances:
        """The Workfront instances this broker serves (service.instances)."""
        return self._built_instances

    @property
    def public_base_url(self) -> str:
        """The broker's public origin: BROKER_PUBLIC_URL, else the redirect URI's.
        Never the request's Host, which a client chooses."""
        if self.public_url is not None:
            return self.public_url
        parts = urlsplit(self.redirect_uri)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def cookie_secure(self) -> bool:
        return self.redirect_uri.startswith("https://")


def _split_csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


WEBHOOK_PAIR_PROBLEM = "BROKER_WEBHOOK_URL and BROKER_WEBHOOK_SECRET must be set together"


def webhook_key(secret: SecretStr) -> bytes:
    """The HMAC key a Standard Webhooks secret stands for, decoded as the
    reference library decodes it (so a receiver using it with the same string
    verifies our signatures); empty when it stands for none."""
    encoded = secret.get_secret_value().removeprefix("whsec_")
    try:
        return base64.b64decode(encoded + "==")
    except (binascii.Error, ValueError):
        return b""
