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

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from habla import paths
from habla.errors import UserError
from habla.llm import ChatEndpoint, first_json_object
from habla.model.generation import prompt_batches
from habla.model.scoring import target_nll
from habla.params import Judge

log = logging.getLogger("judge")

PAIRWISE_PROMPTS = {
    "local": paths.PROMPTS / "judge_pairwise.es.txt",
    "openai": paths.PROMPTS / "judge_pairwise_json.es.txt",
}
RATING_PROMPTS = {"local": paths.PROMPTS / "judge_rating.es.txt", "openai": paths.PROMPTS / "judge_rating_json.es.txt"}
# "which of the two did the person write?": no reference shown, and no tie to hide behind
BLIND_PROMPTS = {"local": paths.PROMPTS / "judge_blind.es.txt", "openai": paths.PROMPTS / "judge_blind_json.es.txt"}
CHOICES = ("A", "B", "C")
GRADES = tuple(range(1, 11))
FALLBACK = re.compile(r"\[\[\s*([ABC])\s*\]\]")
GRADE_FALLBACK = re.compile(r"\[\[\s*(10|[1-9])\s*\]\]")


def json_field(text: str, keys: tuple[str, ...]):
    """The first of `keys` in the answer's first JSON object (prose and code fences around it allowed), or None."""
    data = first_json_object(text)
    return next((data[key] for key in keys if key in data), None) if data else None


def parse_choice(text: str, choices: tuple[str, ...] = CHOICES) -> str | None:
    """`{"veredicto": "A"}` (or `verdict`/`choice`), else `[[A]]` anywhere in the text; otherwise (or a letter
    outside `choices`) None."""
    value = str(json_field(text, ("veredicto", "verdict", "choice")) or "").strip().upper()
    if value in choices:
        return value
    match = FALLBACK.search(text)
    return match.group(1) if match and match.group(1) in choices else None


def parse_grade(text: str) -> float | None:
    """`{"nota": 7}` (or `grade`/`score`), else `[[7]]`, else a lone number 1–10; otherwise None."""
    value = json_field(text, ("nota", "grade", "score"))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 1 <= value <= 10:
        return float(value)
    match = GRADE_FALLBACK.search(text) or re.fullmatch(r"\s*(10|[1-9])\s*\.?\s*", text)
    return float(match.group(1)) if match else None


def render_prompt(tokenizer, prompt: str) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True
    )
    return list(encoded["input_ids"])


class LocalJudge:
    """A transformers model; the choice is the most likely of the letters' tokens (A, B and C, or those asked)."""

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.calls = 0
        self.failures: Counter = Counter()  # next-token probabilities always give an answer

    @torch.inference_mode()
    def choose(self, prompts: Sequence[str], choices: tuple[str, ...] = CHOICES) -> list[str | None]:
        choice_ids = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in choices]
        picks: list[str | None] = []
        for batch in prompt_batches(
            self.tokenizer, [[{"role": "user", "content": p}] for p in prompts], self.batch_size
        ):
            self.calls += 1
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1, choice_ids]  # the next token's only
            picks += [choices[i] for i in logits.argmax(dim=-1).tolist()]
        return picks

    @torch.inference_mode()
    def rate(self, prompts: Sequence[str]) -> list[float | None]:
        """Expected grade under the judge's probabilities of answering each of "1" … "10".

        Each whole answer is scored (not just its first token), so "1" and "10" stay distinct whatever the
        tokenizer does with digits. The prompt is run once and its cache shared by the ten answers: scoring
        ten copies of a 300-token prompt cost ten times the work for three answer tokens each.
        """
        answers = [
            self.tokenizer.encode(str(g), add_special_tokens=False) + [self.tokenizer.eos_token_id] for g in GRADES
        ]
        width = max(len(a) for a in answers)
        ids = torch.tensor([a + [self.tokenizer.pad_token_id] * (width - len(a)) for a in answers])
        mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
        where = next(self.model.parameters()).device
        grades = []
        for prompt in prompts:
            self.calls += 1
            context = torch.tensor([render_prompt(self.tokenizer, prompt)], device=where)
            first = self.model(input_ids=context, use_cache=True, logits_to_keep=1)
            cache = first.past_key_values
            cache.batch_repeat_interleave(len(GRADES))
            attention = torch.cat([torch.ones(len(GRADES), context.shape[1], dtype=torch.long), mask], dim=1)
            logits = self.model(
                input_ids=ids.to(where), attention_mask=attention.to(where), past_key_values=cache, use_cache=True
            ).logits
            # the answer's first token is predicted by the prompt's last position, each next one by the answer's
            predicting = torch.cat([first.logits[:, -1:].expand(len(GRADES), -1, -1), logits[:, :-1]], dim=1)
            nll, _ = target_nll(predicting, ids.to(where), mask.to(where))
            weights = torch.softmax(-nll, dim=-1)
            grades.append(float(weights @ torch.tensor(GRADES, dtype=weights.dtype, device=where)))
        return grades


# The answers the prompts ask for, as schemas a server can hold the judge to (small local models cannot follow the
# JSON instruction unaided); the parsers still read prose and `[[A]]` from a server that takes no schema.
def verdict_schema(choices: tuple[str, ...] = CHOICES) -> dict:
    return {
        "type": "object",
        "properties": {"veredicto": {"type": "string", "enum": list(choices)}},
        "required": ["veredicto"],
    }


VERDICT_SCHEMA = verdict_schema()
GRADE_SCHEMA = {
    "type": "object",
    "properties": {"nota": {"type": "integer", "minimum": 1, "maximum": 10}},
    "required": ["nota"],
}
ANSWER_TOKENS = 64  # a JSON verdict or grade with room for the spaces and fences small models add


class OpenAIJudge:
    """A judge behind any OpenAI-compatible endpoint (`habla.llm`: cache, retries, concurrency); this class only
    decides what an answer means."""

    def __init__(self, settings: Judge, cache_path: Path):
        self.endpoint = ChatEndpoint(settings, cache_path, "judge")
        self.failures = self.endpoint.failures

    @property
    def calls(self) -> int:
        return self.endpoint.calls

    @property
    def cache_hits(self) -> int:
        return self.endpoint.cache_hits

    def ask(self, prompt: str, parse=parse_choice, schema: dict = VERDICT_SCHEMA):
        answer = self.endpoint.complete([{"role": "user", "content": prompt}], ANSWER_TOKENS, schema)
        if answer is None:
            return None
        parsed = parse(answer)
        if parsed is None:
            log.warning("judge answer not understood (%d characters)", len(answer))
            with self.endpoint.lock:
                self.failures["not_understood"] += 1
        return parsed

    def choose(self, prompts: Sequence[str], choices: tuple[str, ...] = CHOICES) -> list[str | None]:
        schema = verdict_schema(choices)
        return self.endpoint.map(lambda p: self.ask(p, lambda text: parse_choice(text, choices), schema), prompts)

    def rate(self, prompts: Sequence[str]) -> list[float | None]:
        return self.endpoint.map(lambda p: self.ask(p, parse_grade, GRADE_SCHEMA), prompts)


def pairwise_template(settings: Judge) -> str:
    """The pairwise prompt: the backend's own (`judge.prompt: auto`) or the file `judge.prompt` names."""
    path = PAIRWISE_PROMPTS[settings.backend] if settings.prompt == "auto" else Path(settings.prompt)
    if not path.exists():
        raise UserError(f"judge.prompt: {path} does not exist.")
    return path.read_text(encoding="utf-8")


def make_judge(settings: Judge, model, tokenizer, batch_size: int):
    """The judge `judge.*` configures, and the context to judge in: the local judge is the base model (the adapter
    switched off), the `openai` judge any endpoint, its answers cached in `data/cache/judge.jsonl`."""
    if settings.backend == "local":
        return LocalJudge(model, tokenizer, batch_size), model.disable_adapter()
    return OpenAIJudge(settings, paths.JUDGE_CACHE), contextlib.nullcontext()
