"""Durable Streams (the open protocol) on the service: ``/v1/stream/{path}``.

``routes.add_durable_streams`` registers it; the modules are imported from where they are
used (``appkeys`` needs ``live`` and ``store`` before the routes can be imported).
"""
