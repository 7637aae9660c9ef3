"""Reference and style metrics on hand-made replies whose answers can be checked by eye."""

from collections import Counter

import pytest

from stages.reference import characteristic_ngrams, counts, distinct, voice_fidelity, words

PERSONA = ["wena po cachai", "ya po weon", "cachai que sí po", "bacán po"] * 10
OTHERS = ["hola cómo estás", "sí claro", "qué tal el día", "muy bien gracias"] * 10


def test_words_lowercases_and_keeps_accents():
    assert words("¡Wena, CÓMO estai! 🤙") == ["wena", "cómo", "estai"]


def test_distinct_counts_unique_ngrams_over_all_ngrams():
    assert distinct(["ya po ya po"], 1) == pytest.approx(2 / 4)
    assert distinct(["ya po ya po"], 2) == pytest.approx(2 / 3)
    assert distinct([""], 1) == 0.0


def test_characteristic_ngrams_are_the_persona_s_and_not_the_shared_ones():
    chosen = characteristic_ngrams(counts(PERSONA), counts(OTHERS))
    assert ("po",) in chosen and ("cachai",) in chosen and ("ya", "po") in chosen
    assert ("hola",) not in chosen and ("claro",) not in chosen


def test_voice_fidelity_is_high_for_the_persona_s_style_and_low_for_another():
    chosen = characteristic_ngrams(counts(PERSONA), counts(OTHERS))
    assert voice_fidelity(["ya po cachai"], chosen) > 0.8
    assert voice_fidelity(["muy bien gracias"], chosen) == 0.0
    assert voice_fidelity([], chosen) == 0.0


def test_counts_include_unigrams_and_bigrams():
    assert counts(["ya po"]) == Counter({("ya",): 1, ("po",): 1, ("ya", "po"): 1})
