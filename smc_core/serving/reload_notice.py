"""``POST /admin/reload`` for every worker of a service, not only the one that received it.

The kernel hands a connection to one worker; the others learn of the reload through a file all
workers of the service share (beside their spools): the receiving worker reloads, then writes a
new token; each worker reads the file every second and reloads when the token differs from the
last one it saw. A file and not the database: the service reloads with the database away too.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


class ReloadNotice:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._seen = self._read()  # a notice written before this worker started is not for it

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def announce(self) -> None:
        """This worker reloaded: the others should. Written whole (rename), never half-read."""
        token = uuid.uuid4().hex
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{token}")
        partial.write_text(token)
        os.replace(partial, self.path)
        self._seen = token

    def pending(self) -> bool:
        """True once for each token another worker wrote since the last call."""
        current = self._read()
        if current is None or current == self._seen:
            return False
        self._seen = current
        return True
