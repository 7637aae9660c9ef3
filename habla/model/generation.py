"""Generation in the shared chat template: batched replies for evaluation, streamed replies for chat and serve."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from habla.model.loading import device, end_ids
from habla.params import Evaluate, Sampling


def prompt_batches(tokenizer, conversations: list[list[dict]], batch_size: int) -> Iterator[dict]:
    """Left-padded batches of conversations ending in the assistant prompt: each row continues from its last token."""
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations[start : start + batch_size]
            ]
            yield tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device())
    finally:
        tokenizer.padding_side = "right"


def cut_before_reply(conversation: dict, how: str = "last", seed: int = 0) -> tuple[list[dict], str] | None:
    """The conversation up to one persona reply (the last, or a random one), and that reply as the reference.

    The random choice is seeded by `seed` and the conversation's id, so each
    conversation's cut stays put when others are added or the order changes.
    """
    messages = conversation["messages"]
    replies = [i for i in range(1, len(messages)) if messages[i]["role"] == "assistant"]
    if not replies:
        return None
    index = replies[-1] if how == "last" else random.Random(f"{seed}:{conversation['id']}").choice(replies)
    return messages[:index], messages[index]["content"]


def held_out_cases(test: list[dict], settings: Evaluate) -> tuple[list[dict], dict]:
    """Each test conversation (up to `max_prompts`) cut before one persona reply, and what was left out, by reason."""
    cases = []
    for conversation in test[: settings.max_prompts]:
        cut = cut_before_reply(conversation, settings.cut, settings.cut_seed)
        if cut:
            case = {
                "id": conversation["id"],
                "source": conversation.get("source"),
                "prompt": cut[0],
                "reference": cut[1],
            }
            cases.append({**case, "persona": conversation["persona"]} if conversation.get("persona") else case)
    considered = min(len(test), settings.max_prompts)
    return cases, {"no_persona_reply": considered - len(cases), "over_max_prompts": len(test) - considered}


def sampling_kwargs(sampling: Sampling) -> dict:
    sample = sampling.temperature > 0
    return {
        "max_new_tokens": sampling.max_new_tokens,
        "do_sample": sample,
        "temperature": sampling.temperature if sample else None,
        "top_p": sampling.top_p if sample else None,
    }


@torch.inference_mode()
def hidden_tokens(tokenizer, keep_tokens: Sequence[str]) -> list[str]:
    """Special tokens a reply's text must not show: all but `keep_tokens` (a learned message separator)."""
    return [t for t in tokenizer.all_special_tokens if t not in keep_tokens]


def without(text: str, tokens: Sequence[str]) -> str:
    for token in tokens:
        text = text.replace(token, "")
    return text


@dataclass(frozen=True)
class Reply:
    """A generated reply and how it ended: with an end-of-turn token (`stopped`) or cut at `max_new_tokens`.

    A persona that never learned to stop runs every reply to the cap: the first complaint in every fine-tuning
    tracker, and invisible in the text alone.
    """

    text: str
    new_tokens: int  # up to and including the end token
    stopped: bool


def ending(new_ids: list[int], stops: set[int]) -> tuple[int, bool]:
    """(tokens generated up to and including the first end token, whether there was one) for one output row.

    `generate` pads a finished row up to the batch's longest; a row that never stopped ran to the cap and is
    all its own tokens.
    """
    for index, token in enumerate(new_ids):
        if token in stops:
            return index + 1, True
    return len(new_ids), False


def generate_replies(
    model, tokenizer, prompts: list[list[dict]], sampling: Sampling, batch_size: int, keep_tokens: Sequence[str] = ()
) -> list[Reply]:
    """Replies to `prompts`, seeded; special tokens are dropped from the text except `keep_tokens` (a learned
    message separator, which is part of what the persona writes)."""
    torch.manual_seed(sampling.seed)
    hidden = hidden_tokens(tokenizer, keep_tokens)
    stops = end_ids(model, tokenizer)
    replies: list[Reply] = []
    for batch in prompt_batches(tokenizer, prompts, batch_size):
        output = model.generate(
            **batch,
            **sampling_kwargs(sampling),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stops,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=not keep_tokens)
        for text, row in zip(texts, new_tokens.tolist()):
            count, stopped = ending(row, set(stops))
            replies.append(Reply(without(text, hidden).strip(), count, stopped))
    return replies


def ending_stats(replies: Sequence[Reply | None]) -> dict:
    """How a model's replies ended: stopped by an end-of-turn token or cut at the cap, and how long they ran."""
    answered = [r for r in replies if r is not None]
    stopped = sum(r.stopped for r in answered)
    return {
        "replies": len(answered),
        "stopped": stopped,
        "cut": len(answered) - stopped,
        "stopped_share": round(stopped / len(answered), 4) if answered else None,
        "mean_new_tokens": round(sum(r.new_tokens for r in answered) / len(answered), 2) if answered else None,
    }


class _WhenSet:
    """A stopping criterion that ends generation once `event` is set (checked after every token)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def context_window(model, tokenizer) -> int:
    """How many tokens the model can attend to: its position table, or the tokenizer's bound when that is smaller."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    return min(int(limit) for limit in limits if limit and limit < 10**8)


def prompt_length(tokenizer, messages: list[dict]) -> int:
    return len(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )


def fit_to_context(tokenizer, messages: list[dict], window: int) -> tuple[list[dict], int, int]:
    """Drop the oldest turns (never the system message, never the last message) until the prompt leaves room for
    at least one new token. Returns (messages, prompt tokens, turns dropped); the prompt may still be too long when
    the last message alone is.

    Binary search over how many turns to drop: a request of thousands of short turns costs a dozen tokenisations,
    not thousands.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    length = prompt_length(tokenizer, messages)
    if length < window:
        return messages, length, 0
    low, high = 1, len(turns) - 1
    best = (high, prompt_length(tokenizer, system + turns[high:]))
    while low < high:
        middle = (low + high) // 2
        middle_length = prompt_length(tokenizer, system + turns[middle:])
        if middle_length < window:
            best, high = (middle, middle_length), middle
        else:
            low = middle + 1
    dropped, length = best
    return system + turns[dropped:], length, dropped


class PromptTooLong(Exception):
    """A prompt that leaves no room for a reply in the model's context."""

    def __init__(self, length: int, window: int):
        super().__init__(f"{length} tokens; this model's context is {window}")
        self.length, self.window = length, window


def fit_prompt(model, tokenizer, messages: list[dict], max_new_tokens: int, drop_oldest: bool):
    """A conversation ready to generate from: within the model's context (its oldest turns dropped when
    `drop_oldest`, else refused), and `max_new_tokens` cut to the room left. Returns (messages, max_new_tokens,
    turns dropped); raises `PromptTooLong`. Checked before generation, so an impossible prompt never holds a model.
    """
    window = context_window(model, tokenizer)
    if drop_oldest:
        messages, length, dropped = fit_to_context(tokenizer, messages, window)
    else:
        length, dropped = prompt_length(tokenizer, messages), 0
    if length >= window:
        raise PromptTooLong(length, window)
    return messages, min(max_new_tokens, window - length), dropped


@dataclass
class ReplyStream:
    """One streamed reply: iterate for text pieces; afterwards `text`, token counts and `finish_reason` are set.

    Special tokens are dropped except the message separator, which the caller
    renders (a new bubble in `chat`, plain text in `serve`). Text matching a stop
    string is held back until it is clear it is not the start of one, so a stop
    string never leaks into the stream.
    """

    model: object
    tokenizer: object
    messages: list[dict]
    sampling: Sampling
    stop: Sequence[str] = ()
    keep_tokens: Sequence[str] = ()
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    _hidden: list[str] = field(default_factory=list)

    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating at the next token (a client that went away, a Ctrl-C)."""
        self._cancelled.set()

    def __iter__(self) -> Iterator[str]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        tokenizer = self.tokenizer
        self._hidden = hidden_tokens(tokenizer, self.keep_tokens)
        prompt = tokenizer.apply_chat_template(
            self.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt = {k: v.to(device()) for k, v in prompt.items()}
        self.prompt_tokens = prompt["input_ids"].shape[1]
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)
        result: dict = {}

        @torch.inference_mode()
        def work() -> None:
            try:
                torch.manual_seed(self.sampling.seed)
                extra = {"stop_strings": list(self.stop), "tokenizer": tokenizer} if self.stop else {}
                result["ids"] = self.model.generate(
                    **prompt,
                    **sampling_kwargs(self.sampling),
                    stopping_criteria=StoppingCriteriaList([_WhenSet(self._cancelled)]),
                    streamer=streamer,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=end_ids(self.model, tokenizer),
                    **extra,
                )
            except Exception as err:  # noqa: BLE001 - re-raised in the consuming thread below
                result["error"] = err
                streamer.end()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        emitted, finished = 0, False
        try:
            for piece in streamer:
                self.text += self._clean(piece)
                cut = self._stop_at(self.text)
                safe = len(self.text) if cut is None else cut
                if cut is None:
                    safe -= self._possible_stop_prefix(self.text)
                if safe > emitted:
                    yield self.text[emitted:safe]
                    emitted = safe
                if cut is not None:
                    break
            finished = True
        finally:
            # The consumer may leave early (a closed connection, Ctrl-C, GeneratorExit): the model must not go on
            # generating behind the caller's back, holding the model and racing the next request on it.
            if not finished:
                self.cancel()
            worker.join()
        if "error" in result:
            raise result["error"]
        cut = self._stop_at(self.text)
        self.text = self.text[:cut] if cut is not None else self.text
        if len(self.text) > emitted:
            yield self.text[emitted:]
        new_ids = result["ids"][0, self.prompt_tokens :].tolist()
        self.completion_tokens = len(new_ids)
        ended = bool(new_ids) and new_ids[-1] in end_ids(self.model, tokenizer)
        self.finish_reason = "stop" if ended or cut is not None else "length"

    def _clean(self, piece: str) -> str:
        return without(piece, self._hidden)

    def _stop_at(self, text: str) -> int | None:
        hits = [text.find(s) for s in self.stop if s and s in text]
        return min(hits) if hits else None

    def _possible_stop_prefix(self, text: str) -> int:
        """Length of the longest tail of `text` that could begin a stop string."""
        return max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
