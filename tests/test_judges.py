"""The judge's answer parsing, failure accounting and the OpenAI backend against real local HTTP servers."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stages.errors import UserError
from stages.judge import fill, summarise, verdict, win_rate
from stages.judges import OpenAIJudge, parse_choice
from stages.params import Judge


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


class FakeEndpoint:
    """An OpenAI-compatible server on localhost whose behaviour is chosen per prompt by a marker word."""

    def __init__(self):
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                outer.calls += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                assert body["temperature"] == 0
                if "ERROR" in prompt:
                    return self.reply(500, b'{"error": {"message": "boom"}}')
                if "GARBAGE" in prompt:
                    return self.reply(200, b"<html>not json</html>")
                if "SLOW" in prompt:
                    time.sleep(1.5)
                content = {"JSON": '{"veredicto": "B"}', "BRACKETS": "Prefiero la primera. [[A]]", "VAGUE": "depende"}
                answer = next((v for k, v in content.items() if k in prompt), "[[C]]")
                payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}
                self.reply(200, json.dumps(payload).encode())

            def reply(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def endpoint():
    fake = FakeEndpoint()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def settings(url: str, **extra) -> Judge:
    return dataclasses.replace(Judge(backend="openai", model="juez", base_url=url, timeout_s=0.5, max_retries=0), **extra)


def test_openai_backend_parses_counts_failures_and_caches(endpoint, tmp_path):
    prompts = ["JSON 1", "BRACKETS 2", "VAGUE 3", "ERROR 4", "GARBAGE 5", "SLOW 6", "plain 7"]
    judge = OpenAIJudge(settings(endpoint.url), tmp_path / "cache.jsonl")
    assert judge.choose(prompts) == ["B", "A", None, None, None, None, "C"]
    assert judge.calls == 7 and endpoint.calls == 7
    again = OpenAIJudge(settings(endpoint.url), tmp_path / "cache.jsonl")
    endpoint.calls = 0
    assert again.choose(["JSON 1", "BRACKETS 2", "plain 7"]) == ["B", "A", "C"]
    assert endpoint.calls == 0 and again.cache_hits == 3
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
