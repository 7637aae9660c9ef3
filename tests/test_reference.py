"""Reference and style metrics on hand-made replies whose answers can be checked by eye."""

from collections import Counter

import pytest

from habla.text.style import characteristic_ngrams, counts, distinct, voice_fidelity, words

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


def test_log_odds_threshold_by_hand():
    """Persona says `po` n times, the others `che` n times; prior alpha = 100 * n / 2n = 50 for each word.
    z(po) = 2 ln((n + 50) / 50) / sqrt(1/(n + 50) + 1/50): n = 10 gives 1.90 (not significant), n = 20 gives 3.63."""
    assert characteristic_ngrams(Counter({("po",): 10}), Counter({("che",): 10})) == set()
    assert characteristic_ngrams(Counter({("po",): 20}), Counter({("che",): 20})) == {("po",)}


def test_voice_fidelity_by_hand():
    # "ya po" and "ya": n-grams ya, po, (ya po), ya; two of the four are characteristic.
    assert voice_fidelity(["ya po", "ya"], {("po",), ("ya", "po")}) == pytest.approx(2 / 4)


def test_reference_stage_reports_hand_computed_scores(in_tmp):
    from habla.io import read_json, write_jsonl
    from stages import reference

    references = ["ya po de una", "nos vemos mañana"]
    cases = [
        {"id": f"c{i}", "prompt": [{"role": "user", "content": "¿y?"}], "reference": ref, "tuned": ref, "base": base}
        for i, (ref, base) in enumerate(zip(references, ["ya", "xx"]))
    ]
    write_jsonl(reference.GENERATIONS, cases)
    turns = [{"role": "user", "content": "che boludo"}, {"role": "assistant", "content": "ya po"}]
    write_jsonl(reference.TRAIN, [{"id": f"t{i}", "messages": turns} for i in range(20)])

    reference.main()

    report = read_json(reference.REPORT)
    assert report["prompts"] == 2
    assert report["tuned"]["chrf"] == pytest.approx(100) and report["tuned"]["bleu"] == pytest.approx(100)
    # chrF (6 character orders, beta 2, spaces ignored) summed over the corpus. Orders with n-grams on both sides:
    # 1: hypothesis y,a,x,x; matches y,a of "yapodeuna" → P = 2/4, R = 2/(9 + 14);
    # 2: "ya", "xx"; "ya" matches → P = 1/2, R = 1/(8 + 13). Means P = 0.5, R = (2/23 + 1/21) / 2; F2 = 5PR / (4P + R).
    precision, recall = 0.5, (2 / 23 + 1 / 21) / 2
    assert report["base"]["chrf"] == pytest.approx(100 * 5 * precision * recall / (4 * precision + recall))
    assert report["base"]["bleu"] < 1
    assert report["tuned"]["distinct_1"] == 1.0 and report["tuned"]["distinct_2"] == 1.0
    assert report["base"]["distinct_1"] == 1.0 and report["base"]["distinct_2"] == 0.0  # one word each: no pairs
    assert report["base"]["mean_words"] == 1.0 and report["tuned"]["mean_words"] == pytest.approx(7 / 2)
    # persona `ya po` ×20 vs others `che boludo` ×20: ya, po and (ya po) are characteristic (z = 3.2 to 3.6)
    assert report["characteristic_ngrams"] == 3
    assert report["base"]["voice_fidelity"] == pytest.approx(1 / 2)  # "ya" counts, "xx" does not: 1 of 2 n-grams
    assert (
        report["tuned"]["voice_fidelity"] == report["reference"]["voice_fidelity"] == pytest.approx(3 / 12)
    )  # ya, po, (ya po) of 7 + 5 n-grams
