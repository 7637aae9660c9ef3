"""The blind real-or-generated tests (habla/text/voice.py, the blind judge, stages/voice.py) on the bundled sample
chats: replies copied from the persona's real ones must be indistinguishable, another speaker's must not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from habla.io import read_jsonl, write_jsonl
from habla.model.judging import blind_orders, blind_summary, fill
from habla.readers.whatsapp import parse_whatsapp
from habla.text.voice import (
    attribution_summary,
    auc,
    discrimination,
    fit_attribution,
    folded_interval,
    indistinguishability,
    persona_probability,
    speaker_turns,
    unlabelled,
)
from tests.helpers import REPO, write_params

SAMPLE_CHATS = sorted((REPO / "data" / "raw" / "whatsapp").glob("Chat de WhatsApp con *.txt"))
PERSONA = "Nico"
MACHINE = [  # what an untuned assistant says: nothing like a Chilean friend on WhatsApp
    "As an AI language model, I can help you plan your trip. Here are some suggestions:",
    "I'm sorry, but I cannot provide an opinion on sports events. However, I can summarise the match.",
    "Certainly! Below is a detailed overview of public transport options in Santiago, Chile.",
    "Thank you for your question. It is important to consider several factors before deciding.",
]


def sample_conversations() -> list[dict]:
    """The sample's chats with Nico as windows of eight messages, Nico's messages as assistant turns."""
    rows = []
    for path in SAMPLE_CHATS:
        messages, _, _ = parse_whatsapp(path.read_text(encoding="utf-8").splitlines())
        turns = [
            {"role": "assistant" if author == PERSONA else "user", "content": text}
            for author, text in zip(messages["author"], messages["text"])
        ]
        for start in range(0, len(turns) - 8, 8):
            rows.append({"id": f"{path.stem}-{start}", "chat": path.name, "messages": turns[start : start + 8]})
    return rows


def held_out_cases(conversations: list[dict]) -> list[dict]:
    """Each conversation cut before its last persona reply, as `generate` writes them."""
    cases = []
    for conversation in conversations:
        messages = conversation["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0), default=None)
        if last is not None and messages[last - 1]["role"] == "user":
            cases.append({"id": conversation["id"], "prompt": messages[:last], "reference": messages[last]["content"]})
    return cases


@pytest.fixture(scope="module")
def sample():
    conversations = sample_conversations()
    train = [c for i, c in enumerate(conversations) if i % 5]
    cases = held_out_cases([c for i, c in enumerate(conversations) if not i % 5])[:40]
    for case in cases:
        case["others"] = unlabelled(case["prompt"][-1]["content"])  # a real reply, by somebody else
    return train, cases


def test_the_sample_has_enough_of_both_sides_to_test_with(sample):
    train, cases = sample
    persona, others = speaker_turns(train)
    assert len(persona) > 300 and len(others) > 300 and len(cases) == 40


def test_attribution_takes_the_persona_for_the_persona_and_the_others_for_the_others(sample):
    train, cases = sample
    classifier = fit_attribution(*speaker_turns(train))
    ceiling = attribution_summary(persona_probability(classifier, [c["reference"] for c in cases]), 200)
    floor = attribution_summary(persona_probability(classifier, [c["others"] for c in cases]), 200)
    machine = attribution_summary(persona_probability(classifier, MACHINE), 200)
    assert ceiling["attributed"] >= 0.8 and floor["attributed"] <= 0.2
    assert ceiling["attributed_ci95"][0] > floor["attributed_ci95"][1]
    assert machine["mean_probability"] < ceiling["mean_probability"]
    copied = attribution_summary(persona_probability(classifier, [c["reference"] for c in cases]), 200)
    assert copied == ceiling  # the persona's own words score exactly the ceiling


def test_speaker_labels_and_writing_tasks_never_reach_the_classifier():
    conversations = [
        {"chat": "x.txt", "messages": [{"role": "user", "content": "[Persona 2]: hola\n[Persona 3]: qué tal"}]},
        {"chat": None, "messages": [{"role": "user", "content": "Escribe un texto sobre Viña"}]},
    ]
    assert speaker_turns(conversations) == ([], ["hola\nqué tal"])
    assert unlabelled("dijo [Persona 2]: no") == "dijo [Persona 2]: no"  # only a label that opens a line


def test_copied_replies_are_indistinguishable_and_another_speakers_are_told_apart(sample):
    _, cases = sample
    real = [c["reference"] for c in cases]
    copied = discrimination(real, real, folds=5, resamples=200)
    assert copied["auc"] == 0.5 and copied["indistinguishability"] == 1.0
    others = discrimination(real, [c["others"] for c in cases], folds=5, resamples=200)
    assert others["auc"] > 0.75 and others["auc_ci95"][0] > 0.5
    machine = discrimination(real[:20], [MACHINE[i % 4] for i in range(20)], folds=5, resamples=200)
    assert machine["auc"] > 0.95 and machine["indistinguishability"] < 0.1


def test_auc_by_hand_and_folded_into_indistinguishability():
    # generated 0.9 and 0.8 beat all three real scores; 0.4 beats 0.1 and 0.2: 8 of 9 pairs
    scores = np.array([[0.1, 0.9], [0.2, 0.8], [0.6, 0.4]])
    assert auc(scores) == pytest.approx(8 / 9)
    assert auc(np.array([[0.3, 0.3], [0.5, 0.5]])) == 0.5  # ties count half
    assert auc(scores[:, ::-1]) == pytest.approx(1 / 9)  # the generated ones look *more* like the person
    assert indistinguishability(8 / 9) == pytest.approx(indistinguishability(1 / 9)) == pytest.approx(2 / 9)
    assert folded_interval(0.4, 0.7) == [pytest.approx(0.6), 1.0]  # straddles ½: could be indistinguishable
    assert folded_interval(0.7, 0.9) == [pytest.approx(0.2), pytest.approx(0.6)]


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0, 1)), min_size=1, max_size=30))
def test_auc_is_scikit_learns(rows):
    from sklearn.metrics import roc_auc_score

    scores = np.array(rows)
    expected = roc_auc_score(np.tile([0, 1], len(scores)), scores.reshape(-1))
    assert auc(scores) == pytest.approx(expected)


def test_discrimination_needs_two_prompts_and_survives_blank_replies():
    assert np.isnan(discrimination(["hola"], ["chao"], folds=5, resamples=10)["auc"])
    blank = discrimination(["", " ", ""], ["", "", " "], folds=3, resamples=10)
    assert blank["auc"] == 0.5


class ScriptedJudge:
    """Answers the blind prompt by rule: `real` picks the reply that is a real reference, `always_a` says A."""

    def __init__(self, rule: str, references: set[str]):
        self.rule, self.references = rule, references
        self.calls, self.failures = 0, {}

    def choose(self, prompts, choices):
        assert choices == ("A", "B")
        self.calls += len(prompts)
        if self.rule == "always_a":
            return ["A"] * len(prompts)
        shown = [re.search(r"Respuesta A:\n(.*)\n\nRespuesta B:", p, re.S).group(1) for p in prompts]
        return ["A" if text in self.references else "B" for text in shown]


def blind_cases() -> list[dict]:
    return [
        {"id": str(i), "prompt": [{"role": "user", "content": "¿vamos?"}], "reference": real, "tuned": fake}
        for i, (real, fake) in enumerate([("ya po", "Sure!"), ("de una", "Of course."), ("nica", "No, thanks.")])
    ]


def test_the_blind_judges_letters_map_to_the_real_reply_in_both_orders():
    cases = blind_cases()
    template = (REPO / "prompts" / "judge_blind.es.txt").read_text(encoding="utf-8")
    knows = ScriptedJudge("real", {c["reference"] for c in cases})
    orders = blind_orders(knows, template, cases, "tuned")
    assert orders == {"real_as_a": ["real"] * 3, "real_as_b": ["real"] * 3}
    assert blind_summary(orders, 100)["accuracy"] == 1.0 and blind_summary(orders, 100)["first_position_bias"] == 0.5
    lazy = blind_summary(blind_orders(ScriptedJudge("always_a", set()), template, cases, "tuned"), 100)
    assert lazy["accuracy"] == 0.5 and lazy["first_position_bias"] == 1.0 and lazy["judgments"] == 6
    assert "ya po" in fill(template, cases[0], "ya po", "Sure!") and "{reference}" not in template


def test_failed_blind_judgments_are_counted_never_scored():
    orders = {"real_as_a": ["real", None, None], "real_as_b": ["generated", "real", None]}
    summary = blind_summary(orders, 100)
    assert summary["n"] == 2 and summary["failed"] == 3 and summary["judgments"] == 3
    assert summary["accuracy"] == 0.75  # prompt 1: one of two right; prompt 2: its one answered order right


def write_voice_project(root: Path, train: list[dict], cases: list[dict], judge: dict) -> None:
    write_params(root, {"voice": {"folds": 4}, "evaluate": {"bootstrap": 200}, "judge": judge})
    write_jsonl(root / "data" / "splits" / "train.jsonl", train)
    write_jsonl(root / "metrics" / "generations.jsonl", cases)


def test_the_voice_stage_reports_every_model_and_the_blind_judge_through_an_endpoint(sample, endpoint, in_tmp, caplog):
    from stages import voice

    train, cases = sample
    references = {c["reference"] for c in cases}

    def knows_the_person(prompt: str) -> str:
        shown = re.search(r"Respuesta A:\n(.*)\n\nRespuesta B:", prompt, re.S).group(1)
        return json.dumps({"veredicto": "A" if shown in references else "B"})

    endpoint.script = knows_the_person
    generations = [
        {
            "id": c["id"],
            "prompt": c["prompt"],
            "reference": c["reference"],
            "tuned": c["reference"],
            "base": c["others"],
        }
        for c in cases
    ]
    judge = {"backend": "openai", "model": "juez", "base_url": endpoint.url, "max_retries": 0}
    write_voice_project(in_tmp, train, generations, judge)
    voice.main()
    report = json.loads((in_tmp / "metrics" / "voice.json").read_text())
    attribution, told = report["attribution"], report["discrimination"]
    assert attribution["tuned"]["attributed"] == attribution["ceiling"]["attributed"]
    assert attribution["base"]["attributed"] == attribution["floor"]["attributed"]
    assert told["tuned"]["auc"] == 0.5 and told["base"]["auc"] > 0.75 and told["base"]["folds"] == 4
    assert report["judge"]["base"]["accuracy"] == 1.0  # the real reply found in both orders
    assert report["judge"]["tuned"]["accuracy"] == 0.5  # two identical replies: A both times, right once
    # a copied reply shows the same prompt in both orders: asked once, the second order read from the cache
    assert report["judge"]["calls"] == 3 * len(cases) and report["judge"]["cache_hits"] == len(cases)
    assert "preferred" not in report["judge"]
    bars = json.loads((in_tmp / "metrics" / "plots" / "voice_attribution.json").read_text())
    assert [b["replies"] for b in bars] == [
        "the persona, real (ceiling)",
        "base",
        "tuned",
        "other speakers, real (floor)",
    ]
    told_apart = json.loads((in_tmp / "metrics" / "plots" / "voice_told_apart.json").read_text())
    assert {row["test"] for row in told_apart} >= {"tuned: classifier AUC", "base: judge"}
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert not any(c["reference"] in logged for c in cases if len(c["reference"]) > 12)  # numbers only, no text
    endpoint.calls = 0
    voice.main()
    assert endpoint.calls == 0  # every blind verdict is cached


def test_the_voice_stage_says_what_it_needs_without_a_chat(in_tmp):
    from habla.errors import UserError
    from stages import voice

    documents_only = [
        {"chat": None, "messages": [{"role": "user", "content": "Escribe"}, {"role": "assistant", "content": "Texto"}]}
    ]
    write_voice_project(in_tmp, documents_only, [{"id": "1", "prompt": [], "reference": "x", "tuned": "y"}], {})
    with pytest.raises(UserError, match="chat export"):
        voice.main()
    write_jsonl(in_tmp / "metrics" / "generations.jsonl", [])
    with pytest.raises(UserError, match="generate stage wrote no replies"):
        voice.main()
    assert read_jsonl(in_tmp / "data" / "splits" / "train.jsonl") == documents_only
