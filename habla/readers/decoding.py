"""Bytes of a raw file → text: UTF-8 (with or without BOM), UTF-16 in both byte orders, cp1252, and mojibake
repaired with ftfy; binary files are refused."""

from __future__ import annotations

import re

import ftfy
import polars as pl

MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf]")


class UnreadableFile(Exception):
    pass


def bomless_utf16(head: bytes) -> str | None:
    """`utf-16-le`/`utf-16-be` when every other byte is NUL (Latin text saved as UTF-16 with no BOM), else None."""
    even, odd = head[0::2], head[1::2]
    if len(head) >= 4 and odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0:
        return "utf-16-le"
    if len(head) >= 4 and even.count(0) >= 0.9 * len(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


def decode(data: bytes) -> tuple[str, str]:
    """Bytes → text and the encoding used; mojibake repaired with ftfy when seen.

    Windows tools save "Unicode" text as UTF-16 (with a BOM, or none); polars and most readers
    would see NUL bytes and give up, so both byte orders are decoded here.
    """
    head = data[:8192]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = data.decode("utf-16"), "utf-16"
    elif b"\x00" in head and (order := bomless_utf16(head[: len(head) // 2 * 2])):
        text, encoding = data.decode(order, errors="replace"), order
    elif b"\x00" in head:
        raise UnreadableFile("binary file (NUL bytes)")
    else:
        try:
            text, encoding = data.decode("utf-8-sig"), "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"
        except UnicodeDecodeError:
            text, encoding = data.decode("cp1252", errors="replace"), "cp1252 (fallback)"
    if MOJIBAKE.search(text):
        text, encoding = ftfy.fix_text(text, normalization="NFC"), f"{encoding} + ftfy"
    return text, encoding


def split_lines(text: str) -> pl.Series:
    """Lines as a polars Series: a million Python strings would cost more memory than the parse itself."""
    lines = pl.Series("raw", [text], dtype=pl.String).str.replace_all("\r\n?", "\n").str.split("\n").explode()
    return lines.head(-1) if text.endswith(("\n", "\r")) else lines
