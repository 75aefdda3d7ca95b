"""Several Workfront instances: BROKER_INSTANCES_FILE beside the single-instance
variables (service.instances, read by service.config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import ConfigError
from service.config_loading import load_settings
from tests.support.config_values import CLIENT_SECRET, assert_no_secret, good_values

PREVIEW_SECRET = "preview-secret-" + "p" * 24
SANDBOX_SECRET = "sandbox-secret-" + "s" * 24


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    for name in list(os.environ):
        if name.startswith("BROKER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "instances.toml"
    path.write_text(text)
    return str(path)


def _base(env: pytest.MonkeyPatch, *, with_default: bool) -> None:
    values = good_values()
    if not with_default:
        for name in ("BROKER_WORKFRONT_URL", "BROKER_CLIENT_ID", "BROKER_CLIENT_SECRET"):
            values.pop(name)
    for name, value in values.items():
        env.setenv(name, value)


def test_the_file_adds_instances_beside_default(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "sandbox.secret").write_text(SANDBOX_SECRET + "\n")
    _base(env, with_default=True)
    env.setenv(
        "BROKER_INSTANCES_FILE",
        _file(
            tmp_path,
            f"""
[instances.preview]
workfront_url = "https://acme.preview.workfront.com/"
client_id = "preview-app"
client_secret = "{PREVIEW_SECRET}"
token_auth = "form"

[instances.sandbox]
workfront_url = "https://acme.sb01.workfront.adobe.com"
client_id = "sandbox-app"
client_secret_file = "sandbox.secret"
pkce = true
""",
        ),
    )
    instances = load_settings().instances
    assert list(instances) == ["default", "preview", "sandbox"]
    assert instances["default"].expected_domain_lane() == ("acme", "my")
    preview = instances["preview"]
    assert preview.workfront_url == "https://acme.preview.workfront.com"
    assert preview.expected_domain_lane() == ("acme", "preview")
    assert preview.token_auth == "form"
    assert preview.redirect_uri == good_values()["BROKER_REDIRECT_URI"]
    sandbox = instances["sandbox"]
    assert sandbox.client_secret.get_secret_value() == SANDBOX_SECRET  # newline dropped
    assert sandbox.expected_domain_lane() == ("acme", "sb01")
    assert sandbox.pkce
    assert instances.only is None


def test_the_file_alone_needs_no_single_instance_variables(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _base(env, with_default=False)
    env.setenv(
        "BROKER_INSTANCES_FILE",
        _file(
            tmp_path,
            f"""
[instances.prod]
workfront_url = "http://127.0.0.1:8001"
client_id = "prod-app"
client_secret = "{PREVIEW_SECRET}"
domain = "emulator"
lane = "my"
""",
        ),
    )
    instances = load_settings().instances
    assert list(instances) == ["prod"]
    assert instances.only is instances["prod"]
    assert instances["prod"].expected_domain_lane() == ("emulator", "my")


def test_every_problem_is_one_line_naming_instance_and_key_and_no_secret(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _base(env, with_default=True)
    env.setenv(
        "BROKER_INSTANCES_FILE",
        _file(
            tmp_path,
            f"""
[instances.default]
workfront_url = "https://acme.my.workfront.com"
client_id = "x"
client_secret = "{PREVIEW_SECRET}"

[instances.Bad_Name]
workfront_url = "ftp://acme.my.workfront.com"
client_id = ""
client_secret = "{SANDBOX_SECRET}"
client_secret_file = "/nowhere"
token_auth = "magic"
colour = "blue"

[instances.emulator]
workfront_url = "http://127.0.0.1:8001"
client_id = "e"
client_secret_file = "/no/such/file"
""",
        ),
    )
    with pytest.raises(ConfigError) as raised:
        load_settings()
    problems = raised.value.problems
    expected = [
        "instance 'default': the name is taken",
        "instance 'Bad_Name': unknown key 'colour'",
        "instance 'Bad_Name': the name must be",
        "instance 'Bad_Name': workfront_url",
        "instance 'Bad_Name': client_id",
        "instance 'Bad_Name': give client_secret or client_secret_file, not both",
        "instance 'Bad_Name': token_auth",
        "instance 'emulator': client_secret_file: cannot be read",
        "instance 'emulator': domain and lane: required",
    ]
    for fragment in expected:
        assert sum(fragment in line for line in problems) == 1, (fragment, problems)
    assert all(line.startswith("BROKER_INSTANCES_FILE: ") for line in problems)
    assert_no_secret("\n".join(problems), CLIENT_SECRET, PREVIEW_SECRET, SANDBOX_SECRET)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not = [valid", "not valid TOML"),
        ("[other]\nx = 1\n", "no [instances.NAME] table"),
        ("[instances]\n", "no [instances.NAME] table"),
    ],
)
def test_a_file_that_names_no_instance_is_refused(
    env: pytest.MonkeyPatch, tmp_path: Path, text: str, problem: str
) -> None:
    _base(env, with_default=False)
    env.setenv("BROKER_INSTANCES_FILE", _file(tmp_path, text))
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert any(problem in line for line in raised.value.problems), raised.value.problems


def test_without_a_file_the_single_instance_variables_are_required(
    env: pytest.MonkeyPatch,
) -> None:
    _base(env, with_default=False)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert raised.value.problems == [
        "BROKER_CLIENT_ID: required but not set",
        "BROKER_CLIENT_SECRET: required but not set",
        "BROKER_WORKFRONT_URL: required but not set",
    ]
