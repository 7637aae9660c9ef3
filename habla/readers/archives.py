"""WhatsApp .zip exports read in memory: unsafe paths, links and oversized members refused, media ignored."""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path

from habla.params import Clean


def zip_members(
    path: Path, settings: Clean, wanted: tuple[str, ...]
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """Text members of a WhatsApp .zip export, and refused members with why; media files are ignored.

    Nothing is extracted to disk, so a member named `../../x` cannot write outside
    the work folder; such names, symlinks and oversized members are refused.
    """
    accepted, refused = [], []
    limit = settings.max_zip_member_mb * 2**20
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            name = member.filename
            if member.is_dir() or Path(name).suffix.lower() not in wanted:
                continue
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
                refused.append((name, "unsafe path"))
            elif stat.S_ISLNK(member.external_attr >> 16):
                refused.append((name, "symbolic link"))
            elif member.file_size > limit:
                refused.append((name, f"{member.file_size / 2**20:.0f} MB, over clean.max_zip_member_mb"))
            else:
                accepted.append((name, archive.read(member)))
    return accepted, refused
