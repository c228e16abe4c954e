"""``make bench``: the service and Redis under load, measured against the project's targets.

``python -m bench`` starts its own ``redis-server`` and ``python -m service`` child
processes (pinned to core 0), a load generator and a publisher of its own (pinned to
core 1), runs the scenarios of ``bench.scenarios``, prints a table and writes
``bench/results/<timestamp>.json``. See bench/README.md.
"""

__all__: list[str] = []
