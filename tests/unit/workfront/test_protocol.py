"""The wire facts the client and the emulator share (service.workfront.protocol)."""

from __future__ import annotations

from service.workfront.protocol import LOGOUT_PATH, SESSION_PATH, pkce_challenge


def test_pkce_challenge_is_rfc7636_s256() -> None:
    # RFC 7636, Appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_pkce_challenge_of_a_non_ascii_verifier_does_not_raise() -> None:
    # Not a valid verifier: it must fail verification at the emulator, not crash it.
    assert pkce_challenge("\ud800é") == pkce_challenge("??")


def test_api_paths_are_filled_with_the_version() -> None:
    assert SESSION_PATH.format(version="v21.0") == "/attask/api/v21.0/session"
    assert LOGOUT_PATH.format(version="v21.0") == "/attask/api/v21.0/logout"
