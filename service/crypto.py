"""Encryption at rest for tokens: AES-256-GCM with a keyring.

A stored value is ``<key_id>:<base64url(nonce || ciphertext+tag)>``. The key id
travels with the value so keys can rotate: the first key of the ring encrypts,
every key decrypts. The associated data binds a ciphertext to its row and
column, so a value copied into another row (or another column) fails to
decrypt instead of handing one user's session to another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12  # 96 bits, the size GCM is specified for
KEY_BYTES = 32  # AES-256
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class DecryptionError(Exception):
    """A stored value could not be decrypted: unknown key, bad format or failed tag.

    Never falls back to anything: a value that does not decrypt is an error.
    """


class KeyringError(ValueError):
    """The configured keyring is malformed (the message never contains key material)."""


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: str
    aead: AESGCM
    raw: bytes = field(repr=False)


def _b64decode_any(text: str) -> bytes:
    """Accept standard and URL-safe base64, padded or not."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


def parse_keyring(spec: str) -> list[tuple[str, bytes]]:
    """Parse ``key_id:base64key,...``; raise KeyringError naming the bad entry.

    Entries are named by position only: an id and key given the wrong way
    round would otherwise put the key into the message.
    """
    entries = [part.strip() for part in spec.split(",") if part.strip()]
    if not entries:
        raise KeyringError("no keys given (expected key_id:base64key[,key_id:base64key…])")
    keys: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        key_id, sep, encoded = entry.partition(":")
        if not sep or not key_id:
            raise KeyringError(f"entry {position} is not of the form key_id:base64key")
        if not _KEY_ID.match(key_id):
            raise KeyringError(f"entry {position}: key id must be 1-64 of A-Z a-z 0-9 _ . -")
        if key_id in seen:
            raise KeyringError(f"entry {position}: its key id appears earlier too")
        try:
            raw = _b64decode_any(encoded)
        except (binascii.Error, ValueError):
            raise KeyringError(f"entry {position}: the key is not valid base64") from None
        if len(raw) != KEY_BYTES:
            raise KeyringError(f"entry {position}: the key must decode to 32 bytes, not {len(raw)}")
        seen.add(key_id)
        keys.append((key_id, raw))
    return keys


def generate_key() -> str:
    """A fresh key in the configuration's format (URL-safe base64 of 32 random bytes)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


def row_aad(table: str, row_id: object, column: str) -> bytes:
    """Associated data binding a ciphertext to one row and column."""
    return f"{table}:{row_id}:{column}".encode()


class TokenCipher:
    """AES-256-GCM keyring: the first key encrypts, all keys decrypt."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        self._keys = [_Key(key_id, AESGCM(raw), raw) for key_id, raw in keys]
        self._by_id = {key.key_id: key for key in self._keys}

    @classmethod
    def from_spec(cls, spec: str) -> TokenCipher:
        return cls(parse_keyring(spec))

    @property
    def primary_key_id(self) -> str:
        return self._keys[0].key_id

    @property
    def key_ids(self) -> list[str]:
        return [key.key_id for key in self._keys]

    def derived_keys(self, purpose: bytes) -> list[bytes]:
        """A key of its own for ``purpose`` (a MAC, say) from each keyring key,
        primary first: HKDF-SHA256, so no two purposes share key material and
        a derived key tells nothing of the key it came from."""
        return [
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key.raw)
            for key in self._keys
        ]

    def encrypt(self, plaintext: str, *, aad: bytes) -> str:
        key = self._keys[0]
        nonce = os.urandom(NONCE_BYTES)
        sealed = key.aead.encrypt(nonce, plaintext.encode(), aad)
        return f"{key.key_id}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    @staticmethod
    def key_id_of(stored: str) -> str:
        return stored.partition(":")[0]

    def decrypt(self, stored: str, *, aad: bytes) -> str:
        key_id, sep, encoded = stored.partition(":")
        if not sep:
            raise DecryptionError("stored value has no key id")
        key = self._by_id.get(key_id)
        if key is None:
            raise DecryptionError(f"unknown key id {key_id!r}")
        try:
            blob = base64.urlsafe_b64decode(encoded)
        except (binascii.Error, ValueError):
            raise DecryptionError("stored value is not valid base64") from None
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("stored value is too short")
        try:
            plain = key.aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError("authentication tag does not verify") from None
        return plain.decode()


def lookup_digest(value: str) -> bytes:
    """SHA-256 of a high-entropy secret the broker finds rows by (API keys,
    connect-link tokens, sign-in states): stored instead of the value."""
    return hashlib.sha256(value.encode()).digest()
