"""Presence gateway: IM provider webhooks in, live online/offline state out over WebSocket."""

__version__ = "0.1.0"
