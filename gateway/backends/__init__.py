"""Presence stores and brokers: one module per backend, chosen by ``open_backend``."""
