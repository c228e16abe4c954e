"""The run log: one definition shared by every side that reads or writes it.

Keys and channels (``keys``), event ids and cursors (``ids``), the phase graph
(``phases``), record shapes (``records``), the Lua scripts that write the log
(``scripts``) and their arguments (``calls``), the live announcement format
(``announce``), and the Redis clients (``connect``, ``store_url``). ``runner_bridge``
(what runners call), ``service`` (the API pods) and the benchmark are clients of it.
"""
