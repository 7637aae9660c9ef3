"""`clean` stage: raw exports under data/raw → cleaned messages and rejected lines.

Every raw line of every file ends up in `data/cleaned/messages.parquet` or in
`data/cleaned/rejected.parquet` with a reason; `metrics/clean.json` reconciles
the counts per file. Text keeps its case, emojis and punctuation: that is the
voice the model is meant to learn.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import ftfy
import polars as pl

from stages.errors import UserError, run_stage
from stages.gates import run_gate
from stages.io import write_json
from stages.params import Clean, load_params
from stages.redact import redact_frame
from stages.whatsapp import detect_format, parse_whatsapp

log = logging.getLogger("clean")

RAW_DIR = Path("data/raw")
OUT_DIR = Path("data/cleaned")
REPORT = Path("metrics/clean.json")
SOURCES = ["whatsapp", "transcript", "lyrics", "table"]
MESSAGES_SCHEMA = {
    "source": pl.String, "file": pl.String, "line": pl.UInt32, "lines": pl.UInt32, "chat": pl.String,
    "ts": pl.Datetime("us"), "author": pl.String, "text": pl.String,
}
REJECTED_SCHEMA = {"source": pl.String, "file": pl.String, "line": pl.UInt32, "lines": pl.UInt32, "reason": pl.String, "raw": pl.String}
IGNORED_NAMES = {".gitkeep", "README.md", ".DS_Store"}
SOUND_CUE = r"\[(?:[Mm]úsica|[Aa]plausos|[Rr]isas|[Mm]usic|[Aa]pplause|[Ll]aughter|[Ss]ilencio|[Ii]naudible)\]"
MOJIBAKE = re.compile("[ÃÂ][\u0080-\u00bf]")
MIN_WHATSAPP_SHARE = 0.3


class UnreadableFile(Exception):
    pass


def decode(data: bytes) -> tuple[str, str]:
    """Bytes → text and the encoding used; mojibake repaired with ftfy when seen."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = data.decode("utf-16"), "utf-16"
    elif b"\x00" in data[:8192]:
        raise UnreadableFile("binary file (NUL bytes)")
    else:
        try:
            text, encoding = data.decode("utf-8-sig"), "utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"
        except UnicodeDecodeError:
            text, encoding = data.decode("cp1252", errors="replace"), "cp1252 (fallback)"
    if MOJIBAKE.search(text):
        text, encoding = ftfy.fix_text(text, normalization="NFC"), f"{encoding} + ftfy"
    return text, encoding


def split_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[: -1 if text.endswith(("\n", "\r")) else None]


def discover(raw_dir: Path) -> list[Path]:
    if not raw_dir.is_dir():
        raise UserError(f"{raw_dir}/ does not exist. Put your exports there (e.g. {raw_dir}/whatsapp/chat.txt).")
    files = sorted(
        p for p in raw_dir.rglob("*")
        if p.is_file() and p.name not in IGNORED_NAMES and not any(part.startswith(".") for part in p.relative_to(raw_dir).parts)
    )
    if not files:
        raise UserError(f"{raw_dir}/ is empty. Put WhatsApp exports (.txt) or transcripts there and run again.")
    return files


def parse_plain_text(lines: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A transcript or lyrics file: one item per non-empty line; sound cues dropped."""
    frame = pl.DataFrame({"raw": lines}, schema={"raw": pl.String}).with_row_index("line", offset=1)
    frame = frame.with_columns(
        text=pl.col("raw").str.replace_all(SOUND_CUE, "").str.strip_chars(), lines=pl.lit(1, dtype=pl.UInt32)
    )
    reason = (
        pl.when(pl.col("raw").str.strip_chars() == "").then(pl.lit("blank_line"))
        .when(pl.col("text") == "").then(pl.lit("sound_cue"))
    )
    frame = frame.with_columns(reason=reason)
    kept = frame.filter(pl.col("reason").is_null()).select(
        "line", "lines", ts=pl.lit(None, dtype=pl.Datetime("us")), author=pl.lit(None, dtype=pl.String), text="text"
    )
    return kept, frame.filter(pl.col("reason").is_not_null()).select("line", "lines", "reason", "raw")


def source_of(relative: Path, lines: list[str]) -> str:
    if relative.suffix.lower() != ".txt":
        raise UnreadableFile(f"unsupported file type {relative.suffix or '(none)'}; supported: .txt")
    fmt, share = detect_format(pl.Series(lines, dtype=pl.String))
    if fmt is not None and share >= MIN_WHATSAPP_SHARE:
        return "whatsapp"
    return "lyrics" if relative.parts[0].lower() in ("lyrics", "letras") else "transcript"


def parse_file(path: Path, relative: Path, settings: Clean) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """One raw file → (kept, rejected, report entry). Problems with the file become a report line."""
    try:
        text, encoding = decode(path.read_bytes())
        lines = split_lines(text)
        if not any(line.strip() for line in lines):
            raise UnreadableFile("empty file")
        source = source_of(relative, lines)
    except (OSError, UnreadableFile) as err:
        raw_preview = path.read_bytes()[:200].decode("utf-8", errors="replace") if path.exists() else ""
        rejected = pl.DataFrame(
            {"line": [1], "lines": [0], "reason": ["unreadable_file"], "raw": [f"{err}: {raw_preview}"]},
            schema={"line": pl.UInt32, "lines": pl.UInt32, "reason": pl.String, "raw": pl.String},
        )
        return _empty_messages(), _tag(rejected, "unknown", relative), {"error": str(err), "kept": 0, "rejected": {}}
    info: dict = {"encoding": encoding, "raw_lines": len(lines), "source": source}
    if source == "whatsapp":
        kept, rejected, details = parse_whatsapp(lines, settings.date_order)
        info.update(details)
    else:
        kept, rejected = parse_plain_text(lines)
        info["format"] = "plain text"
    chat = relative.as_posix()
    kept = kept.with_columns(source=pl.lit(source), file=pl.lit(chat), chat=pl.lit(chat)).select(list(MESSAGES_SCHEMA))
    return kept.cast(MESSAGES_SCHEMA), _tag(rejected, source, relative), info


def _tag(rejected: pl.DataFrame, source: str, relative: Path) -> pl.DataFrame:
    tagged = rejected.with_columns(source=pl.lit(source), file=pl.lit(relative.as_posix()))
    return tagged.select(list(REJECTED_SCHEMA)).cast(REJECTED_SCHEMA)


def _empty_messages() -> pl.DataFrame:
    return pl.DataFrame(schema=MESSAGES_SCHEMA)


def normalise_text(text: pl.Expr) -> pl.Expr:
    """NFC, one space between words, no trailing spaces on lines, at most one blank line."""
    return (
        text.str.normalize("NFC")
        .str.replace_all(r"[ \t]+", " ")
        .str.replace_all(r" ?\n ?", "\n")
        .str.replace_all(r"\n{3,}", "\n\n")
        .str.strip_chars()
    )


def finish(messages: pl.DataFrame, settings: Clean) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Normalise and redact text; move empty, over-long and duplicate messages to rejected."""
    messages = redact_frame(messages.with_columns(normalise_text(pl.col("text"))), settings.redact)
    minute = pl.col("ts").dt.truncate("1m")
    duplicate = (pl.col("source") == "whatsapp") & ~pl.struct("chat", "author", "text", minute).is_first_distinct()
    reason = (
        pl.when(pl.col("text") == "").then(pl.lit("empty"))
        .when(pl.col("text").str.len_chars() > settings.max_chars).then(pl.lit("too_long"))
        .when(duplicate).then(pl.lit("duplicate"))
    )
    messages = messages.with_columns(reason=reason)
    rejected = messages.filter(pl.col("reason").is_not_null()).select(
        "source", "file", "line", "lines", "reason", raw=pl.col("text")
    )
    return messages.filter(pl.col("reason").is_null()).drop("reason"), rejected.cast(REJECTED_SCHEMA)


def report(files: dict[str, dict], kept: pl.DataFrame, rejected: pl.DataFrame) -> dict:
    kept_counts = dict(kept.group_by("file").len().iter_rows())
    kept_lines = dict(kept.group_by("file").agg(pl.col("lines").sum()).iter_rows())
    for name, entry in files.items():
        mine = rejected.filter(pl.col("file") == name)
        entry["kept"] = kept_counts.get(name, 0)
        entry["rejected"] = dict(sorted(mine.group_by("reason").len().iter_rows()))
        covered = kept_lines.get(name, 0) + int(mine["lines"].sum())
        if "raw_lines" in entry and covered != entry["raw_lines"]:
            raise RuntimeError(f"line accounting broken for {name}: {covered} of {entry['raw_lines']} lines covered")
    return {
        "files": files,
        "totals": {
            "files": len(files),
            "raw_lines": sum(e.get("raw_lines", 0) for e in files.values()),
            "kept": kept.height,
            "rejected": rejected.height,
            "rejected_by_reason": dict(sorted(rejected.group_by("reason").len().iter_rows())),
            "by_source": dict(sorted(kept.group_by("source").len().iter_rows())),
        },
    }


def expectations(max_chars: int) -> list:
    return [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1}),
        ("ExpectColumnValuesToNotBeNull", {"column": "text"}),
        ("ExpectColumnValueLengthsToBeBetween", {"column": "text", "min_value": 1, "max_value": max_chars}),
        ("ExpectColumnValuesToBeInSet", {"column": "source", "value_set": SOURCES}),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["file", "line"]}),
        ("ExpectColumnValuesToBeBetween", {"column": "year", "min_value": 2009, "max_value": 2100}),
        ("ExpectColumnValuesToNotBeNull", {"column": "chat_author"}),
    ]


def gate_frame(kept: pl.DataFrame) -> pl.DataFrame:
    """The columns the gate checks: the text contract plus derived checks (year, chat author)."""
    return kept.select(
        "source", "file", "line", "text",
        year=pl.col("ts").dt.year(),
        chat_author=pl.when(pl.col("source") == "whatsapp").then(pl.col("author")).otherwise(pl.lit("-")),
    )


def main() -> None:
    params = load_params()
    files = discover(RAW_DIR)
    kept_parts, rejected_parts, entries = [], [], {}
    for path in files:
        relative = path.relative_to(RAW_DIR)
        kept, rejected, entry = parse_file(path, relative, params.clean)
        kept_parts.append(kept)
        rejected_parts.append(rejected)
        entries[relative.as_posix()] = entry
        log.info("%s: %s, %d items kept, %d rejected", relative, entry.get("format", entry.get("error")), kept.height, rejected.height)
    kept, more_rejected = finish(pl.concat(kept_parts), params.clean)
    rejected = pl.concat([*rejected_parts, more_rejected]).sort("file", "line")
    kept = kept.sort("file", "line")
    summary = report(entries, kept, rejected)
    if kept.is_empty():
        problems = "\n".join(f"  - {name}: {e.get('error') or 'nothing kept'}" for name, e in entries.items())
        raise UserError(f"no usable messages in {RAW_DIR}/:\n{problems}\nCheck the files above; supported inputs are listed in the README.")
    write_json(REPORT, summary)
    run_gate("clean", gate_frame(kept), expectations(params.clean.max_chars))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    kept.write_parquet(OUT_DIR / "messages.parquet")
    rejected.write_parquet(OUT_DIR / "rejected.parquet")
    totals = summary["totals"]
    log.info("kept %d messages, rejected %d (%s)", totals["kept"], totals["rejected"], totals["rejected_by_reason"])


if __name__ == "__main__":
    run_stage(main)
