"""People's blind test (habla/apps/blind.py) without a browser: which pair comes next, what is stored, the report.
The page itself is clicked through in tests/test_pages.py."""

from __future__ import annotations

import json

import pytest

from habla.apps import blind
from habla.apps.blind import BlindTest, blind_report, format_report
from habla.errors import UserError
from habla.io import write_jsonl

CASES = [
    {
        "id": f"c{i}",
        "source": "whatsapp",
        "prompt": [{"role": "user", "content": f"¿vamos {i}?"}],
        "reference": f"ya po {i}",
        "base": f"Sure {i}",
        "tuned": f"de una {i}",
    }
    for i in range(3)
]


@pytest.fixture
def test(tmp_path):
    write_jsonl(tmp_path / "generations.jsonl", CASES)
    return BlindTest(tmp_path / "generations.jsonl", tmp_path / "blind" / "answers.jsonl", seed=1)


def real_side(pair: dict) -> str:
    references = {case["reference"] for case in CASES}
    return "A" if pair["replies"][0] in references else "B"


def test_each_pair_shows_the_real_reply_and_one_models_on_a_side_only_the_server_knows(test):
    pair = test.next_pair()
    case = next(c for c in CASES if c["prompt"] == pair["prompt"])
    assert sorted(pair["replies"]) in [sorted([case["reference"], case[model]]) for model in ("base", "tuned")]
    assert set(pair) == {"token", "prompt", "replies"}  # nothing says which side is real


def test_answers_hold_ids_and_choices_only_and_every_model_is_answered_at_the_same_pace(test):
    sides = []
    for _ in range(12):
        pair = test.next_pair()
        sides.append(real_side(pair))
        test.answer(pair["token"], real_side(pair))
    stored = [json.loads(line) for line in test.answers_path.read_text().splitlines()]
    assert len(stored) == 12 and all(set(row) == {"id", "model", "real", "choice", "at"} for row in stored)
    assert not any(case["reference"] in test.answers_path.read_text() for case in CASES)
    pairs = [(row["id"], row["model"]) for row in stored]
    assert sorted(set(pairs)) == sorted((c["id"], m) for c in CASES for m in ("base", "tuned"))
    assert all(pairs.count(p) == 2 for p in set(pairs))  # six pairs, each shown twice before any a third time
    assert set(sides) == {"A", "B"}  # the real reply is not always on one side
    again = BlindTest(test.generations, test.answers_path)
    assert again.summary() == test.summary() == blind_report(stored)
    assert test.summary()["models"]["tuned"]["accuracy"] == 1.0


def test_a_token_counts_once_and_a_choice_is_a_letter(test):
    pair = test.next_pair()
    with pytest.raises(ValueError, match="A or B"):
        test.answer(pair["token"], "C")
    test.answer(pair["token"], "A")
    with pytest.raises(ValueError, match="already answered or is unknown"):
        test.answer(pair["token"], "A")
    with pytest.raises(ValueError, match="already answered or is unknown"):
        test.answer(["not", "a", "token"], "B")
    assert test.summary()["answers"] == 1


def test_only_the_latest_pending_pairs_are_remembered(test):
    first = test.next_pair()
    for _ in range(blind.PENDING_LIMIT):
        test.next_pair()
    with pytest.raises(ValueError):
        test.answer(first["token"], "A")
    assert len(test.pending) == blind.PENDING_LIMIT


def test_the_report_gives_accuracy_with_a_wilson_interval_per_model():
    answers = [{"id": "c0", "model": "tuned", "real": "A", "choice": c} for c in "AAB"]
    answers += [{"id": "c1", "model": "base", "real": "B", "choice": "B"}]
    report = blind_report(answers)
    assert report["answers"] == 4 and list(report["models"]) == ["base", "tuned"]
    tuned = report["models"]["tuned"]
    assert tuned["answers"] == 3 and tuned["correct"] == 2 and tuned["accuracy"] == pytest.approx(2 / 3)
    assert tuned["accuracy_ci95"] == [pytest.approx(0.2077, abs=1e-3), pytest.approx(0.9385, abs=1e-3)]
    assert report["models"]["base"]["accuracy_ci95"][1] == 1.0 and report["models"]["base"]["accuracy_ci95"][0] > 0.2
    table = format_report(report, "answers.jsonl")
    assert "tuned" in table and "0.67" in table and "0.21–0.94" in table


def test_a_workspace_without_generations_or_answers_says_what_to_do(tmp_path, capsys):
    empty = BlindTest(tmp_path / "none.jsonl", tmp_path / "answers.jsonl")
    assert empty.state() == {
        "pair": None,
        "summary": {"answers": 0, "models": {}},
        "hint": f"{tmp_path / 'none.jsonl'} does not exist yet: run `dvc repro generate`.",
    }
    blind.main(["--report", "--answers", str(tmp_path / "answers.jsonl")])
    assert "No answers yet" in capsys.readouterr().out
    with pytest.raises(UserError, match="--report"):
        blind.main([])


def test_habla_blind_report_prints_the_table_and_json(test, capsys):
    pair = test.next_pair()
    test.answer(pair["token"], "A" if real_side(pair) == "B" else "B")
    blind.main(["--report", "--json", "--answers", str(test.answers_path)])
    (model,) = json.loads(capsys.readouterr().out)["models"].values()
    interval = [0.0, pytest.approx(0.7935, abs=1e-3)]
    assert model == {"answers": 1, "correct": 0, "accuracy": 0.0, "accuracy_ci95": interval}
