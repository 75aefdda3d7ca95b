"""docker-compose.yml, .env.example and the Dockerfile name only what the broker has.

The compose file is read twice: by docker-compose itself (the real parser,
with `.env.example` as the operator's `.env`), and as plain YAML for the checks
that tie it to the code: every command is a real subcommand of
``python -m service`` with real flags, and every variable is a real setting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.__main__ import build_parser
from service.config import ENV_PREFIX, Settings
from tests.support import REPO
from tests.support.processes import env_without_broker

ROOT = REPO
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
BROKER_SERVICES = ("migrate", "broker")
# `NAME=value`, also commented out (`# NAME=value`: listed, default kept).
_ENV_LINE = re.compile(r"^(?P<commented>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=")
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_SUBSTITUTION = re.compile(r"\$\{[^}]*\}")
# ${NAME:-default} / ${NAME-default}: what it becomes when NAME is unset.
_DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-(?P<default>[^}]*)\}")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _env_example() -> dict[str, bool]:
    """Variable name -> whether it is set (True) or only listed commented out."""
    names: dict[str, bool] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            names[match["name"]] = names.get(match["name"], False) or not match["commented"]
    return names


def _setting(variable: str) -> str | None:
    """The Settings field a BROKER_ variable sets, or None."""
    if not variable.startswith(ENV_PREFIX):
        return None
    field = variable.removeprefix(ENV_PREFIX).lower()
    return field if field in Settings.model_fields else None


def _docker_compose_config(
    tmp_path: Path, *args: str, dotenv: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` as an operator runs it: beside a .env made from the
    example (or holding ``dotenv``)."""
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text() if dotenv is None else dotenv)
    # No BROKER_/POSTGRES_ variables of this process: they would override .env.
    env = {k: v for k, v in env_without_broker().items() if not k.startswith("POSTGRES_")}
    docker_compose = shutil.which("docker-compose")
    assert docker_compose is not None, "docker-compose is not installed (.ci/run installs it)"
    return subprocess.run(
        [docker_compose, *args, "config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# A developer's machine may lack docker-compose; CI must not (.ci/run installs
# it), so there a missing one fails instead of skipping.
needs_docker_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None and not os.environ.get("CI"),
    reason="docker-compose is not installed (Debian package docker-compose; .ci/run installs it)",
)


@needs_docker_compose
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    result = _docker_compose_config(tmp_path, "--profile", "emulator")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "migrate", "broker", "emulator"}
    assert services["emulator"]["profiles"] == ["emulator"]

    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pgdata" in config["volumes"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])

    broker = services["broker"]
    assert broker["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # What the operator's .env (here the example) gives reaches the containers,
    # and the database URL is built from the postgres service's own password.
    for name in BROKER_SERVICES:
        environment = services[name]["environment"]
        assert environment["BROKER_CLIENT_ID"] == "REPLACE_ME"
        assert environment["BROKER_DATABASE_URL"].startswith("postgresql://broker:REPLACE_ME")
        assert environment["BROKER_DATABASE_URL"].endswith("@postgres:5432/broker")


@needs_docker_compose
def test_docker_compose_names_a_missing_password(tmp_path: Path) -> None:
    dotenv = ENV_EXAMPLE.read_text().replace("POSTGRES_PASSWORD=", "# POSTGRES_PASSWORD=")
    result = _docker_compose_config(tmp_path, dotenv=dotenv)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_broker_scales() -> None:
    """`--scale broker=3` needs no container name and no single fixed host port."""
    broker = _compose()["services"]["broker"]
    assert "container_name" not in broker
    for port in broker.get("ports", []):
        published = _DEFAULTED.sub(r"\g<default>", str(port)).rsplit(":", 1)[0]
        # A range (each replica takes a free port of it) or none at all.
        assert published.endswith(":") or "-" in published.rsplit(":", 1)[-1], port


def _commands() -> dict[str, list[str]]:
    commands = {
        name: service["command"]
        for name, service in _compose()["services"].items()
        if name != "postgres"
    }
    # The image's default command and its health check, too.
    dockerfile = DOCKERFILE.read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd is not None, "the Dockerfile has no exec-form CMD"
    commands["Dockerfile CMD"] = json.loads(cmd[1])
    return commands


@pytest.mark.parametrize("where", ["migrate", "broker", "emulator", "Dockerfile CMD"])
def test_commands_are_real_cli_commands(where: str) -> None:
    command = _commands()[where]
    assert command[:3] == ["python", "-m", "service"], command
    # Substitutions stand for values, never for flags; give them one to parse.
    argv = [_SUBSTITUTION.sub("x", arg) for arg in command[3:]]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of saying "no such command or flag"
        pytest.fail(f"{where}: {' '.join(command)} is not a valid command ({exc})")
    expected = {"migrate": "migrate", "broker": "serve", "emulator": "emulator"}
    assert args.command == expected.get(where, "serve")


def test_healthcheck_probes_an_existing_endpoint() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD \[", dockerfile, re.MULTILINE)
    assert "/healthz" in dockerfile
    paths = json.loads((ROOT / "openapi" / "openapi.json").read_text())["paths"]
    assert "/healthz" in paths
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.MULTILINE), "must not run as root"


def test_env_example_lists_only_real_settings() -> None:
    names = _env_example()
    compose_text = COMPOSE.read_text()
    for name in names:
        if name.startswith(ENV_PREFIX):
            assert _setting(name), f".env.example: {name} is not a setting of service/config.py"
        else:
            # Anything else must be something docker-compose.yml substitutes.
            assert f"${{{name}" in compose_text, f".env.example: {name} is used nowhere"


def test_compose_uses_only_real_settings_and_listed_variables() -> None:
    listed = _env_example()
    services = _compose()["services"]
    for name in BROKER_SERVICES:
        assert services[name]["env_file"] == ".env"
        for variable in services[name].get("environment", {}):
            assert _setting(variable), f"{name}: {variable} is not a setting of service/config.py"
    for match in _INTERPOLATION.finditer(COMPOSE.read_text()):
        variable = match["name"]
        assert variable in listed, f"docker-compose.yml uses {variable}; .env.example must list it"
        if variable.startswith(ENV_PREFIX):
            assert _setting(variable), f"docker-compose.yml: {variable} is not a setting"


def test_every_required_setting_is_given() -> None:
    """A fresh .env from the example, plus the compose file, configures every required setting."""
    set_in_example = {name for name, is_set in _env_example().items() if is_set}
    for name in BROKER_SERVICES:
        given = set_in_example | set(_compose()["services"][name].get("environment", {}))
        required = {
            f"{ENV_PREFIX}{field.upper()}"
            for field, info in Settings.model_fields.items()
            if info.is_required()
        }
        # Optional for Settings, required by every command the image runs.
        required.add(f"{ENV_PREFIX}DATABASE_URL")
        assert not required - given, f"{name}: not configured: {sorted(required - given)}"
