"""The model package's error type, in its own module so every other module can import it."""

from __future__ import annotations

from smc_core.errors import SmcError


class ModelError(SmcError):
    """A model, checkpoint, training set or package that cannot be used; raised before any work."""
