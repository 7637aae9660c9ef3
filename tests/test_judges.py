"""The judge's answer parsing, failure accounting and the OpenAI backend against real local HTTP servers."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from habla.errors import UserError
from habla.model.judge_backends import OpenAIJudge, parse_choice
from habla.model.judging import fill, summarise, verdict, win_rate
from habla.params import Judge
from tests.helpers import update_params


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ('{"veredicto": "B"}', "B"),
        ('```json\n{"verdict": "a"}\n```', "A"),
        ("Las dos suenan parecido. [[C]]", "C"),
        ('{"veredicto": "D"}', None),
        ("no sé", None),
        ("", None),
    ],
)
def test_parse_choice_reads_json_then_the_bracket_fallback(text, choice):
    assert parse_choice(text) == choice


@given(st.text())
def test_parse_choice_never_raises_and_only_returns_a_valid_choice(text):
    assert parse_choice(text) in ("A", "B", "C", None)


def test_an_abstention_in_either_order_is_a_tie():
    assert verdict("A", "C") == verdict("C", "B") == verdict("C", "C") == "tie"
    assert verdict(None, "C") == verdict("C", None) == "failed"


def test_failed_orders_are_failures_not_losses():
    assert verdict("A", "B") == "tuned" and verdict("B", "A") == "base" and verdict("A", "A") == "tie"
    assert verdict(None, "B") == "failed" and verdict("A", None) == "failed"
    outcomes = ["tuned", "failed", "base", "tie", "failed"]
    assert win_rate(outcomes) == pytest.approx(0.5)
    report = summarise(outcomes, Judge(), 200)
    assert (report["n"], report["failed"], report["wins"], report["losses"], report["ties"]) == (3, 2, 1, 1, 1)


def test_template_with_json_braces_is_filled_literally():
    case = {"prompt": [{"role": "user", "content": "hola"}], "reference": "wena"}
    text = fill('{conversation} | {reference} | {answer_a} / {answer_b} | {"veredicto": "A"}', case, "x", "y")
    assert text == 'Usuario: hola | wena | x / y | {"veredicto": "A"}'


def test_the_judge_reads_the_conversation_with_each_speaker_named_one_turn_a_line():
    turns = [
        {"role": "system", "content": "Eres Nico."},
        {"role": "user", "content": "¿vamos?"},
        {"role": "assistant", "content": "ya po"},
        {"role": "user", "content": "¿a qué hora?"},
    ]
    case = {"prompt": turns, "reference": "a las ocho"}
    assert (
        fill("{conversation}", case, "")
        == "Sistema: Eres Nico.\nUsuario: ¿vamos?\nPersona: ya po\nUsuario: ¿a qué hora?"
    )
    assert fill("{answer}", case, "la de Nico") == "la de Nico"  # rating templates name the one answer {answer}


def settings(url: str, **extra) -> Judge:
    return dataclasses.replace(
        Judge(backend="openai", model="juez", base_url=url, timeout_s=0.5, max_retries=0), **extra
    )


def test_openai_backend_parses_counts_failures_and_caches(endpoint, tmp_path):
    prompts = ["JSON 1", "BRACKETS 2", "VAGUE 3", "ERROR 4", "GARBAGE 5", "SLOW 6", "plain 7"]
    judge = OpenAIJudge(settings(endpoint.url), tmp_path / "cache.jsonl")
    assert judge.choose(prompts) == ["B", "A", None, None, None, None, "C"]
    assert judge.calls == 7 and endpoint.calls == 7
    assert judge.failures == {"no_answer": 3, "not_understood": 1}  # ERROR, GARBAGE, SLOW; VAGUE
    again = OpenAIJudge(settings(endpoint.url), tmp_path / "cache.jsonl")
    endpoint.calls = 0
    assert again.choose(["JSON 1", "BRACKETS 2", "plain 7", "VAGUE 3"]) == ["B", "A", "C", None]
    assert endpoint.calls == 0 and again.cache_hits == 4  # an answer received is never bought again, understood or not
    assert again.choose(["ERROR 4", "SLOW 6"]) == [None, None]
    assert endpoint.calls == 2  # answers that never arrived are asked for again
    endpoint.calls = 0
    other_model = OpenAIJudge(settings(endpoint.url, model="otro"), tmp_path / "cache.jsonl")
    other_model.choose(["JSON 1"])
    assert endpoint.calls == 1


def test_openai_backend_retries_server_errors_with_backoff(endpoint, tmp_path):
    judge = OpenAIJudge(settings(endpoint.url, max_retries=2), tmp_path / "cache.jsonl")
    assert judge.choose(["ERROR"]) == [None]
    assert endpoint.calls == 3


def test_openai_backend_needs_its_key_variable_and_url(monkeypatch, tmp_path):
    monkeypatch.delenv("JUDGE_KEY_FOR_TEST", raising=False)
    with pytest.raises(UserError, match="JUDGE_KEY_FOR_TEST"):
        OpenAIJudge(settings("http://127.0.0.1:9/v1", api_key_env="JUDGE_KEY_FOR_TEST"), tmp_path / "c.jsonl")
    with pytest.raises(UserError, match="base_url is empty"):
        OpenAIJudge(settings(""), tmp_path / "c.jsonl")


@pytest.mark.parametrize(
    ("text", "grade"),
    [
        ('{"nota": 7}', 7.0),
        ("[[10]]", 10.0),
        ("Le doy [[3]] porque...", 3.0),
        (" 8. ", 8.0),
        ('{"nota": 11}', None),
        ("once", None),
        ("7 de 10", None),
    ],
)
def test_parse_grade(text, grade):
    from habla.model.judge_backends import parse_grade

    assert parse_grade(text) == grade


def test_openai_backend_rates_through_the_same_cache(endpoint, tmp_path):
    from habla.model.judge_backends import parse_grade

    judge = OpenAIJudge(settings(endpoint.url), tmp_path / "cache.jsonl")
    assert judge.rate(["GARBAGE", "plain"]) == [None, None]
    assert parse_grade("[[C]]") is None


def test_judge_summary_counts_outcomes_with_an_interval_and_position_consistency():
    from habla.model.judging import summarise

    outcomes = ["tuned"] * 6 + ["tie"] * 2 + ["base"] * 2 + ["failed"]
    report = summarise(outcomes, Judge(), 500)
    assert (report["n"], report["wins"], report["ties"], report["losses"], report["failed"]) == (10, 6, 2, 2, 1)
    assert (report["backend"], report["judge_model"]) == ("local", "base")
    assert report["adjusted_win_rate"] == pytest.approx((6 + 0.5 * 2) / 10)
    assert report["position_consistency"] == pytest.approx(8 / 10)  # ties are the pairs whose verdict flipped
    low, high = report["adjusted_win_rate_ci95"]
    assert low < 0.7 < high and 0.3 < low and high <= 1.0
    wider = summarise(outcomes[:5] + ["base"], Judge(), 500)["adjusted_win_rate_ci95"]
    assert wider[1] - wider[0] > high - low


def test_rating_summary_separates_failures_from_grades():
    from habla.model.judging import rating_summary

    summary = rating_summary([4.0, None, 6.0, 8.0], 200)
    assert summary["mean"] == pytest.approx(6.0) and summary["n"] == 3 and summary["failed"] == 1
    assert 4.0 <= summary["ci95"][0] <= summary["ci95"][1] <= 8.0


def test_local_rating_is_the_expected_grade_over_whole_answers():
    import torch

    from habla.model.builtin import build_model, train_tokenizer
    from habla.model.judge_backends import LocalJudge, render_prompt
    from habla.params import Builtin

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["del 1 al 10, le doy un 10", "un 7 o un 3, wena po", "12345678910"] * 30, 300)
    model = build_model(tokenizer, Builtin(hidden_size=32, layers=1, heads=2, context=128)).eval()
    prompts = ["Califica: wena po", "Califica otra vez, más largo: ya po cachai"]
    grades = LocalJudge(model, tokenizer, batch_size=7).rate(prompts)
    for prompt, grade in zip(prompts, grades):
        context = list(render_prompt(tokenizer, prompt))
        logprobs = []
        for option in range(1, 11):
            answer = tokenizer.encode(str(option), add_special_tokens=False) + [tokenizer.eos_token_id]
            ids = torch.tensor([context + answer])
            with torch.no_grad():
                log_softmax = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            positions = range(len(context) - 1, len(context) + len(answer) - 1)
            logprobs.append(sum(log_softmax[p, ids[0, p + 1]].item() for p in positions))
        weights = torch.softmax(torch.tensor(logprobs), dim=0)
        assert grade == pytest.approx(float((weights * torch.arange(1, 11)).sum()), rel=1e-4)
        assert 1.0 <= grade <= 10.0


def scripted_judge_run(in_tmp, endpoint, script) -> dict:
    """The judge stage on hand-written generations, against an endpoint that answers with `script(prompt)`."""

    from habla.io import read_json, write_jsonl
    from stages import judge

    update_params(in_tmp, "judge", backend="openai", model="juez", base_url=endpoint.url, max_retries=0, timeout_s=5)
    update_params(in_tmp, "evaluate", bootstrap=200)
    cases = [
        {
            "id": f"c{i}",
            "source": "whatsapp",
            "prompt": [{"role": "user", "content": f"¿vamos {i}?"}],
            "reference": "ya po",
            "base": f"respuesta genérica número {i}",
            "tuned": f"wena po, de una {i}",
        }
        for i in range(12)
    ]
    write_jsonl(judge.GENERATIONS, cases)
    endpoint.script = script
    judge.main()
    return read_json(judge.REPORT)


def tuned_answer_position(prompt: str) -> str:
    """Which of the two answers in a filled pairwise prompt is the fine-tuned one ("wena po, de una")."""
    return "A" if prompt.index("wena po, de una") < prompt.index("respuesta genérica") else "B"


def test_judge_stage_reports_only_wins_when_the_judge_always_prefers_the_fine_tuned_reply(in_tmp, endpoint):
    def script(prompt):
        if "respuesta genérica" in prompt and "wena po" in prompt:
            return json.dumps({"veredicto": tuned_answer_position(prompt)})
        return '{"nota": 9}' if "wena po" in prompt else '{"nota": 3}'

    report = scripted_judge_run(in_tmp, endpoint, script)
    assert (report["wins"], report["ties"], report["losses"], report["failed"]) == (12, 0, 0, 0)
    assert report["adjusted_win_rate"] == 1.0 and report["position_consistency"] == 1.0
    assert report["rating"]["tuned"]["mean"] == 9.0 and report["rating"]["base"]["mean"] == 3.0
    assert report["calls"] == 48 and report["failed_by_reason"] == {}


def test_judge_stage_reports_only_ties_when_the_judge_always_answers_a(in_tmp, endpoint):
    report = scripted_judge_run(in_tmp, endpoint, lambda prompt: '{"veredicto": "A", "nota": 5}')
    assert (report["wins"], report["ties"], report["losses"]) == (0, 12, 0)
    assert report["adjusted_win_rate"] == 0.5 and report["position_consistency"] == 0.0


def test_judge_stage_counts_an_endpoint_that_fails_as_failed_never_as_losses(in_tmp, endpoint):
    report = scripted_judge_run(in_tmp, endpoint, lambda prompt: "no sé")
    assert (report["wins"], report["ties"], report["losses"], report["failed"]) == (0, 0, 0, 12)
    assert report["failed_by_reason"] == {"not_understood": 48}


def opponent_cases(missing: set[int]) -> list[dict]:
    return [
        {
            "id": f"c{i}",
            "source": "keywords",
            "prompt": [{"role": "user", "content": f"Escribe un chiste en español chileno sobre: el metro {i}."}],
            "reference": "ya po",
            "base": f"respuesta genérica número {i}",
            "tuned": f"wena po, de una {i}",
            "opponent": None if i in missing else f"chiste del rival {i}",
        }
        for i in range(20)
    ]


def test_against_an_opponent_each_model_is_judged_in_both_orders_and_tuned_minus_base_is_paired(in_tmp, endpoint):
    """The seed's measurement done right: base and tuned each against a stronger third model, with intervals,
    the paired difference over the same prompts, and prompts the opponent never answered counted as failed."""
    from habla.io import read_json, read_jsonl, write_jsonl
    from stages import judge

    def prefers(prompt: str, better: str, worse: str) -> str:
        return "A" if prompt.index(better) < prompt.index(worse) else "B"

    def script(prompt: str) -> str:
        number = int(re.search(r"el metro (\d+)", prompt).group(1))
        if "califica" in prompt:  # a rating prompt
            return '{"nota": 6}'
        if "rival" in prompt and "wena po" in prompt:  # tuned vs opponent: tuned wins on prompts 0–13
            winner = ("wena po", "chiste del rival") if number < 14 else ("chiste del rival", "wena po")
            return json.dumps({"veredicto": prefers(prompt, *winner)})
        if "rival" in prompt and "genérica" in prompt:  # base vs opponent: base wins on prompts 0–4 only
            winner = (
                ("respuesta genérica", "chiste del rival") if number < 5 else ("chiste del rival", "respuesta genérica")
            )
            return json.dumps({"veredicto": prefers(prompt, *winner)})
        return '{"veredicto": "C"}'

    update_params(in_tmp, "judge", backend="openai", model="juez", base_url=endpoint.url, max_retries=0, timeout_s=5)
    update_params(in_tmp, "evaluate", bootstrap=500)
    write_jsonl(judge.GENERATIONS, opponent_cases(missing={18, 19}))
    endpoint.script = script
    judge.main()
    report = read_json(judge.REPORT)
    versus = report["opponent"]
    assert (versus["tuned"]["wins"], versus["tuned"]["losses"], versus["tuned"]["failed"]) == (14, 4, 2)
    assert (versus["base"]["wins"], versus["base"]["losses"], versus["base"]["failed"]) == (5, 13, 2)
    assert versus["tuned"]["adjusted_win_rate"] == pytest.approx(14 / 18)
    low, high = versus["tuned"]["adjusted_win_rate_ci95"]
    assert low < 14 / 18 < high
    paired = versus["tuned_minus_base"]
    assert paired["n"] == 18 and paired["left_out"] == 2
    assert paired["mean"] == pytest.approx((14 - 5) / 18) and (paired["tuned_better"], paired["base_better"]) == (9, 0)
    assert paired["sign_test_p"] == pytest.approx(2 / 2**9, abs=1e-6)
    assert paired["ci95"][0] > 0, "nine prompts where only the tuned model beat the opponent: an interval above zero"
    assert report["failed_by_reason"] == {"no_reply": 4} and report["rating"]["opponent"]["failed"] == 2
    assert (report["wins"], report["ties"], report["losses"]) == (0, 20, 0)
    assert report["calls"] == 2 * 20 + 2 * 18 * 2 + 20 + 20 + 18  # pairs in both orders, then the ratings
    judgments = read_jsonl("metrics/judgments.jsonl")
    assert {j["pair"] for j in judgments} == {"tuned vs base", "tuned vs opponent", "base vs opponent"}
    assert len(judgments) == 60


def test_the_opponent_answers_each_prompt_once_and_only_failures_are_asked_again(in_tmp, endpoint):
    from habla.params import Opponent
    from stages.generate import opponent_replies

    cases = opponent_cases(missing=set())
    cases[3]["prompt"][0]["content"] += " ERROR"
    endpoint.script = lambda prompt: f"  respuesta del rival a: {prompt[-12:]}  "
    settings = Opponent(base_url=endpoint.url, model="rival", timeout_s=5, max_retries=0)
    replies, endings = opponent_replies(cases, settings)
    assert replies[3] is None and all(r.startswith("respuesta del rival") for i, r in enumerate(replies) if i != 3)
    # how its replies ended, by the server's own finish_reason (the fake always says "stop")
    assert endings["no_reply"] == 1 and endings["replies"] == endings["stopped"] == len(cases) - 1
    assert endings["cut"] == endings["finish_unknown"] == 0
    calls = endpoint.calls
    assert opponent_replies(cases, settings) == (replies, endings)  # the cache keeps the finish reasons too
    assert endpoint.calls - calls == 1, "answers received are reused; the HTTP 500 is asked again"


def test_the_pairs_judged_follow_the_models_that_answered():
    from habla.model.judging import comparisons

    ours = {"base": "genérica", "tuned": "wena po"}
    assert comparisons([ours]) == (["base", "tuned"], [("tuned", "base")])
    models, pairs = comparisons([{**ours, "preferred": "ya po", "opponent": None}, {**ours, "preferred": "ya"}])
    assert models == ["base", "tuned", "preferred", "opponent"]
    assert pairs == [
        ("tuned", "base"),
        ("preferred", "tuned"),
        ("tuned", "opponent"),
        ("base", "opponent"),
        ("preferred", "opponent"),
    ]
    models, pairs = comparisons([{**ours, "conditioned": "wena"}])
    assert models == ["base", "conditioned", "tuned"], "a persona's own adapter (tuned) beside the conditioned one"
    assert pairs == [("tuned", "base"), ("tuned", "conditioned")]


class FirstShownJudge:
    """Always picks the answer shown first (pure position bias), and counts what it was asked."""

    def __init__(self):
        self.failures, self.calls = Counter(), 0

    def choose(self, prompts):
        self.calls += len(prompts)
        return ["A"] * len(prompts)


def test_a_pair_is_judged_in_both_orders_and_a_missing_reply_fails_without_asking():
    from habla.model.judging import judged_pair, outcome_counts

    cases = [
        {"prompt": [{"role": "user", "content": "¿vamos?"}], "reference": "ya", "tuned": "wena", "opponent": rival}
        for rival in ("no", None, "tal vez")
    ]
    judge = FirstShownJudge()
    result = judged_pair(judge, "A: {answer_a} B: {answer_b}", cases, ("tuned", "opponent"))
    assert result["as_a"] == ["A", None, "A"] and result["as_b"] == ["A", None, "A"]
    assert result["outcomes"] == ["tie", "failed", "tie"], "a verdict that flips with the order is a tie"
    assert judge.calls == 4 and judge.failures == {"no_reply": 1}
    counts = outcome_counts({("tuned", "opponent"): result})
    assert counts == {"tuned vs opponent": {"win": 0, "tie": 2, "loss": 0, "failed": 1}}
