"""Helpers shared by the bad-input tests (test_bad_input_data.py, test_bad_input_models.py):
the shipped data, and copies of its files edited to be wrong."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
DATA = Path(os.environ.get("POSTTRAIN_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "MANIFEST.md").is_file(), reason=f"no shipped data at {DATA}")
# The patch for posttrain/verifiers/math.py that these cases need (see the handover report).


def copy_data(root: Path, rel: str) -> Path:
    """A copy of one shipped data file at the same place under a temporary data root."""
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / rel, dest)
    return dest


def edit_line(path: Path, lineno: int, edit) -> None:
    """Replace 1-based line ``lineno``: ``edit`` is the new text, or a function changing the row dict."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = edit if isinstance(edit, str) else json.dumps(_apply(edit, json.loads(lines[lineno - 1])))
    path.write_text("\n".join(lines), encoding="utf-8")


def _apply(fn, row: dict) -> dict:
    fn(row)
    return row
