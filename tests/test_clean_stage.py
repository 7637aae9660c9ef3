import shutil

import polars as pl
import pytest

from stages import clean
from stages.errors import UserError
from stages.io import read_json
from tests.conftest import FIXTURES, android


def write_raw(root, name, content: bytes | str):
    path = root / "data" / "raw" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_clean_keeps_or_rejects_every_line_and_reports_per_file(in_tmp):
    chat = "\n".join([
        android(13, 3, 2023, "9:00", None, "Los mensajes y las llamadas están cifrados de extremo a extremo."),
        android(13, 3, 2023, "9:01", "Cami", "hola, mi correo es cami@correo.cl"),
        android(13, 3, 2023, "9:02", "Nico", "wena po\nsegunda línea"),
        android(13, 3, 2023, "9:02", "Nico", "wena po\nsegunda línea"),
        android(13, 3, 2023, "9:03", "Nico", "<Multimedia omitido>"),
    ]) + "\n"
    write_raw(in_tmp, "whatsapp/chat.txt", chat.replace("\n", "\r\n").encode("utf-8-sig"))
    write_raw(in_tmp, "whatsapp/latin1.txt", android(13, 3, 2023, "9:00", "Feña", "año pequeño").encode("cp1252"))
    write_raw(in_tmp, "transcripts/show.txt", "Buenas noches Viña.\n\n[Aplausos]\nGracias [Risas] de verdad.\n")
    write_raw(in_tmp, "whatsapp/empty.txt", "")
    write_raw(in_tmp, "whatsapp/photo.jpg", b"\xff\xd8\xff\x00\x00binary")
    shutil.copy(FIXTURES / "whatsapp/chat-miner/test_mmddyyyy_12hrs.txt", in_tmp / "data/raw/whatsapp/miner.txt")

    clean.main()

    kept = pl.read_parquet("data/cleaned/messages.parquet")
    rejected = pl.read_parquet("data/cleaned/rejected.parquet")
    report = read_json("metrics/clean.json")
    assert list(kept.columns[:8]) == ["source", "file", "line", "lines", "chat", "ts", "author", "text"]
    chat_rows = kept.filter(pl.col("file") == "whatsapp/chat.txt")
    assert chat_rows["text"].to_list() == ["hola, mi correo es <EMAIL>", "wena po\nsegunda línea"]
    assert kept.filter(pl.col("file") == "whatsapp/latin1.txt")["text"].to_list() == ["año pequeño"]
    assert report["files"]["whatsapp/latin1.txt"]["encoding"] == "cp1252 (fallback)"
    assert kept.filter(pl.col("source") == "transcript")["text"].to_list() == ["Buenas noches Viña.", "Gracias de verdad."]
    assert report["files"]["whatsapp/chat.txt"]["rejected"] == {"duplicate": 1, "encryption_notice": 1, "media_omitted": 1}
    assert report["files"]["whatsapp/empty.txt"]["error"] == "empty file"
    assert "binary" in report["files"]["whatsapp/photo.jpg"]["error"]
    for name, entry in report["files"].items():
        if "raw_units" in entry:
            lines = kept.filter(pl.col("file") == name)["lines"].sum() + rejected.filter(pl.col("file") == name)["lines"].sum()
            assert lines == entry["raw_units"], name
    assert read_json("metrics/gates/clean.json")["success"] is True


def test_empty_raw_folder_is_a_readable_error(in_tmp):
    (in_tmp / "data" / "raw").mkdir(parents=True)
    with pytest.raises(UserError, match="is empty"):
        clean.main()


def test_nothing_usable_lists_every_file(in_tmp):
    write_raw(in_tmp, "a.txt", "")
    write_raw(in_tmp, "b.pdf", b"%PDF-1.4\x00")
    with pytest.raises(UserError) as err:
        clean.main()
    assert "a.txt: empty file" in str(err.value) and "b.pdf" in str(err.value)
