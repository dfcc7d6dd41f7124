"""JSON has no NaN and knows no numpy types: what metadata, jsonb columns and reports store."""

from __future__ import annotations

import math
import numbers

import numpy as np
import orjson


def plain(value):
    """``value`` with builtin types only: numpy scalars and arrays converted, non-finite floats
    as None (undefined statistics are stored as null), dict keys as strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def dump_json(value: object) -> bytes:
    """JSON bytes by orjson (numpy numbers allowed, a few µs for an answer; a NaN written as
    null, which jsonb accepts): HTTP answers and the logged risk block alike."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
