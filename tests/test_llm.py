"""Structured output every server accepts: each `response_format` form tried in turn, a refusal never counted as
a failed call, and the form that worked remembered with the endpoint's answers."""

from __future__ import annotations

import json

import pytest

from habla.llm import ChatEndpoint
from habla.params import Opponent
from tests.helpers import FakeChatHandler, serve_on_localhost, serving

SCHEMA = {"type": "object", "properties": {"veredicto": {"enum": ["A", "B", "C"]}}, "required": ["veredicto"]}


class FormServer:
    """A chat server that takes only the `response_format` forms in `accepts` and answers the others as real
    servers do: llama.cpp's 500 naming the field for `json_schema`, a 400 for anything else it does not know."""

    def __init__(self, accepts: set[str]):
        self.seen: list[str] = []
        outer = self

        class Handler(FakeChatHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                form = (body.get("response_format") or {}).get("type", "none")
                outer.seen.append(form)
                if form not in accepts and form == "json_schema":
                    message = "response_format: Input should be 'text' or 'json_object'"
                    return self.reply(500, json.dumps({"error": {"message": message}}).encode())
                if form not in accepts:
                    return self.reply(400, b'{"error": {"message": "unsupported response_format"}}')
                self.complete('{"veredicto": "A"}')

        self.server, self.url = serve_on_localhost(Handler)


@pytest.fixture
def server(request):
    yield from serving(FormServer(request.param))


def endpoint(url: str, cache) -> ChatEndpoint:
    return ChatEndpoint(Opponent(base_url=url, model="local", max_retries=0, timeout_s=5), cache, "judge.opponent")


@pytest.mark.parametrize(
    ("server", "forms"),
    [
        ({"json_schema", "json_object", "none"}, ["json_schema"]),
        ({"json_object", "none"}, ["json_schema", "json_object"]),  # llama.cpp's server
        ({"none"}, ["json_schema", "json_object", "none"]),
    ],
    indirect=["server"],
)
def test_each_form_is_tried_in_turn_and_a_refusal_is_no_failure(server, forms, tmp_path):
    ask = endpoint(server.url, tmp_path / "cache.jsonl")
    assert ask.complete([{"role": "user", "content": "¿A o B?"}], 16, SCHEMA) == '{"veredicto": "A"}'
    assert server.seen == forms
    assert ask.failures == {} and ask.calls == 1


@pytest.mark.parametrize("server", [{"json_object", "none"}], indirect=True)
def test_the_form_that_worked_is_remembered_with_the_endpoint_s_answers(server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    endpoint(server.url, cache).complete([{"role": "user", "content": "uno"}], 16, SCHEMA)
    server.seen.clear()
    again = endpoint(server.url, cache)
    assert again.complete([{"role": "user", "content": "uno"}], 16, SCHEMA) == '{"veredicto": "A"}'
    assert again.cache_hits == 1 and server.seen == [], "a rerun buys nothing"
    again.complete([{"role": "user", "content": "dos"}], 16, SCHEMA)
    assert server.seen == ["json_object"], "the next run starts with the form that worked"


@pytest.mark.parametrize("server", [{"json_schema"}], indirect=True)
def test_a_server_error_that_is_not_about_the_format_is_a_failed_call(server, tmp_path):
    ask = endpoint(server.url, tmp_path / "cache.jsonl")
    assert ask.complete([{"role": "user", "content": "x"}], 16, None) is None  # no schema: plain form refused (400)
    assert ask.failures == {"no_answer": 1}


@pytest.mark.parametrize("server", [{"json_object", "none"}], indirect=True)
def test_a_refusal_is_asked_once_not_with_the_client_s_retries(server, tmp_path):
    ask = ChatEndpoint(
        Opponent(base_url=server.url, model="local", max_retries=3, timeout_s=5), tmp_path / "c.jsonl", "judge"
    )
    assert ask.complete([{"role": "user", "content": "¿A o B?"}], 16, SCHEMA) == '{"veredicto": "A"}'
    assert server.seen == ["json_schema", "json_object"], "the 500 naming response_format was not retried"
