"""ratelimitd's benchmark harness (issue 9): `python -m bench run`. See bench/README.md."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
