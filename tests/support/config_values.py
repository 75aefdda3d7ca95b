"""Configuration values the config tests share: secrets that must never be
printed back, and a minimal good configuration."""

from __future__ import annotations

from service.crypto import generate_key

REQUIRED = (
    "BROKER_WORKFRONT_URL",
    "BROKER_CLIENT_ID",
    "BROKER_CLIENT_SECRET",
    "BROKER_REDIRECT_URI",
    "BROKER_ENCRYPTION_KEYS",
)
# Secret-looking values that must never be printed back.
CLIENT_SECRET = "client-secret-SENTINEL-7f3a9c"
ADMIN_SHORT = "admin-SENTINEL-short"
ADMIN_BLANK = "   "
DB_PASSWORD = "dbpass-SENTINEL-41c2"
# A well-formed Standard Webhooks secret: whsec_ + base64 of 32 bytes.
WEBHOOK_SECRET = "whsec_U0VOVElORUwtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OWFi"
BAD_KEY_MATERIAL = "keymaterial-SENTINEL-x!y*z"
SHORT_KEY_MATERIAL = "c2VudGluZWwtc2hvcnQta2V5"  # 18 bytes, valid base64
SECRETS = (CLIENT_SECRET, ADMIN_SHORT, DB_PASSWORD, WEBHOOK_SECRET, BAD_KEY_MATERIAL)


def good_values() -> dict[str, str]:
    return {
        "BROKER_WORKFRONT_URL": "https://acme.my.workfront.com",
        "BROKER_CLIENT_ID": "client-id",
        "BROKER_CLIENT_SECRET": CLIENT_SECRET,
        "BROKER_REDIRECT_URI": "https://broker.example.com/oauth/callback",
        "BROKER_ENCRYPTION_KEYS": f"k1:{generate_key()}",
    }


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
