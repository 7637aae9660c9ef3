import polars as pl
import pytest

from habla.params import Redaction
from habla.text.redact import redact_frame


def redacted(*texts, **overrides):
    frame = pl.DataFrame({"text": list(texts)}, schema={"text": pl.String})
    return redact_frame(frame, Redaction(**overrides))["text"].to_list()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mi número nuevo es +56 9 8765 4321", "mi número nuevo es <TELEFONO>"),
        ("llámame al 9 8765 4321 po", "llámame al <TELEFONO> po"),
        ("llama al (212) 555-0123", "llama al <TELEFONO>"),
        ("tel 600 123 456 en Madrid", "tel <TELEFONO> en Madrid"),
        ("mi cel +52 1 55 1234 5678 ok", "mi cel <TELEFONO> ok"),
        ("escríbeme a nico.perez@correo.cl", "escríbeme a <EMAIL>"),
        ("mira https://www.ejemplo.cl/x?y=1 y www.tienda.cl/o", "mira <URL> y <URL>"),
        ("mi rut es 12.345.678-5", "mi rut es <RUT>"),
        ("CURP GODE561231HDFRRN09 ahí", "CURP <CURP> ahí"),
        ("DNI 12345678Z y NIE X1234567L", "DNI <DNI> y NIE <DNI>"),
    ],
)
def test_personal_data_is_replaced(text, expected):
    assert redacted(text) == [expected]


@pytest.mark.parametrize(
    "text",
    ["cuesta $12.345.678 pesos", "nací el 12/03/1990 a las 10", "el 2023 fue 1234567 veces mejor", "wena 😂 jajaja"],
)
def test_amounts_dates_and_plain_text_are_left_alone(text):
    assert redacted(text) == [text]


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("me debe $ 912345678 todavía", "912345678"),
        ("el depto vale $ 98.765.4321", "98.765.4321"),
        ("te transferí $ 3125551234", "3125551234"),
        ("son € 612 345 678 al año", "612 345 678"),
    ],
)
def test_amounts_that_phonenumbers_takes_for_phones_are_left_alone(text, digits):
    """Each of these digit runs is a VALID number in some configured region; the currency sign says it is money."""
    import phonenumbers

    assert any(
        phonenumbers.PhoneNumberMatcher(digits, region, leniency=phonenumbers.Leniency.VALID).has_next()
        for region in Redaction().phone_regions
    )
    assert redacted(text) == [text]


def test_a_phone_after_an_amount_in_the_same_message_is_still_redacted():
    # in Spain's numbering 912345678 is a valid number, found first: the scan must go on past it
    text = "me debe $ 912345678, llámame al +56 9 8765 4321"
    assert redacted(text, phone_regions=["ES"]) == ["me debe $ 912345678, llámame al <TELEFONO>"]


def test_each_kind_can_be_switched_off():
    text = "a@b.cl https://x.cl +56 9 8765 4321"
    assert redacted(text, emails=False, urls=False, phones=False) == [text]
    assert redacted(text, phones=False) == ["<EMAIL> <URL> +56 9 8765 4321"]
