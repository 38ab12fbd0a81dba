"""What an attempt gets around its command: a scratch working directory, its artifacts directory, its downloads.

No Django here (the runner uses it). The artifacts directory is made fresh
for each attempt and named to the command in TASKHUB_ARTIFACTS_DIR; after
the command, the regular files in it (symbolic links and devices are not
followed) are read back, up to a cap of bytes per attempt, and the directory
is removed. Files past the cap are listed with their size but not kept.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FETCH_SCRIPT = str(Path(__file__).with_name("fetch.py"))
# More files than this in one attempt's artifacts directory are not listed.
MAX_FILES = 1000


@dataclass(frozen=True)
class ArtifactFile:
    name: str  # relative to the artifacts directory, "/"-separated
    size: int
    content: bytes | None  # None: not kept (past the attempt's cap)


def make_dir(prefix: str, *, inside: str = "", owner: tuple[int, int] | None = None) -> str:
    """A fresh private directory (0700), owned by ``owner`` (uid, gid) when the command runs as another user."""
    path = tempfile.mkdtemp(prefix=prefix, dir=inside or None)
    if owner is not None:
        os.chown(path, *owner)
    return path


def fetch_argv(resources: list[dict]) -> list[str]:
    """The command that downloads ``resources`` into the working directory (executions/fetch.py)."""
    return [sys.executable, FETCH_SCRIPT, json.dumps(resources)]


def collect(directory: str, limit: int) -> list[ArtifactFile]:
    """The regular files under ``directory``, in name order; contents kept while their total stays within ``limit``."""
    files, kept = [], 0
    for name, full, size in itertools.islice(_regular_files(directory), MAX_FILES):
        content = None
        if kept + size <= limit:
            content = _read(full, size)
            if content is not None:
                kept += len(content)
        files.append(ArtifactFile(name, size, content))
    return files


def _regular_files(directory: str) -> Iterator[tuple[str, str, int]]:
    """(name relative to ``directory``, path, size) of each regular file under it, in name order."""
    for root, dirs, names in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            try:
                info = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield os.path.relpath(full, directory).replace(os.sep, "/"), full, info.st_size


def _read(path: str, size: int) -> bytes | None:
    try:
        # O_NOFOLLOW: a file swapped for a link since the listing is not read through it.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read(size)  # no more than was listed, should it have grown since
