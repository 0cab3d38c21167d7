"""Cross-process wake-ups of live inbox streams (:class:`herald.ports.LiveSignals`).

``local``: one process (``herald serve``, whose in-app sends happen in the process that holds
the streams). ``pg``: PostgreSQL ``LISTEN``/``NOTIFY``, for ``herald api`` + ``herald worker``
on PostgreSQL: the database every process already shares, no other service needed.
"""
