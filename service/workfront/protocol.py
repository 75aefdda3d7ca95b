"""What the broker and the emulator agree Workfront's wire looks like.

Both sides of the wire read these facts from here: the client calls these
paths and the emulator serves them, so a path written differently on one side
cannot pass the tests. ``API_PATH`` and the paths under it are templates with a
``{version}`` field, filled with ``str.format`` by the client and used as the
route template (same syntax) by the emulator.

Also here: the PKCE S256 transform both sides compute (RFC 7636 §4.2), and
the bounds on what the broker keeps from an answer (the columns' sizes).
"""

from __future__ import annotations

import base64
import hashlib

# OAuth2 (the instance's host, e.g. https://acme.my.workfront.com).
AUTHORIZE_PATH = "/integrations/oauth2/authorize"
TOKEN_PATH = "/integrations/oauth2/api/v1/token"

# The REST API of one version (BROKER_WORKFRONT_API_VERSION, e.g. v21.0),
# under the root the proxy may reach (and nothing outside it).
API_ROOT = "/attask/api/"
API_PATH = API_ROOT + "{version}"
SESSION_PATH = API_PATH + "/session"  # GET with a sessionID header: whose session it is
LOGOUT_PATH = API_PATH + "/logout"  # GET with a sessionID header: end that session
# The header an API call carries its session in (the token answer's ``headers``).
SESSION_HEADER = "sessionID"

# Bounds of what we store from upstream answers (the columns' sizes).
MAX_SESSION_SECONDS = 366 * 86_400.0
MAX_ID_CHARS = 255
MAX_USER_ID_CHARS = 64


def pkce_challenge(verifier: str) -> str:
    """The S256 ``code_challenge`` of a ``code_verifier``: BASE64URL(SHA256(ASCII(verifier))).

    A valid verifier is ASCII (RFC 7636 §4.1), and the broker's are. Anything
    else has each non-ASCII character replaced, so a bad verifier presented to
    the emulator fails verification instead of raising.
    """
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
