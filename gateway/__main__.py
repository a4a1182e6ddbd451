"""``python -m gateway``: the same as the ``presence-gateway`` command."""

from gateway.cli import main

raise SystemExit(main())
