"""Real small or read-only file systems, for tests of what swarm does when a disk is full or cannot be written.

A tmpfs of a few kilobytes is mounted on a folder of the test's own (root only: a test skips where mounting is not
allowed) and unmounted when the block exits:

    with small_disk(tmp_path / "disk", size="64k") as disk:
        fill(disk)                      # now every write there fails with ENOSPC
    with small_disk(tmp_path / "disk", read_only=True) as disk:
        ...                             # every write there fails with EROFS, for root too
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "1m", read_only: bool = False,
               before_read_only=None) -> Iterator[Path]:
    """Mount a tmpfs of `size` on `folder` for the block; `read_only` remounts it read-only once
    `before_read_only(folder)` (if given) has put its files there. Skips the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs on {folder} (needs root): {error}")
    try:
        if before_read_only is not None:
            before_read_only(folder)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True, timeout=30)
        yield folder
    finally:
        # lazy: a file a failed test left open must not leave the mount behind
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True, timeout=30)


def fill(disk: Path) -> Path:
    """Write one file until `disk` has no byte left; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:  # unbuffered: closing it must not write again
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
    return filler
