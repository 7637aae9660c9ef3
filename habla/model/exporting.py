"""What an exported persona must keep, checked before `habla export` reports success.

The failures every exporter's tracker is full of: the file carries the wrong chat template (Ollama falls back to a
generic one), the model never stops (the end-of-turn token is not an end-of-generation token of the file, or the
Modelfile has no `stop`), added tokens are lost or split after the merge, and nothing shows the exported model
says what base + adapter said. Each check here returns what it saw for `export.json` and raises one sentence
when the export would lose the persona's format or stop.
"""

from __future__ import annotations

import re

import torch

from habla.errors import UserError
from habla.model.templates import NotATurnFormat, infer_turns, render

GENERATION_MARKERS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def serving_template(template: str) -> str:
    """The training template without `{% generation %}` markers: they only mark the loss, and llama.cpp's template
    engine, Ollama and LM Studio do not know the tag."""
    return GENERATION_MARKERS.sub("", template)


def check_template(tokenizer, exported: str | None, conversations: list[list[dict]]) -> dict:
    """The exported template renders every held-out conversation (with and without the generation prompt)
    exactly as the adapter's template does."""
    if not exported:
        raise UserError("the exported file has no chat template: llama.cpp and Ollama would fall back to another one.")
    for messages in conversations:
        for prompt in (False, True):
            if render(tokenizer, exported, messages, prompt) != render(
                tokenizer, tokenizer.chat_template, messages, prompt
            ):
                raise UserError(
                    "the exported chat template renders a held-out conversation differently from the adapter's: "
                    "the persona would be served in another format."
                )
    return {"same_as_adapter": True, "conversations": len(conversations)}


def check_stops(tokenizer, trained_stops: list[int], end_of_generation: set[int]) -> dict:
    """Every token the persona was trained to stop with must end generation in the exported file."""
    lost = [i for i in trained_stops if i not in end_of_generation]
    if lost:
        raise UserError(
            f"the exported file does not stop on {tokenizer.convert_ids_to_tokens(lost)}, the token the persona "
            "learned to end its replies with: it would never stop."
        )
    return {"trained": tokenizer.convert_ids_to_tokens(trained_stops), "end_of_generation": sorted(end_of_generation)}


def check_separator(tokenizer, separator: str | None, exported_ids: list[int] | None) -> dict:
    """A learned separator token (`<|msg_sep|>`) must stay one token, with the id the adapter trained."""
    if separator is None:
        return {"token": None}
    expected = tokenizer.convert_tokens_to_ids(separator)
    if exported_ids != [expected]:
        raise UserError(
            f"the separator {separator} is {exported_ids} in the exported file, not the one token {expected} the "
            "persona learned: it would write it out piece by piece."
        )
    return {"token": separator, "id": expected}


def reference_prompts(tokenizer, cases: list[dict]) -> list[list[int]]:
    """Held-out prompts rendered and tokenized as habla serves them."""
    return [
        tokenizer.apply_chat_template(case["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for case in cases
    ]


@torch.inference_mode()
def greedy_ids(model, prompts: list[list[int]], max_new_tokens: int, stops: list[int]) -> list[list[int]]:
    """Greedy continuations, one prompt at a time (no padding can differ between engines), ending at a stop."""
    outputs = []
    for ids in prompts:
        tensor = torch.tensor([ids], device=model.device)
        out = model.generate(
            tensor,
            attention_mask=torch.ones_like(tensor),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=stops[0],
        )
        outputs.append(out[0, len(ids) :].tolist())
    return outputs


def agreement(reference: list[list[int]], exported: list[list[int]], stops: list[int]) -> dict:
    """How far each exported continuation follows habla's: identical ones, the common prefix, and stops."""

    def common(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    same = [a == b for a, b in zip(reference, exported)]
    return {
        "prompts": len(reference),
        "identical": sum(same),
        "mean_common_prefix": sum(common(a, b) for a, b in zip(reference, exported)) / max(len(reference), 1),
        "stopped": sum(bool(ids) and ids[-1] in stops for ids in exported),
        "stopped_in_habla": sum(bool(ids) and ids[-1] in stops for ids in reference),
    }


def require_identical(result: dict, what: str) -> dict:
    if result["identical"] != result["prompts"]:
        raise UserError(
            f"{what} answers {result['prompts'] - result['identical']} of {result['prompts']} held-out prompts "
            "differently from base + adapter under greedy decoding: the export changed the model."
        )
    return result


def ollama_template(tokenizer, template: str) -> str:
    """The chat template as an Ollama (Go) template, written from the turn format habla reads off the template
    and proves equal to it (`templates.infer_turns`); a template that is no turn format cannot be exported."""
    try:
        turns = infer_turns(tokenizer, template)
    except NotATurnFormat as err:
        raise UserError(f"this chat template cannot be written as an Ollama template ({err}).") from None
    content = "{{ .Content }}"
    branches = []
    if turns.system:
        branches.append(f'if eq .Role "system" }}}}{turns.system[0]}{content}{turns.system[1]}')
    branches.append(f'if eq .Role "user" }}}}{turns.user[0]}{content}{turns.user[1]}')
    branches.append(
        f'if eq .Role "assistant" }}}}{turns.assistant_prefix}{content}{turns.reply_end}{turns.reply_trail}'
    )
    # `{{ … }}` without Go's `-`: trimming would eat the newlines that are part of the format (ChatML's)
    body = "{{ " + "{{ else ".join(branches) + "{{ end }}"
    return turns.preamble + "{{ range .Messages }}" + body + "{{ end }}" + turns.assistant_prefix


def modelfile(gguf_name: str, template: str, stops: list[str], sampling, adapter_name: str | None = None) -> str:
    """An Ollama Modelfile: the file, the adapter where one is used, the template, one stop per stop token and
    the sampling defaults of `evaluate.sampling`."""
    lines = [f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    lines.append(f'TEMPLATE """{template}"""')
    lines += [f'PARAMETER stop "{token}"' for token in stops]
    lines += [
        f"PARAMETER temperature {sampling.temperature}",
        f"PARAMETER top_p {sampling.top_p}",
        f"PARAMETER num_predict {sampling.max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"
