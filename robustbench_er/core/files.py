"""Atomic file writes: every file the harness writes appears whole or not at all.

A writer gets a temporary path in the same folder (so the final rename stays on one file
system), writes it completely, and :func:`os.replace` swaps it in. A reader, or a second
process, sees either the old file or the new one, never a half-written one; a writer that
fails or is killed leaves the old file untouched and removes its temporary file (a killed
process may leave a ``.NAME.*.tmp`` file behind, which nothing reads).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
