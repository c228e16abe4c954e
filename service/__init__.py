"""Mantis run events service: resumable SSE streams of run logs kept in Redis streams."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
