"""The webhook routes' own API errors (the service's middleware turns them into JSON)."""

from __future__ import annotations

from ..errors import ApiError


class WebhookNotFound(ApiError, LookupError):
    status = 404
    code = "webhook_not_found"


class InvalidJson(ApiError, ValueError):
    code = "invalid_json"


class PayloadTooLarge(ApiError, ValueError):
    status = 413
    code = "payload_too_large"


class WebhookLimit(ApiError):
    status = 409
    code = "too_many_webhooks"


class WebhooksUnavailable(ApiError):
    status = 501
    code = "webhooks_unavailable"
