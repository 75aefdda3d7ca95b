"""The refresh path, and nothing else. Read it top to bottom:

1. ``issuer``: the three ways in: a token read (``get_token``), a forced
   refresh (``force_refresh``), the refresher's claim (``refresh_claimed``);
2. ``reads``: the session from memory (under a second old) or its row;
3. ``flights``: concurrent callers of one connection share one refresh task,
   shielded from them; ``drain`` at shutdown;
4. ``refresh``: under the row lock (``transaction``), ask Workfront, store
   the new tokens (``token_columns``, sealed by ``sealing``, scheduled by
   ``schedule``), or record the failure;
5. ``store_again``: when the locked connection failed after Workfront answered.

``issued`` holds what they hand out and how they fail.
"""
