"""Signed sign-in states (service.signin.states): no database, no server."""

from __future__ import annotations

import base64
import uuid

import pytest

from service.crypto import TokenCipher, generate_key
from service.signin.states import STATE_BYTES, StateSigner

OLD, NEW = f"old:{generate_key()}", f"new:{generate_key()}"


def _signer(spec: str = OLD, lifetime: float = 600) -> StateSigner:
    return StateSigner(
        TokenCipher.from_spec(spec), lifetime_seconds=lifetime, instances=["default", "preview"]
    )


def test_a_state_says_where_it_came_from_and_for_which_browser() -> None:
    signer = _signer()
    browser = signer.new_browser_cookie()
    link = uuid.uuid4()
    new = signer.new_state(browser=browser, link_id=link, instance="default")
    assert len(new.state) == 92
    verified = signer.verify(new.state, browser=browser)
    assert verified is not None
    assert verified.link_id == link
    assert verified.instance == "default"
    assert verified.bound_to_browser
    assert verified.code_verifier == new.code_verifier
    assert 43 <= len(new.code_verifier) <= 128  # RFC 7636
    without_link = signer.new_state(browser=browser, link_id=None, instance="default")
    found = signer.verify(without_link.state, browser=browser)
    assert found is not None
    assert found.link_id is None


def test_another_browser_is_told_apart_from_a_forgery() -> None:
    signer = _signer()
    state = signer.new_state(
        browser=signer.new_browser_cookie(), link_id=None, instance="default"
    ).state
    elsewhere = signer.verify(state, browser=signer.new_browser_cookie())
    assert elsewhere is not None
    assert not elsewhere.bound_to_browser
    nowhere = signer.verify(state, browser=None)
    assert nowhere is not None
    assert not nowhere.bound_to_browser


def test_every_altered_byte_is_refused() -> None:
    signer = _signer()
    browser = signer.new_browser_cookie()
    state = signer.new_state(browser=browser, link_id=uuid.uuid4(), instance="default").state
    raw = base64.urlsafe_b64decode(state + "==")
    assert len(raw) == STATE_BYTES
    signed_part = STATE_BYTES - 8  # the binding tag decides "another browser" only
    for position in range(signed_part):
        altered = bytearray(raw)
        altered[position] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        assert signer.verify(forged, browser=browser) is None, position


@pytest.mark.parametrize("junk", ["", "x", "x" * 43, "!" * 82, "a" * 5000])
def test_junk_is_refused(junk: str) -> None:
    assert _signer().verify(junk, browser="b") is None


def test_states_outlive_a_key_rotation_until_the_old_key_is_removed() -> None:
    before = _signer(OLD)
    browser = before.new_browser_cookie()
    new = before.new_state(browser=browser, link_id=None, instance="default")
    rotated = _signer(f"{NEW},{OLD}")
    verified = rotated.verify(new.state, browser=browser)
    assert verified is not None
    assert verified.bound_to_browser
    # PKCE: the verifier at the callback is the one whose challenge went out.
    assert verified.code_verifier == new.code_verifier
    assert rotated.issued_browser_cookie(browser)
    removed = _signer(NEW)
    assert removed.verify(new.state, browser=browser) is None
    assert not removed.issued_browser_cookie(browser)


def test_only_cookies_the_broker_issued_are_kept() -> None:
    signer = _signer()
    assert signer.issued_browser_cookie(signer.new_browser_cookie())
    planted = base64.urlsafe_b64encode(bytes(52)).rstrip(b"=").decode()
    assert not signer.issued_browser_cookie(planted)
    assert not signer.issued_browser_cookie("A" * 43)  # the old, unsigned form
    assert not signer.issued_browser_cookie(None)
    assert not _signer(lifetime=0).issued_browser_cookie(signer.new_browser_cookie())


def test_a_state_names_its_instance_and_one_no_longer_configured_names_none() -> None:
    signer = _signer()
    browser = signer.new_browser_cookie()
    preview = signer.new_state(browser=browser, link_id=None, instance="preview").state
    found = signer.verify(preview, browser=browser)
    assert found is not None
    assert found.instance == "preview"
    only_default = StateSigner(
        TokenCipher.from_spec(OLD), lifetime_seconds=600, instances=["default"]
    )
    gone = only_default.verify(preview, browser=browser)
    assert gone is not None
    assert gone.instance is None
