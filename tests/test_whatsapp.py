import json
from datetime import datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from habla.readers.whatsapp import decide_date_order, detect_format, parse_whatsapp
from tests.helpers import FIXTURES, android

CHAT_MINER = FIXTURES / "whatsapp" / "chat-miner"


def parse(text: str, order: str = "auto"):
    return parse_whatsapp(text.split("\n"), order)


@pytest.mark.parametrize("name", sorted(p.name for p in CHAT_MINER.glob("*.txt")))
def test_chat_miner_fixtures_match_the_expected_parse(name):
    kept, rejected, report = parse((CHAT_MINER / name).read_text(encoding="utf-8"))
    target = json.loads((CHAT_MINER / "target.json").read_text(encoding="utf-8"))
    expected = sorted((datetime.fromisoformat(t["timestamp"]), t["author"], t["message"]) for t in target)
    # chat-miner joins continuation lines with a space; we keep the line break the author typed.
    got = sorted(
        (ts, author, text.replace("\n", " ")) for ts, author, text in kept.select("ts", "author", "text").iter_rows()
    )
    assert got == expected
    assert report["date_order_confidence"] == 1.0
    assert set(rejected["reason"]) == {"system_message", "group_event"}


def test_spanish_android_twelve_hour_clock_with_odd_spaces():
    lines = [
        android(3, 3, 2023, "8:28\u202fp.\u00a0m.", "Nico", "wena"),
        android(3, 3, 2023, "12:05 a. m.", "Cami", "¿dormías?"),
        android(3, 3, 2023, "12:10 p. m.", "Nico", "no po"),
        android(14, 3, 2023, "11:59 p.m.", "Cami", "ok"),
    ]
    kept, _, report = parse("\n".join(lines))
    assert kept["ts"].to_list() == [
        datetime(2023, 3, 3, 20, 28),
        datetime(2023, 3, 3, 0, 5),
        datetime(2023, 3, 3, 12, 10),
        datetime(2023, 3, 14, 23, 59),
    ]
    assert report["format"] == "android" and report["date_order"] == "dmy"


def test_spanish_ios_export_with_system_events_under_the_chat_name():
    text = "\n".join(
        [
            "\u200e[2/5/23, 18:30:05] Los Cabros: \u200eLos mensajes y las llamadas están cifrados "
            "de extremo a extremo.",
            '[2/5/23, 18:30:05] Los Cabros: \u200eCami cambió el asunto de "Asado" a "Asado: sábado"',
            "[2/5/23, 18:31:00] Cami: ¿Quién lleva el carbón?",
            "\u200e[2/5/23, 18:32:10] Nico: \u200eimagen omitida",
            "[2/5/23, 18:33:00] Nico: yo po\ncon el Pancho: él tiene auto",
            "[2/5/23, 18:34:00] ~\u00a0\u202a+56\u00a09\u00a08765\u20114321\u202c: ya",
            "[2/5/23, 18:35:00] Nico: Se eliminó este mensaje.",
            "[13/5/23, 9:00:00] Cami: listo <Se editó este mensaje.>",
        ]
    )
    kept, rejected, report = parse(text)
    assert report["format"] == "ios"
    assert kept["author"].to_list() == ["Cami", "Nico", "+56 9 8765-4321", "Cami"]
    assert kept["text"].to_list()[1] == "yo po\ncon el Pancho: él tiene auto"
    assert kept["text"].to_list()[3] == "listo"
    assert sorted(rejected["reason"]) == ["deleted", "encryption_notice", "group_event", "media_omitted"]


def test_android_group_events_and_media_caption():
    lines = [
        android(1, 2, 2024, "10:00", None, 'Cami cambió el asunto de "A" a "B: C"'),
        android(1, 2, 2024, "10:01", None, "Cami añadió a Nico"),
        android(1, 2, 2024, "10:02", "Nico", "IMG-20240201-WA0001.jpg (archivo adjunto)\nmiren esta wea"),
        android(1, 2, 2024, "10:03", "Nico", "<Multimedia omitido>"),
        android(1, 2, 2024, "10:04", "Cami", "null"),
        android(13, 2, 2024, "10:05", "Cami", "Hola: ¿cómo estai?"),
    ]
    kept, rejected, _ = parse("\n".join(lines))
    assert kept.select("author", "text").rows() == [("Nico", "miren esta wea"), ("Cami", "Hola: ¿cómo estai?")]
    assert rejected["reason"].to_list() == ["group_event", "group_event", "attachment", "media_omitted", "view_once"]


def test_lines_before_the_first_header_are_rejected_not_lost():
    kept, rejected, _ = parse("exported by a tool\n" + android(13, 1, 2024, "9:00", "Ana", "hola"))
    assert kept.height == 1
    assert rejected.select("line", "reason").rows() == [(1, "before_first_message")]


def test_date_order_from_evidence_when_no_field_exceeds_twelve():
    # Month-first with the day changing fastest: d2 varies, d1 is stable.
    d1 = pl.Series(["1", "1", "1", "1", "2", "2"])
    d2 = pl.Series(["3", "4", "5", "9", "1", "2"])
    d3 = pl.Series(["23"] * 6)
    decision = decide_date_order(d1, d2, d3)
    assert decision.order == "mdy" and 0.5 < decision.confidence <= 1.0


def test_forced_date_order_wins():
    kept, _, report = parse(android(2, 3, 2023, "9:00", "Ana", "hola"), order="mdy")
    assert kept["ts"][0] == datetime(2023, 2, 3, 9, 0)
    assert report["date_order_evidence"] == "forced by clean.date_order"


def test_not_a_chat():
    assert detect_format(pl.Series(["Había una vez", "un chileno"])) == (None, 0.0)


line_kinds = st.one_of(
    st.builds(
        lambda a, t: android(5, 6, 2023, "10:00", a, t),
        st.sampled_from(["Ana", "Nico", "José Pérez"]),
        st.text(min_size=0, max_size=30),
    ),
    st.builds(
        lambda t: android(5, 6, 2023, "10:01", None, t),
        st.sampled_from(["Ana salió", "Los mensajes y las llamadas están cifrados de extremo a extremo."]),
    ),
    st.text(
        alphabet=st.characters(
            blacklist_categories=["Cs"], blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
        ),
        max_size=40,
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(line_kinds, min_size=1, max_size=40))
def test_every_raw_line_is_kept_or_rejected_exactly_once(lines):
    if detect_format(pl.Series(lines, dtype=pl.String))[0] is None:
        return
    kept, rejected, _ = parse_whatsapp(lines)
    assert int(kept["lines"].sum()) + int(rejected["lines"].sum()) == len(lines)
    starts = sorted(kept["line"].to_list() + rejected["line"].to_list())
    assert len(starts) == len(set(starts)) and starts[0] == 1


def test_a_pasted_header_inside_a_message_stays_in_that_message():
    from habla.readers.whatsapp import parse_whatsapp

    lines = [f"3/3/23, 20:{minute:02d} - {'Nico' if minute % 2 else 'Cami'}: mensaje {minute}" for minute in range(30)]
    lines.insert(11, "12/01/2019, 10:00 - Soporte Banco: su clave es temporal")  # pasted: unknown author, back in time
    lines.insert(20, "3/3/23, 20:18 - Pancho: llegué")  # a one-off author, in order: a real message
    lines.insert(25, "3/3/23, 19:00 - Nico: el reloj se atrasó")  # a known author back in time: a real message
    kept, rejected, _ = parse_whatsapp(lines)
    pasted = kept.filter(pl.col("text").str.contains("su clave es temporal"))
    assert pasted.height == 1 and pasted["author"].item() == "Cami"
    assert pasted["text"].item() == "mensaje 10\n12/01/2019, 10:00 - Soporte Banco: su clave es temporal"
    assert "Soporte Banco" not in kept["author"].to_list()
    assert kept.filter(pl.col("author") == "Pancho")["text"].to_list() == ["llegué"]
    assert "el reloj se atrasó" in kept["text"].to_list()
    assert kept.height + rejected.height == 32


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["2023-01-12 16:14 - Ana: hola", "2023-01-13 09:05 - Nico: wena"], ["2023-01-12 16:14", "2023-01-13 09:05"]),
        (["26-04-2022 21:03 - Ana: hola", "27-04-2022 08:00 - Nico: wena"], ["2022-04-26 21:03", "2022-04-27 08:00"]),
        (["03.08.21, 12:30 - Ana: hola", "14.08.21, 12:31 - Nico: wena"], ["2021-08-03 12:30", "2021-08-14 12:31"]),
        (
            ["[1.1.2019, 12.00.00] Ana: hola", "[15.1.2019, 13.05.09] Nico: wena"],
            ["2019-01-01 12:00", "2019-01-15 13:05"],
        ),
        (
            ["12/01/2014 17:03:48: Ana: hola", "13/01/2014 08:00:00: Nico: wena"],
            ["2014-01-12 17:03", "2014-01-13 08:00"],
        ),
    ],
)
def test_iso_dashed_dotted_and_legacy_dates(lines, expected):
    from habla.readers.whatsapp import parse_whatsapp

    kept, rejected, _ = parse_whatsapp(lines)
    assert rejected.is_empty()
    assert kept["ts"].dt.strftime("%Y-%m-%d %H:%M").to_list() == expected
    assert kept["author"].to_list() == ["Ana", "Nico"] and kept["text"].to_list() == ["hola", "wena"]
