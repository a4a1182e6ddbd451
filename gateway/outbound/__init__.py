"""Presence webhooks out (SPEC 9): tell an app's backend when its users come and go.

A published state is enqueued in the same atomic step that publishes it (apply.lua's XADD on
Redis, ``MemoryStore.apply`` on memory); ``Delivery`` workers on every node drain the queues,
one per endpoint, signing each message per Standard Webhooks (``signing``).
"""
