"""What code produced an artifact: the git commit of the working tree, and whether it was clean.

Recorded in every model package's lineage so a served model can be traced to its source.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def code_revision(root: Path = PROJECT_ROOT) -> dict:
    """``{"git_commit": sha or None, "dirty": bool or None}``; None when not a git checkout."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "dirty": None if status is None else bool(status)}
