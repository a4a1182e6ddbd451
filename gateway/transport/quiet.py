"""``QuietH11Protocol``: uvicorn's h11 protocol, for servers whose access lines would leak."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class QuietH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with no access log lines, whatever handlers a test's log
    capture attached (the simulator's fake pull APIs: a line would hold Tencent's usersig)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False
