"""Any OpenAI-compatible chat endpoint (Mistral's API, OpenAI, vLLM, Ollama, llama.cpp, or `habla serve`), asked
the way every paid call in the pipeline must be asked: the judge, the opponent model and `curate`.

- The key comes from the environment variable the params name, never from params, and is never written anywhere.
- Every answer **received** is kept in a JSON-lines cache keyed by hash of (endpoint, model, messages), whether
  it turns out usable or not, so a rerun or a filter change never buys it again. Only transport failures (HTTP
  errors, timeouts, a body that is not a chat completion) leave nothing in the cache and are asked again next run.
- Calls run with bounded concurrency; the `openai` client retries connection errors, 408/429/5xx with exponential
  backoff and enforces the timeout.
- Structured output is asked for where a schema is given, in the first form the server takes (`RESPONSE_FORMS`):
  OpenAI's `json_schema`, then `json_object` with the schema (llama.cpp's server and others, which answer the
  first form with a 500 naming `response_format`), then none, the caller reading the first JSON object of the
  answer. A refusal moves to the next form and is never counted or retried as a failed call; a form the server
  refused is said once in the log, and the one it moved to is remembered in the cache for the endpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from habla.errors import UserError
from habla.io import append_jsonl, read_jsonl

log = logging.getLogger("llm")


class EndpointSettings(Protocol):
    base_url: str
    model: str
    api_key_env: str
    timeout_s: float
    max_retries: int
    concurrency: int


def first_json_object(text: str):
    """The first JSON object in an answer (after any prose or code fence), or None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


RESPONSE_FORMS = ("json_schema", "json_object", "none")


def response_format(form: str, schema: dict) -> dict | None:
    if form == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    if form == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def refuses_format(err: Exception) -> bool:
    """A server saying no to `response_format` (a 4xx other than auth, rate or missing model, or a 5xx that names
    the field), as opposed to a transport failure."""
    import openai

    if not isinstance(err, openai.APIStatusError):
        return False
    status = err.status_code
    if 400 <= status < 500:
        return status not in (401, 403, 404, 408, 429)
    return status >= 500 and "response_format" in str(err)


class AnswerCache:
    """Answers received, one JSON line each (`key`, `answer`, `usage`), appended as they come; the file is git-ignored
    because answers quote the prompts' text."""

    def __init__(self, path: Path, endpoint: str):
        self.path, self.endpoint = path, endpoint
        self.entries: dict[str, dict] = {}
        self.lock = threading.Lock()
        if path.exists():
            self.entries = {entry["key"]: entry for entry in read_jsonl(path)}

    def key(self, messages: list[dict]) -> str:
        """A lone user message is keyed by its text alone, as the judge's cache always was (old caches stay good)."""
        lone = len(messages) == 1 and messages[0]["role"] == "user"
        text = messages[0]["content"] if lone else json.dumps(messages, ensure_ascii=False, sort_keys=True)
        return hashlib.blake2b(f"{self.endpoint}\0{text}".encode(), digest_size=16).hexdigest()

    def get(self, messages: list[dict]) -> dict | None:
        return self.entries.get(self.key(messages))

    def setting(self, name: str) -> str | None:
        """What was learned about the endpoint (`response_format`: the form it takes), kept with its answers."""
        entry = self.entries.get(self.key([{"role": "habla", "content": name}]))
        return entry["answer"] if entry else None

    def remember(self, name: str, value: str) -> None:
        self.put([{"role": "habla", "content": name}], value, {})

    def put(self, messages: list[dict], answer: str, usage: dict, finish_reason: str | None = None) -> None:
        entry = {"key": self.key(messages), "answer": answer, "usage": usage, "finish_reason": finish_reason}
        with self.lock:
            self.entries[entry["key"]] = entry
            append_jsonl(self.path, [entry])


class ChatEndpoint:
    """One model behind an OpenAI-compatible URL, with its answer cache and counts of what each run cost."""

    def __init__(self, settings: EndpointSettings, cache_path: Path, section: str):
        from openai import OpenAI

        key = os.environ.get(settings.api_key_env, "") if settings.api_key_env else ""
        if settings.api_key_env and not key:
            raise UserError(
                f"{section}.api_key_env is `{settings.api_key_env}`, but that environment variable is empty. "
                f"Export it (`export {settings.api_key_env}=...`); keys never go in params.yaml."
            )
        for name in ("base_url", "model"):
            if not getattr(settings, name):
                raise UserError(
                    f"{section}.{name} is empty: name an OpenAI-compatible endpoint and its model "
                    "(e.g. base_url: http://127.0.0.1:8000/v1 and model: tuned for `habla serve`)."
                )
        self.settings = settings
        self.client = OpenAI(
            base_url=settings.base_url,
            api_key=key or "none",
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )
        self.cache = AnswerCache(cache_path, f"{settings.base_url}|{settings.model}")
        self.calls = self.cache_hits = 0
        self.failures: Counter = Counter()
        self.tokens: Counter = Counter()
        learned = self.cache.setting("response_format")
        self.form, self.form_known = learned or RESPONSE_FORMS[0], learned is not None
        self.lock = threading.Lock()

    def complete(self, messages: list[dict], max_tokens: int, schema: dict | None = None) -> str | None:
        """The answer's text (from the cache when it was received before), or None when none arrived."""
        cached = self.cache.get(messages)
        if cached is not None:
            with self.lock:
                self.cache_hits += 1
            return cached["answer"]
        with self.lock:
            self.calls += 1
        try:
            response = self._create(messages, max_tokens, schema)
            answer = response.choices[0].message.content or ""
            finish_reason = response.choices[0].finish_reason
        except Exception as err:  # noqa: BLE001 - every client error (HTTP, timeout, malformed body) is "no answer"
            log.warning("%s call failed: %s", self.settings.model, type(err).__name__)
            with self.lock:
                self.failures["no_answer"] += 1
            return None
        usage = {
            "prompt_tokens": getattr(response.usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(response.usage, "completion_tokens", 0) or 0,
        }
        with self.lock:
            self.tokens.update(usage)
        self.cache.put(messages, answer, usage, finish_reason)
        return answer

    def ending(self, messages: list[dict]) -> tuple[int, str | None] | None:
        """(completion tokens, the server's finish_reason) of the answer received for `messages`, if any."""
        entry = self.cache.get(messages)
        return None if entry is None else (entry["usage"].get("completion_tokens", 0), entry.get("finish_reason"))

    def _create(self, messages: list[dict], max_tokens: int, schema: dict | None):
        options = {"model": self.settings.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        while schema and self.form != "none":
            form = self.form
            # until a form has worked, a 5xx may be the server refusing it: ask once, not with the client's retries
            client = self.client if self.form_known else self.client.with_options(max_retries=0)
            try:
                response = client.chat.completions.create(**options, response_format=response_format(form, schema))
            except Exception as err:
                if not refuses_format(err):
                    if self.form_known or self.settings.max_retries == 0:
                        raise
                    # a transport failure while the form was untried: the client's retries left after that one try
                    retry = self.client.with_options(max_retries=self.settings.max_retries - 1)
                    return retry.chat.completions.create(**options, response_format=response_format(form, schema))
                with self.lock:
                    if self.form == form:  # another thread may have moved on already
                        self.form = RESPONSE_FORMS[RESPONSE_FORMS.index(form) + 1]
                        log.info("%s refuses response_format %s: asking with %s", self.settings.model, form, self.form)
                        self.cache.remember("response_format", self.form)
                continue
            self.form_known = True  # a form other than the first is in the cache already
            return response
        return self.client.chat.completions.create(**options)

    def map(self, ask: Callable, items: Iterable) -> list:
        """`ask` over `items`, `concurrency` at a time, results in order."""
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(ask, items))

    def report(self) -> dict:
        return {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "tokens": {"prompt": self.tokens["prompt_tokens"], "completion": self.tokens["completion_tokens"]},
        }
