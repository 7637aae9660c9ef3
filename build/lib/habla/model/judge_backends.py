"""Judge backends: who answers "which reply sounds more like the persona?".

`local` reads the answer from a transformers model's next-token probabilities, so
there is no text to parse. `openai` asks any OpenAI-compatible chat endpoint
(vLLM, Ollama, llama.cpp, Mistral, OpenAI, or `habla serve`) at temperature 0,
parses JSON with a `[[A]]` fallback, and keeps every answer it received in a
cache keyed by the judge model and the prompt, so a rerun buys nothing twice:
only calls that never got an answer (HTTP errors, timeouts, a body that is not a
chat completion) are tried again. A call that fails or answers nonsense is
returned as None and counted as failed by reason, never as a loss for either model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from habla.errors import UserError
from habla.model.generation import prompt_batches
from habla.params import Judge

log = logging.getLogger("judge")

CHOICES = ("A", "B", "C")
GRADES = tuple(range(1, 11))
FALLBACK = re.compile(r"\[\[\s*([ABC])\s*\]\]")
GRADE_FALLBACK = re.compile(r"\[\[\s*(10|[1-9])\s*\]\]")


def json_field(text: str, keys: tuple[str, ...]):
    """The first of `keys` in a JSON object answer (code fences allowed), or None."""
    candidate = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return next((data[key] for key in keys if key in data), None)


def parse_choice(text: str) -> str | None:
    """`{"veredicto": "A"}` (or `verdict`/`choice`), else `[[A]]` anywhere in the text; otherwise None."""
    value = str(json_field(text, ("veredicto", "verdict", "choice")) or "").strip().upper()
    if value in CHOICES:
        return value
    match = FALLBACK.search(text)
    return match.group(1) if match else None


def parse_grade(text: str) -> float | None:
    """`{"nota": 7}` (or `grade`/`score`), else `[[7]]`, else a lone number 1–10; otherwise None."""
    value = json_field(text, ("nota", "grade", "score"))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 1 <= value <= 10:
        return float(value)
    match = GRADE_FALLBACK.search(text) or re.fullmatch(r"\s*(10|[1-9])\s*\.?\s*", text)
    return float(match.group(1)) if match else None


def render_prompt(tokenizer, prompt: str) -> list[int]:
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])


class LocalJudge:
    """A transformers model; the choice is the most likely of the tokens A, B and C."""

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.calls = 0
        self.failures: Counter = Counter()  # next-token probabilities always give an answer

    @torch.inference_mode()
    def choose(self, prompts: Sequence[str]) -> list[str | None]:
        choice_ids = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in CHOICES]
        picks: list[str | None] = []
        for batch in prompt_batches(self.tokenizer, [[{"role": "user", "content": p}] for p in prompts], self.batch_size):
            self.calls += 1
            logits = self.model(**batch).logits[:, -1, choice_ids]
            picks += [CHOICES[i] for i in logits.argmax(dim=-1).tolist()]
        return picks

    def rate(self, prompts: Sequence[str]) -> list[float | None]:
        """Expected grade under the judge's probabilities of answering each of "1" … "10".

        Each whole answer is scored (not just its first token), so "1" and "10"
        stay distinct whatever the tokenizer does with digits.
        """
        from habla.model.scoring import score

        rows = []
        for prompt in prompts:
            context = list(render_prompt(self.tokenizer, prompt))
            for grade in GRADES:
                answer = self.tokenizer.encode(str(grade), add_special_tokens=False) + [self.tokenizer.eos_token_id]
                rows.append({"input_ids": context + answer, "mask": [0] * len(context) + [1] * len(answer)})
        self.calls += 1
        nll = torch.tensor([s[0] for s in score(self.model, rows, self.tokenizer.pad_token_id, self.batch_size)])
        weights = torch.softmax(-nll.view(len(prompts), len(GRADES)), dim=-1)
        return (weights @ torch.tensor(GRADES, dtype=weights.dtype)).tolist()


class JudgmentCache:
    """Answers received, by hash of (judge model, prompt), one JSON line each, appended as they come."""

    def __init__(self, path: Path, judge_model: str):
        self.path, self.judge_model = path, judge_model
        self.entries: dict[str, str] = {}
        self.lock = threading.Lock()
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry["answer"]

    def key(self, prompt: str) -> str:
        return hashlib.blake2b(f"{self.judge_model}\0{prompt}".encode(), digest_size=16).hexdigest()

    def get(self, prompt: str) -> str | None:
        return self.entries.get(self.key(prompt))

    def put(self, prompt: str, answer: str) -> None:
        key = self.key(prompt)
        with self.lock:
            self.entries[key] = answer
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")


class OpenAIJudge:
    """An OpenAI-compatible chat endpoint, with bounded concurrency and a judgment cache.

    The `openai` client already retries connection errors, 408/429/5xx with
    exponential backoff and enforces the timeout; we only decide what a failure means.
    """

    def __init__(self, settings: Judge, cache_path: Path):
        from openai import OpenAI

        key = os.environ.get(settings.api_key_env, "") if settings.api_key_env else ""
        if settings.api_key_env and not key:
            raise UserError(
                f"judge.api_key_env is `{settings.api_key_env}`, but that environment variable is empty. "
                f"Export it (`export {settings.api_key_env}=...`); keys never go in params.yaml."
            )
        if not settings.base_url:
            raise UserError("judge.backend is `openai` but judge.base_url is empty: set the endpoint, e.g. http://127.0.0.1:8000/v1.")
        self.settings = settings
        self.client = OpenAI(base_url=settings.base_url, api_key=key or "none", timeout=settings.timeout_s,
                             max_retries=settings.max_retries)
        self.cache = JudgmentCache(cache_path, f"{settings.base_url}|{settings.model}")
        self.calls = self.cache_hits = 0
        self.failures: Counter = Counter()

    def ask(self, prompt: str, parse=parse_choice):
        answer = self.cache.get(prompt)
        if answer is not None:
            self.cache_hits += 1
        else:
            self.calls += 1
            try:
                response = self.client.chat.completions.create(
                    model=self.settings.model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=32,
                )
                answer = response.choices[0].message.content or ""
            except Exception as err:  # noqa: BLE001 - every client error (HTTP, timeout, malformed body) is a failed judgment
                log.warning("judge call failed: %s", type(err).__name__)
                self.failures["no_answer"] += 1
                return None
            self.cache.put(prompt, answer)
        parsed = parse(answer)
        if parsed is None:
            log.warning("judge answer not understood (%d characters)", len(answer))
            self.failures["not_understood"] += 1
        return parsed

    def choose(self, prompts: Sequence[str]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(self.ask, prompts))

    def rate(self, prompts: Sequence[str]) -> list[float | None]:
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            return list(pool.map(lambda p: self.ask(p, parse_grade), prompts))
