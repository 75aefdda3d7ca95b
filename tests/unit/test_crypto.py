"""TokenCipher and the keyring (service.crypto): formats, AAD binding, tampering,
rotation. No database."""

from __future__ import annotations

import base64
import os

import pytest

from service.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    DecryptionError,
    KeyringError,
    TokenCipher,
    generate_key,
    parse_keyring,
    row_aad,
)

AAD = row_aad("connections", "11111111-1111-1111-1111-111111111111", "refresh_token")
TAG_BYTES = 16


def _b64(raw: bytes, *, urlsafe: bool, padded: bool) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.standard_b64encode)(raw).decode()
    return text if padded else text.rstrip("=")


def _cipher(*ids: str) -> tuple[TokenCipher, dict[str, bytes]]:
    keys = {key_id: os.urandom(KEY_BYTES) for key_id in ids}
    return TokenCipher(list(keys.items())), keys


def _blob(stored: str) -> bytes:
    return base64.urlsafe_b64decode(stored.partition(":")[2])


def _with_blob(stored: str, blob: bytes) -> str:
    return f"{stored.partition(':')[0]}:{base64.urlsafe_b64encode(blob).decode()}"


# Round trip, nonce, format ------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext", ["", "a", "session-0123456789abcdef", "ünïcødé ✓", "x" * 5000]
)
def test_round_trip(plaintext: str) -> None:
    cipher, _ = _cipher("k1")
    stored = cipher.encrypt(plaintext, aad=AAD)
    assert cipher.decrypt(stored, aad=AAD) == plaintext


def test_fresh_96_bit_nonce_each_time() -> None:
    cipher, _ = _cipher("k1")
    stored = [cipher.encrypt("same plaintext", aad=AAD) for _ in range(200)]
    assert len(set(stored)) == len(stored)
    nonces = {_blob(value)[:NONCE_BYTES] for value in stored}
    assert NONCE_BYTES == 12
    assert len(nonces) == len(stored)
    assert all(cipher.decrypt(value, aad=AAD) == "same plaintext" for value in stored)


def test_stored_format_is_key_id_then_urlsafe_base64_of_nonce_ciphertext_tag() -> None:
    cipher, _ = _cipher("prod-2024.1")
    plaintext = "refresh-token-value"
    stored = cipher.encrypt(plaintext, aad=AAD)
    key_id, sep, encoded = stored.partition(":")
    assert (key_id, sep) == ("prod-2024.1", ":")
    assert TokenCipher.key_id_of(stored) == "prod-2024.1"
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
    assert len(_blob(stored)) == NONCE_BYTES + len(plaintext.encode()) + TAG_BYTES
    assert plaintext not in stored


def test_primary_key_id_is_the_first_key() -> None:
    cipher, _ = _cipher("new", "old")
    assert cipher.primary_key_id == "new"
    assert TokenCipher.key_id_of(cipher.encrypt("v", aad=AAD)) == "new"


def test_empty_keyring_is_refused() -> None:
    with pytest.raises(KeyringError):
        TokenCipher([])


# AAD binding and tampering --------------------------------------------------------------


@pytest.mark.parametrize(
    "other_aad",
    [
        row_aad("connections", "22222222-2222-2222-2222-222222222222", "refresh_token"),
        row_aad("connections", "11111111-1111-1111-1111-111111111111", "access_token"),
        row_aad("authorizations", "11111111-1111-1111-1111-111111111111", "refresh_token"),
        b"",
    ],
    ids=["other-row", "other-column", "other-table", "empty"],
)
def test_decrypting_with_another_aad_fails(other_aad: bytes) -> None:
    cipher, _ = _cipher("k1")
    stored = cipher.encrypt("alice-session", aad=AAD)
    with pytest.raises(DecryptionError):
        cipher.decrypt(stored, aad=other_aad)


def test_row_aad_distinguishes_rows_columns_and_tables() -> None:
    values = {
        row_aad("connections", 1, "access_token"),
        row_aad("connections", 2, "access_token"),
        row_aad("connections", 1, "refresh_token"),
        row_aad("authorizations", 1, "access_token"),
    }
    assert len(values) == 4


def test_every_tampered_byte_is_detected() -> None:
    cipher, _ = _cipher("k1")
    stored = cipher.encrypt("secret-session", aad=AAD)
    blob = _blob(stored)
    for position in range(len(blob)):  # nonce, ciphertext and tag alike
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(DecryptionError):
            cipher.decrypt(_with_blob(stored, bytes(tampered)), aad=AAD)


def test_truncated_or_extended_ciphertext_fails() -> None:
    cipher, _ = _cipher("k1")
    stored = cipher.encrypt("secret-session", aad=AAD)
    blob = _blob(stored)
    for changed in (blob[:-1], blob[: NONCE_BYTES + TAG_BYTES], blob + b"\x00"):
        with pytest.raises(DecryptionError):
            cipher.decrypt(_with_blob(stored, changed), aad=AAD)


def test_unknown_key_id_fails() -> None:
    cipher, _ = _cipher("k1")
    stored = cipher.encrypt("v", aad=AAD)
    with pytest.raises(DecryptionError):
        cipher.decrypt("k9:" + stored.partition(":")[2], aad=AAD)


def test_value_relabelled_with_another_known_key_id_fails() -> None:
    cipher, _ = _cipher("k1", "k2")
    stored = cipher.encrypt("v", aad=AAD)
    assert stored.startswith("k1:")
    with pytest.raises(DecryptionError):
        cipher.decrypt("k2:" + stored.partition(":")[2], aad=AAD)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "no-colon-at-all",
        ":",
        "k1:",
        "k1:!!!!",
        "k1:not base64 at all",
        "k1:abc",
        "k1:" + base64.urlsafe_b64encode(b"short").decode(),
        "k1:" + base64.urlsafe_b64encode(os.urandom(NONCE_BYTES + TAG_BYTES)).decode(),
        "k1:" + base64.urlsafe_b64encode(os.urandom(80)).decode(),
        "plaintext-session-id",
    ],
)
def test_garbage_never_decrypts(garbage: str) -> None:
    cipher, _ = _cipher("k1")
    with pytest.raises(DecryptionError):
        cipher.decrypt(garbage, aad=AAD)


# Keyring parsing -------------------------------------------------------------------------

# Bytes chosen so their base64 holds '+' and '/' (standard) or '-' and '_' (URL-safe).
AWKWARD_KEY = bytes([0xFB, 0xEF, 0xFF] * 10 + [0xFB, 0xEF])


@pytest.mark.parametrize("urlsafe", [False, True], ids=["standard", "urlsafe"])
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_parse_keyring_accepts_standard_and_urlsafe_padded_or_not(
    urlsafe: bool, padded: bool
) -> None:
    encoded = _b64(AWKWARD_KEY, urlsafe=urlsafe, padded=padded)
    assert any(c in encoded for c in "+/-_")
    assert parse_keyring(f"k1:{encoded}") == [("k1", AWKWARD_KEY)]


def test_parse_keyring_keeps_order_and_ignores_blanks_and_spaces() -> None:
    a, b = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    new, old = _b64(a, urlsafe=True, padded=False), _b64(b, urlsafe=False, padded=True)
    spec = f" new:{new} , ,old:{old},"
    assert parse_keyring(spec) == [("new", a), ("old", b)]


def test_generate_key_parses_to_32_bytes() -> None:
    key = generate_key()
    assert generate_key() != key
    [(key_id, raw)] = parse_keyring(f"k1:{key}")
    assert key_id == "k1"
    assert len(raw) == KEY_BYTES


def _short_key() -> str:
    return _b64(os.urandom(16), urlsafe=True, padded=True)


def _bad_specs() -> list[tuple[str, str, list[str]]]:
    """(case id, spec, key material that must not appear in the message)."""
    k16 = _short_key()
    k31 = _b64(os.urandom(31), urlsafe=False, padded=True)
    k33 = _b64(os.urandom(33), urlsafe=True, padded=False)
    good = generate_key()
    bad_b64 = "S3cr3t-Key-Material!!*$"
    return [
        ("16-bytes", f"k1:{k16}", [k16]),
        ("31-bytes", f"k1:{k31}", [k31]),
        ("33-bytes", f"k1:{k33}", [k33]),
        ("empty-key", "k1:", []),
        ("duplicate-id", f"k1:{good},k1:{generate_key()}", [good]),
        ("bad-base64", f"k1:{bad_b64}", [bad_b64, "S3cr3t"]),
        ("bad-second-entry", f"k1:{good},k2:{bad_b64}", [good, bad_b64, "S3cr3t"]),
        ("no-colon", good, [good, good.rstrip("=")]),
        ("no-id", f":{good}", [good]),
        ("bad-id-chars", f"k 1:{good}", [good]),
    ]


@pytest.mark.parametrize(
    ("spec", "material"),
    [pytest.param(spec, material, id=case) for case, spec, material in _bad_specs()],
)
def test_parse_keyring_rejects_bad_entries_without_echoing_key_material(
    spec: str, material: list[str]
) -> None:
    with pytest.raises(KeyringError) as info:
        parse_keyring(spec)
    message = str(info.value)
    assert message
    for secret in material:
        assert secret not in message


@pytest.mark.parametrize("spec", ["", "   ", ",", " , , "])
def test_parse_keyring_rejects_an_empty_spec(spec: str) -> None:
    with pytest.raises(KeyringError, match="no keys"):
        parse_keyring(spec)


def test_parse_keyring_names_the_duplicate_entry() -> None:
    with pytest.raises(KeyringError, match="entry 3"):
        parse_keyring(f"k1:{generate_key()},k2:{generate_key()},k1:{generate_key()}")


def test_parse_keyring_swapped_id_and_key_does_not_echo_the_key() -> None:
    key = _b64(os.urandom(KEY_BYTES), urlsafe=True, padded=False)
    with pytest.raises(KeyringError) as info:
        parse_keyring(f"{key}:k1")
    assert key not in str(info.value)


# Rotation ---------------------------------------------------------------------------------


def test_rotation_old_values_decrypt_new_values_use_the_new_key() -> None:
    k1, k2 = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES)
    old_ring = TokenCipher([("k1", k1)])
    old_value = old_ring.encrypt("old-refresh-token", aad=AAD)
    assert old_value.startswith("k1:")

    rotated = TokenCipher([("k2", k2), ("k1", k1)])
    assert rotated.decrypt(old_value, aad=AAD) == "old-refresh-token"
    new_value = rotated.encrypt("new-refresh-token", aad=AAD)
    assert new_value.startswith("k2:")
    assert rotated.decrypt(new_value, aad=AAD) == "new-refresh-token"
    with pytest.raises(DecryptionError):
        old_ring.decrypt(new_value, aad=AAD)

    only_new = TokenCipher([("k2", k2)])
    assert only_new.decrypt(new_value, aad=AAD) == "new-refresh-token"
    with pytest.raises(DecryptionError):
        only_new.decrypt(old_value, aad=AAD)


def test_same_key_id_with_different_material_fails() -> None:
    first = TokenCipher([("k1", os.urandom(KEY_BYTES))])
    impostor = TokenCipher([("k1", os.urandom(KEY_BYTES))])
    with pytest.raises(DecryptionError):
        impostor.decrypt(first.encrypt("v", aad=AAD), aad=AAD)


# Database level ---------------------------------------------------------------------------
