"""WhatsApp .zip exports read in memory, one member at a time: unsafe paths, links, oversized and corrupt members
refused with their reason, media ignored, nothing written to disk."""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from habla.params import Clean


def zip_members(path: Path, settings: Clean, wanted: tuple[str, ...]) -> Iterator[tuple[str, str | None, bytes]]:
    """(name, why refused or None, bytes) for each text member of a .zip export, in name order.

    Members are inflated one at a time, as streams that stop at the declared size, which must be under
    `clean.max_zip_member_mb`: a member whose header lies about its size fails its checksum after at most that
    many bytes. A bad member is refused with its reason and the others are still read.
    """
    limit = settings.max_zip_member_mb * 2**20
    with zipfile.ZipFile(path) as archive:
        members = sorted(
            (m for m in archive.infolist() if not m.is_dir() and Path(m.filename).suffix.lower() in wanted),
            key=lambda m: m.filename,
        )
        for member in members:
            why = _refusal(member, limit)
            data = b""
            if why is None:
                try:
                    data = _inflate(archive, member)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
                    why = f"corrupt member: {err}"
            yield member.filename, why, data


def _refusal(member: zipfile.ZipInfo, limit: int) -> str | None:
    name = member.filename
    if name.startswith(("/", "\\")) or ".." in Path(name).parts or re.match(r"^[A-Za-z]:", name):
        return "unsafe path"
    if stat.S_ISLNK(member.external_attr >> 16):
        return "symbolic link"
    if member.file_size > limit:
        return f"{member.file_size / 2**20:.0f} MB, over clean.max_zip_member_mb"
    return None


def _inflate(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    """The member's bytes, inflated 1 MiB at a time.

    `ZipFile.read` inflates a member's whole compressed stream in one call: a forged header (1,000 bytes declared,
    1 GiB inflated) took 2 GB before its checksum failed. Read in steps, zipfile stops at the declared size (already
    checked against the limit), so memory never exceeds the limit plus one step, and the checksum then fails.
    """
    with archive.open(member) as stream:
        return b"".join(iter(lambda: stream.read(2**20), b""))
