"""WhatsApp's long tail: placeholders in app languages the locale table lacks, attachment forms, venue shares, and
header forms other parsers' test suites show (whatsapp-chat-parser's format list, whats_json's exports).

Every export is written by hand: a Chilean chat as a phone set to another language writes it, WhatsApp's own
strings copied from what those phones write (each line says which), the persona's words our own.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from habla.readers.whatsapp import parse_whatsapp

LRM, RLM = "\u200e", "\u200f"


def ios(stamp: str, author: str, text: str, marked_line: bool = False) -> str:
    return f"{LRM if marked_line else ''}[{stamp}] {author}: {text}"


# iOS in a language the locale table does not know: each placeholder opens its text (and its line) with a mark.
FOREIGN_IOS = {
    "thai": {
        "encryption": "ข้อความและการโทรได้รับการเข้ารหัสจากต้นทางถึงปลายทาง",
        "image": "ไม่มีรูปภาพ",
        "sticker": "ไม่มีสติกเกอร์",
        "document": "ละเว้นเอกสาร",
        "deleted": "คุณได้ลบข้อความนี้",
        "location": "ตำแหน่งที่ตั้ง",
    },
    "japanese": {
        "encryption": "メッセージと通話はエンドツーエンド暗号化されています。",
        "image": "画像は含まれていません",
        "sticker": "スタンプは含まれていません",
        "document": "ドキュメントは含まれていません",
        "deleted": "このメッセージを削除しました。",
        "location": "位置情報",
    },
    "hindi": {
        "encryption": "संदेश और कॉल एंड-टू-एंड एन्क्रिप्टेड हैं।",
        "image": "इमेज छोड़ी गई",
        "sticker": "स्टिकर छोड़ा गया",
        "document": "दस्तावेज़ छोड़ा गया",
        "deleted": "आपने यह मैसेज डिलीट किया",
        "location": "लोकेशन",
    },
    "indonesian": {
        "encryption": "Pesan dan panggilan terenkripsi secara end-to-end.",
        "image": "gambar tidak disertakan",
        "sticker": "stiker tidak disertakan",
        "document": "dokumen tidak disertakan",
        "deleted": "Anda menghapus pesan ini.",
        "location": "Lokasi",
    },
    "ukrainian": {
        "encryption": "Повідомлення та дзвінки захищено наскрізним шифруванням.",
        "image": "зображення пропущено",
        "sticker": "наліпку пропущено",
        "document": "документ пропущено",
        "deleted": "Ви видалили це повідомлення.",
        "location": "Геопозиція",
    },
}


def foreign_ios_export(words: dict[str, str], stamp=lambda minute: f"3/27/22, 21:{minute:02d}:05") -> list[str]:
    return [
        ios(stamp(1), "Cami", LRM + words["encryption"]),
        ios(stamp(2), "Nico", "wena, ¿cómo estai?"),
        ios(stamp(3), "Nico", LRM + words["image"], marked_line=True),
        ios(stamp(4), "Cami", LRM + words["sticker"], marked_line=True),
        ios(stamp(5), "Nico", f"informe final.pdf • {LRM}3 {LRM}{words['document']}", marked_line=True),
        ios(stamp(6), "Cami", LRM + words["deleted"]),
        ios(stamp(7), "Cami", f"{LRM}{words['location']}: https://maps.google.com/?q=-33.4372,-70.6506"),
        ios(stamp(8), "Nico", "Cerro Santa Lucía (Santiago, Chile): https://foursquare.com/v/4b0587fdf964a520a6a722e3"),
        ios(stamp(9), "Cami", "ya po, nos vemos allá 🙌"),
    ]


FOREIGN_REASONS = [
    "system_message",  # the encryption notice: text marked, line not
    "media_omitted",
    "media_omitted",
    "media_omitted",  # a document with its page count
    "system_message",  # a deleted message
    "location",  # a marked text with a link
    "location",  # a shared venue
]


@pytest.mark.parametrize("language", sorted(FOREIGN_IOS))
def test_ios_placeholders_in_any_language_are_told_by_their_marks(language):
    kept, rejected, report = parse_whatsapp(foreign_ios_export(FOREIGN_IOS[language]))
    assert kept.select("author", "text").rows() == [
        ("Nico", "wena, ¿cómo estai?"),
        ("Cami", "ya po, nos vemos allá 🙌"),
    ]
    assert rejected.sort("line")["reason"].to_list() == FOREIGN_REASONS
    assert report["format"] == "ios"


def test_right_to_left_exports_mark_with_rlm_and_the_locale_table_still_names_what_it_knows():
    arabic_digits = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")

    def stamp(minute: int) -> str:
        return f"27{RLM}/3{RLM}/2022، 9:{minute:02d}:00 م".translate(arabic_digits)

    lines = [
        f"[{stamp(1)}] Nico: hola po",
        f"{RLM}[{stamp(2)}] Nico: {RLM}لم يتم تضمين الصورة",  # image omitted: unknown wording, both marks
        f"[{stamp(3)}] Cami: {RLM}تم حذف هذه الرسالة",  # "this message was deleted": in the table
        f"[{stamp(4)}] Cami: {RLM}رسالة نظام لا يعرفها الجدول",  # a system line the table lacks: marked text
    ]
    kept, rejected, _ = parse_whatsapp(lines)
    assert kept["text"].to_list() == ["hola po"]
    assert rejected.sort("line")["reason"].to_list() == ["media_omitted", "deleted", "system_message"]
    assert kept["ts"].item() == datetime(2022, 3, 27, 21, 1)


def test_without_the_marks_the_same_lines_stay_messages():
    """No mark, no evidence: text that merely reads like a placeholder in an unknown language is the person's."""
    lines = [line.replace(LRM, "") for line in foreign_ios_export(FOREIGN_IOS["thai"])]
    kept, rejected, _ = parse_whatsapp(lines)
    assert rejected["reason"].to_list() == ["location"]  # the venue share needs no mark
    assert kept.height == len(lines) - 1


def test_a_caption_under_a_marked_placeholder_is_kept_and_an_edit_notice_is_no_evidence():
    lines = [
        ios("3/27/22, 21:00:00", "Nico", LRM + "画像は含まれていません", marked_line=True),
        "el completo más grande de Santiago",
        ios("3/27/22, 21:01:00", "Nico", f"a las 8.30 {LRM}<このメッセージは編集されました>"),
        ios("3/27/22, 21:02:00", "Cami", "te mando el 01.pdf mañana"),
    ]
    kept, rejected, _ = parse_whatsapp(lines)
    assert kept.select("line", "text").rows() == [
        (2, "el completo más grande de Santiago"),
        (3, f"a las 8.30 {LRM}<このメッセージは編集されました>".replace(LRM, "")),
        (4, "te mando el 01.pdf mañana"),
    ]
    assert rejected.select("line", "reason").rows() == [(1, "media_omitted")]


def test_attachments_with_spaces_in_the_brackets_and_a_document_with_its_page_count():
    lines = [
        "3/6/18, 1:55 p.m. - Nico: < attached: 00000042-PHOTO-2020-06-07-15-13-20.jpg >",
        "[3/6/18, 1:56:00 PM] Nico: Resume.pdf • 2 pages <attached: 00000047-Resume.pdf>",
        f"{LRM}[3/6/18, 1:57:00 PM] Cami: {LRM}<เอกสารแนบ: 00000048-PHOTO-2020-06-07-15-13-21.jpg>",
        "[3/6/18, 1:58:00 PM] Cami: ¿y eso?",
    ]
    kept, rejected, _ = parse_whatsapp(lines[:1])
    assert kept.height == 0 and rejected["reason"].to_list() == ["attachment"]
    kept, rejected, _ = parse_whatsapp(lines[1:])
    assert kept["text"].to_list() == ["¿y eso?"]
    assert rejected["reason"].to_list() == ["attachment", "attachment"]


def test_venue_shares_are_locations_on_ios_and_android_and_a_link_in_a_sentence_is_not():
    kept, rejected, _ = parse_whatsapp(
        [
            "27/03/2022, 21:46 - Nico: Cerro Santa Lucía",
            "Santiago, Chile",
            "https://foursquare.com/v/4b0587fdf964a520a6a722e3",
            "27/03/2022, 21:47 - Cami: La Piojera (Aillavilú 1030, Santiago): https://maps.google.com/?cid=1234",
            "27/03/2022, 21:48 - Nico: mira esto (te va a gustar): https://www.youtube.com/watch?v=x",
            "27/03/2022, 21:49 - Nico: nos juntamos acá",
            "https://maps.google.com/?q=-33.4372,-70.6506",
        ]
    )
    assert rejected.select("line", "lines", "reason").rows() == [(1, 3, "location"), (4, 1, "location")]
    assert kept["text"].to_list() == [
        "mira esto (te va a gustar): https://www.youtube.com/watch?v=x",
        "nos juntamos acá\nhttps://maps.google.com/?q=-33.4372,-70.6506",
    ]


def test_czech_and_german_android_lines_and_a_document_name_under_media_omitted():
    czech = [
        "23.03.22 13:31 - Zprávy a hovory jsou zabezpečeny koncovým šifrováním.",
        "27.03.22 13:44 - Nico: Tato zpráva byla odstraněna.",
        "27.03.22 15:14 - Cami: Tuto zprávu jste odstranil/a.",
        "27.03.22 21:47 - Cami: \u200eKarta.vcf (soubor byl přiložen)",
        "07.01.23 23:32 - Nico: Zmeškaný hovor",
        "07.01.23 23:33 - Nico: <Média vynechány>",
        "informe final.pdf",
        "07.01.23 23:34 - Cami: ya, lo leo",
    ]
    kept, rejected, _ = parse_whatsapp(czech)
    assert kept["text"].to_list() == ["ya, lo leo"]
    assert rejected.sort("line")["reason"].to_list() == [
        "encryption_notice",
        "deleted",
        "deleted",
        "contact_card",
        "missed_call",
        "media_omitted",
    ]
    german = [
        "29.01.18, 12:24 - Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt.",
        "29.01.18, 12:24 - Du hast Cami hinzugefügt.",
        "29.01.18, 12:25 - Nico: Diese Nachricht wurde gelöscht",
        "29.01.18, 12:26 - Cami: Verpasster Sprachanruf",
        "29.01.18, 12:27 - Cami: IMG-20180129-WA0001.jpg (Datei angehängt)",
        "el asado del sábado",
        "29.01.18, 12:28 - Nico: wena",
    ]
    kept, rejected, _ = parse_whatsapp(german)
    assert kept.select("line", "text").rows() == [(6, "el asado del sábado"), (7, "wena")]
    assert rejected.sort("line")["reason"].to_list() == [
        "encryption_notice",
        "group_event",
        "deleted",
        "missed_call",
        "attachment",
    ]


HEADER_FORMS = {
    # whatsapp-chat-parser's format list and the exports; every one 13 June 2018, 21:25:15
    "semicolon after the time": (["12.07.2017 - 22:35:22; Nico: wena"], datetime(2017, 7, 12, 22, 35, 22), "legacy"),
    "dotted with spaces, no dash": (["13. 6. 2018. 21:25:15 Nico: wena"], datetime(2018, 6, 13, 21, 25, 15), "bare"),
    # automaciej/whatsapp-archive#4: `02-12-18 22:55:45 Ewout:`
    "dashes, nothing before the author": (["13-06-18 21:25:15 Nico: wena"], datetime(2018, 6, 13, 21, 25, 15), "bare"),
    "month/year/day": (["[06/2018/13, 21:25:15] Nico: wena"], datetime(2018, 6, 13, 21, 25, 15), "ios"),
    "Japanese era": (["[6/13/R4, 21:25:15] Nico: wena"], datetime(2022, 6, 13, 21, 25, 15), "ios"),
    "Heisei era": (["[6/13/H30, 21:25:15] Nico: wena"], datetime(2018, 6, 13, 21, 25, 15), "ios"),
    "Finnish klo": (["13.6.2018 klo 21.25.15 - Nico: wena"], datetime(2018, 6, 13, 21, 25, 15), "android"),
    "dotted colon": (["13.06.18 21.25.15: Nico: wena"], datetime(2018, 6, 13, 21, 25, 15), "legacy"),
}


@pytest.mark.parametrize("form", sorted(HEADER_FORMS))
def test_header_forms_other_parsers_list(form):
    lines, when, name = HEADER_FORMS[form]
    follow = lines[0].replace("Nico: wena", "Amanda: ¿y vo?")  # an author whose name starts like "am"
    kept, rejected, report = parse_whatsapp([lines[0], follow, "segunda línea"])
    assert report["format"] == name and rejected.height == 0
    assert kept.select("author", "text").rows() == [("Nico", "wena"), ("Amanda", "¿y vo?\nsegunda línea")]
    assert kept["ts"].to_list() == [when, when]


def test_an_android_file_is_not_taken_for_the_bare_dotted_form():
    lines = ["13.6.2018. 21:25 - Nico: wena", "14.6.2018. 21:26 - Cami: hola"]
    kept, _, report = parse_whatsapp(lines)
    assert report["format"] == "android" and kept["author"].to_list() == ["Nico", "Cami"]


def test_every_line_is_kept_or_rejected_once_across_the_new_forms():
    lines = [line for export in FOREIGN_IOS.values() for line in foreign_ios_export(export)]
    kept, rejected, _ = parse_whatsapp(lines)
    assert int(kept["lines"].sum()) + int(rejected["lines"].sum()) == len(lines)
    assert kept.filter(pl.col("text").str.contains(LRM)).height == 0


def test_english_day_periods_instead_of_am_and_pm():
    """`9:15 in the morning`: English phones on a day-period clock (seen in other projects' real exports)."""
    lines = [
        "03/01/2021, 9:15 in the morning - Nico: wena",
        "03/01/2021, 3:07 in the afternoon - Cami: ¿vamos?",
        "03/01/2021, 7:00 in the evening - Nico: ya po",
        "03/01/2021, 11:40 at night - Cami: llegué",
        "04/01/2021, 12:10 at night - Nico: buenas noches",
        "04/01/2021, 12:00 noon - Cami: almuerzo",
    ]
    kept, rejected, report = parse_whatsapp(lines)
    assert report["format"] == "android" and rejected.height == 0
    assert [ts.strftime("%d %H:%M") for ts in kept["ts"]] == [
        "03 09:15",
        "03 15:07",
        "03 19:00",
        "03 23:40",
        "04 00:10",
        "04 12:00",
    ]
