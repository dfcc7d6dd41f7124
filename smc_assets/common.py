"""Small pieces every asset module uses: domain errors as Dagster failures, images in metadata."""

import base64
from pathlib import Path

from dagster import Failure

from smc_core.errors import SmcError


def checked(work):
    """Run ``work()``; a domain error (bad data, config or package) becomes a Failure with its message."""
    try:
        return work()
    except SmcError as error:
        raise Failure(description=str(error)) from None


def image_markdown(*paths: Path) -> str:
    """PNGs embedded in a markdown metadata value, so the Dagster UI shows them inline."""
    return "\n\n".join(f"![{Path(p).stem}](data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()})"
                       for p in paths)
