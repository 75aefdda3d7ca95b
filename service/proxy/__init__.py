"""The proxy: internal services call Workfront as a connection's user with
their API key alone, and never handle a session.

``paths`` decides which requests may leave (only ``attask/api/...``, nothing
that escapes it once decoded), ``headers`` what crosses in each direction,
``gate`` how many calls go to one instance at once, and ``relay`` the call
itself: the session added, one refresh and one retry when Workfront says the
session is dead, the answer streamed back.
"""
