"""Webhooks (CONTRACT section 8): endpoints, durable signed deliveries, the SSRF guard.

``routes`` serves ``/v1/webhooks``; ``runtime`` starts the pod's dispatcher. (Nothing is
re-exported here: ``service.appkeys`` imports ``runtime`` and ``routes`` imports it back.)
"""
