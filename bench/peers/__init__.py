"""The peers of ``--vs``: the same job built the way a team would build it instead.

- ``ceiling``: a bare ``websockets`` server forwarding Redis pub/sub messages, no presence logic;
- ``pysio``: python-socketio (ASGI, uvicorn) with its Redis manager, rooms per user;
- ``node/server.js``: Node's socket.io with ``@socket.io/redis-adapter``, rooms per user.

Each accepts the bench's webhooks (Tencent single events, RongCloud batches) without checking
their signatures, and pushes ``{"user", "status", "since", "v"}`` per event, ``v`` being the
provider's event time (they keep no version of their own).
"""
