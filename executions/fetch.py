"""Download a task's resources into the command's working directory: run by the runner as a process of its own.

Run as ``python fetch.py '<json list of {"url", "path", "sha256"}>'`` in the
working directory, before the command and under the attempt's deadline, cancel
and heartbeat like the command itself. Each file is written beside its
destination and renamed into place only when whole and, when a SHA-256 is
given, matching. On the first failure it says why on stderr and exits 1; no
Django here (it starts in a fresh interpreter).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request

CHUNK = 1024 * 1024
# Per network operation (connect, each read); the attempt's deadline bounds the whole.
SOCKET_TIMEOUT = 30


def fetch(url: str, path: str, sha256: str = "") -> str:
    """Download ``url`` to ``path``; return its SHA-256. Raise ValueError with the reason."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    digest = hashlib.sha256()
    fd, partial = tempfile.mkstemp(prefix=".taskhub-download-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=SOCKET_TIMEOUT) as response:  # noqa: S310 (http(s) only: the model validates the scheme)
                    while chunk := response.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as exc:
                raise ValueError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ValueError(f"{url} could not be downloaded: {reason}") from None
        got = digest.hexdigest()
        if sha256 and got != sha256.lower():
            raise ValueError(f"{url}: checksum mismatch: expected SHA-256 {sha256.lower()}, got {got}")
        os.replace(partial, path)
        partial = ""
        return got
    finally:
        if partial:
            os.unlink(partial)


def main(argv: list[str]) -> int:
    for resource in json.loads(argv[1]):
        try:
            got = fetch(resource["url"], resource["path"], resource.get("sha256", ""))
        except ValueError as exc:
            print(f"Download failed: {exc}.", file=sys.stderr)
            return 1
        print(f"{resource['path']}: {os.path.getsize(resource['path'])} bytes, SHA-256 {got}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
