"""The Workfront instances one broker serves, each with its own OAuth2 app.

The single-instance variables (``BROKER_WORKFRONT_URL``, ``BROKER_CLIENT_ID``
...) describe the instance ``default``; ``BROKER_INSTANCES_FILE`` (TOML, one
``[instances.NAME]`` table each) adds more. Both may be used together as long
as the names do not clash. Every problem of the file is one line naming the
instance and the key; a secret's value is never printed.

``domain`` and ``lane`` (what the callback must carry) are derived from a
``<domain>.<lane>.workfront.com`` or ``<domain>.<lane>.workfront.adobe.com``
host and must be given for any other host (an emulator, a proxy).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

DEFAULT = "default"
NAME = re.compile(r"^[a-z0-9-]{1,32}$")
WORKFRONT_HOST = re.compile(
    r"^(?P<domain>[a-z0-9-]+)\.(?P<lane>[a-z0-9-]+)\.workfront(\.adobe)?\.com$"
)
API_VERSION = re.compile(r"^v\d+\.\d+$")
TokenAuth = Literal["basic_json", "form"]
_KEYS = frozenset(
    {
        "workfront_url",
        "client_id",
        "client_secret",
        "client_secret_file",
        "token_auth",
        "domain",
        "lane",
        "api_version",
        "pkce",
        "redirect_uri",
    }
)


@dataclass(frozen=True)
class Instance:
    name: str
    workfront_url: str  # no trailing slash
    client_id: str
    client_secret: SecretStr = field(repr=False)
    redirect_uri: str
    token_auth: TokenAuth = "basic_json"
    api_version: str = "v21.0"
    pkce: bool = False
    domain: str | None = None
    lane: str | None = None

    @property
    def host(self) -> str:
        return (urlsplit(self.workfront_url).hostname or "").lower()

    def expected_domain_lane(self) -> tuple[str, str] | None:
        """The (domain, lane) a callback must carry, or None when the check is off."""
        if self.domain and self.lane:
            return self.domain, self.lane
        match = WORKFRONT_HOST.match(self.host)
        if match:
            return self.domain or match["domain"], self.lane or match["lane"]
        return None


class InstancesError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Instances(Mapping[str, Instance]):
    """The configured instances by name, in the order they were given."""

    def __init__(self, instances: list[Instance]) -> None:
        self._by_name = {instance.name: instance for instance in instances}

    def __getitem__(self, name: str) -> Instance:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def only(self) -> Instance | None:
        """The instance, when exactly one is configured."""
        return next(iter(self._by_name.values())) if len(self._by_name) == 1 else None


def _http_url(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return value.rstrip("/")


def instance_from_table(
    name: str, table: Mapping[str, Any], *, redirect_uri: str | None, base: Path
) -> tuple[Instance | None, list[str]]:
    """One ``[instances.NAME]`` table: the instance, or the problems with it."""
    where = f"BROKER_INSTANCES_FILE: instance {name!r}"
    problems = [f"{where}: unknown key {key!r}" for key in sorted(set(table) - _KEYS)]
    if not NAME.match(name):
        problems.append(f"{where}: the name must be 1-32 of a-z, 0-9 and -")
    url = _http_url(table.get("workfront_url"))
    if url is None:
        problems.append(f"{where}: workfront_url: required, an absolute http(s) URL")
    client_id = table.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip():
        problems.append(f"{where}: client_id: required, a non-empty string")
    secret: str | None = None
    if "client_secret" in table and "client_secret_file" in table:
        problems.append(f"{where}: give client_secret or client_secret_file, not both")
    elif "client_secret" in table:
        given = table["client_secret"]
        secret = given if isinstance(given, str) and given.strip() else None
        if secret is None:
            problems.append(f"{where}: client_secret: must be a non-empty string")
    elif "client_secret_file" in table:
        path = table["client_secret_file"]
        try:
            secret = (
                (base / str(path)).read_text().rstrip("\r\n") if isinstance(path, str) else None
            )
        except OSError as exc:
            problems.append(f"{where}: client_secret_file: cannot be read ({exc.strerror})")
        else:
            if not secret or not secret.strip():
                problems.append(f"{where}: client_secret_file: holds no secret")
                secret = None
    else:
        problems.append(f"{where}: client_secret or client_secret_file: required")
    token_auth = table.get("token_auth", "basic_json")
    if token_auth not in ("basic_json", "form"):
        problems.append(f"{where}: token_auth: must be basic_json or form")
    api_version = table.get("api_version", "v21.0")
    if not isinstance(api_version, str) or not API_VERSION.match(api_version):
        problems.append(f"{where}: api_version: must look like v21.0")
    pkce = table.get("pkce", False)
    if not isinstance(pkce, bool):
        problems.append(f"{where}: pkce: must be true or false")
    redirect = table.get("redirect_uri", redirect_uri)
    if _http_url(redirect) is None:
        problems.append(f"{where}: redirect_uri: required (or BROKER_REDIRECT_URI), a URL")
    domain, lane = table.get("domain"), table.get("lane")
    for key, value in (("domain", domain), ("lane", lane)):
        if value is not None and (not isinstance(value, str) or not NAME.match(value)):
            problems.append(f"{where}: {key}: must be 1-32 of a-z, 0-9 and -")
    if url is not None and not (domain and lane):
        host = (urlsplit(url).hostname or "").lower()
        if not WORKFRONT_HOST.match(host):
            problems.append(
                f"{where}: domain and lane: required for a host that is not"
                " <domain>.<lane>.workfront[.adobe].com"
            )
    if problems or url is None or not isinstance(client_id, str) or secret is None:
        return None, problems
    if not isinstance(redirect, str):
        return None, problems
    return (
        Instance(
            name=name,
            workfront_url=url,
            client_id=client_id,
            client_secret=SecretStr(secret),
            redirect_uri=redirect,
            token_auth=token_auth,
            api_version=api_version,
            pkce=pkce,
            domain=domain,
            lane=lane,
        ),
        [],
    )


def read_instances_file(path: str, *, redirect_uri: str | None) -> tuple[list[Instance], list[str]]:
    """The instances a TOML file names, and the problems with it (one line each)."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except OSError as exc:
        return [], [f"BROKER_INSTANCES_FILE: cannot be read ({exc.strerror})"]
    except tomllib.TOMLDecodeError as exc:
        return [], [f"BROKER_INSTANCES_FILE: not valid TOML ({exc})"]
    tables = data.get("instances")
    problems = [
        f"BROKER_INSTANCES_FILE: unknown table {key!r}" for key in data if key != "instances"
    ]
    if not isinstance(tables, dict) or not tables:
        return [], [*problems, "BROKER_INSTANCES_FILE: no [instances.NAME] table"]
    instances: list[Instance] = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            problems.append(f"BROKER_INSTANCES_FILE: instance {name!r}: must be a table")
            continue
        instance, found = instance_from_table(
            name, table, redirect_uri=redirect_uri, base=file.parent
        )
        problems += found
        if instance is not None:
            instances.append(instance)
    return instances, problems
