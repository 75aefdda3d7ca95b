"""The Workfront client's environment: proxies are taken from the environment
once, the way httpx applied them (service.workfront.http._proxy_for)."""

from __future__ import annotations

import pytest

from service.workfront.http import _proxy_for


def test_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert _proxy_for("https://acme.my.workfront.adobe.com") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert _proxy_for("https://acme.my.workfront.adobe.com") == "http://proxy.internal:3128"
    assert _proxy_for("http://acme.my.workfront.adobe.com") is None
    monkeypatch.setenv("NO_PROXY", ".workfront.adobe.com")
    assert _proxy_for("https://acme.my.workfront.adobe.com") is None
