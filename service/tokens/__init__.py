"""The refresh path, and nothing else. Read it top to bottom:

1. ``issuer``: the three ways in: a token read (``get_token``), a forced
   refresh (``force_refresh``), the refresher's claim (``refresh_claimed``);
2. ``reads``: the session from memory (under a second old) or its row; what
   was read is noted for the refresh policy (``usage``);
3. ``flights``: concurrent callers of one connection share one refresh task,
   shielded from them; ``drain`` at shutdown;
4. ``refresh``: read the row, claim it (``lease``: across processes, no
   connection held while Workfront answers), ask Workfront, then store the
   new tokens (``token_columns``, sealed by ``sealing``, scheduled by
   ``schedule``) or record the failure;
5. ``store_again``: storing Workfront's answer under the claim, retried on
   fresh connections when the database fails meanwhile.

``issued`` holds what they hand out and how they fail.
"""
