"""``presence-gateway simulate``: realistic, correctly signed provider webhooks for N users.

The flow, one module each: ``users`` (who owns which devices) and ``behaviour`` (what
happens to them, and the model of who is online) make ``delivery`` objects; ``requests``
turns each into the signed HTTP request its provider would send (the provider modules'
``build_request``); ``sender`` posts them at a steady rate, riding out a gateway that is
down. ``heal`` is the reconciliation side (``--drop``, ``--serve-pull-api``,
``--check-every``, ``--watch-all``) and ``pullapi`` the fake pull APIs it serves;
``command`` is the CLI command itself. All but ``sender``, ``heal``, ``pullapi`` and
``command`` are pure.
"""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> int:
    """``presence-gateway simulate``: 0 when every webhook got a 2xx answer, else 1 (2: usage)."""
    from gateway.simulate.command import main as run_command

    return run_command(args)
