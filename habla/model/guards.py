"""The guards that run before a persona fine-tune's first step, for the mistakes that ruin it silently.

LoRA targets that match nothing (or only part of a fused layer), a chat template with no assistant mask,
pad = EOS, an end-of-turn token outside the loss, a separator that is not a token, and conversations whose
first reply lies beyond `train.max_length` (TRL drops those without a word). Each stops the run with one
sentence that says what to change, or (for what costs only some examples) warns with a count.
"""

from __future__ import annotations

import logging

import torch

from habla.errors import UserError
from habla.model.loading import PAD, encode_chat, special_separator
from habla.model.templates import own_template, template_for_untemplated, training_template
from habla.plots import bin_width, histogram

log = logging.getLogger(__name__)

MASK_SAMPLE = 64
TRUNCATION_WARNING = 0.05
QUANTIZED_LINEAR = ("Linear4bit", "Linear8bitLt")


def prepare_tokenizer(tokenizer, separator: str, stop_ids: list[int] | None = None) -> tuple[object, dict]:
    """Give the tokenizer a training template with generation markers, a pad token and the separator.

    The notes say where the template came from and list `trained_rows`: tokens whose embedding rows the adapter
    trains and saves (a new separator, turn tokens a base model never learned, a pad that had to be added). Every
    other row stays the base model's, so the adapter holds no copy of the embedding matrix.
    """
    rows: list[str] = []
    if own_template(tokenizer):
        template, notes = training_template(tokenizer)
    else:
        template, end, turn_tokens, notes = template_for_untemplated(tokenizer)
        add_special(tokenizer, turn_tokens)
        tokenizer.eos_token = end
        rows += turn_tokens
    tokenizer.chat_template = template
    pad, pad_note = choose_pad(tokenizer, set(stop_ids or []) | {tokenizer.eos_token_id})
    if pad not in tokenizer.get_vocab():
        add_special(tokenizer, [pad])
        rows.append(pad)
    tokenizer.pad_token = pad
    notes["pad_token"] = pad_note
    token = special_separator(separator)
    if token and token not in tokenizer.get_vocab():
        add_special(tokenizer, [token])
        notes["separator_token"] = token
        rows.append(token)
    notes["trained_rows"] = rows
    return tokenizer, notes


def add_special(tokenizer, tokens: list[str]) -> None:
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)


PAD_NAMES = ("pad", "endoftext", "unk", "reserved")  # in order of preference, matched inside special tokens' names


def choose_pad(tokenizer, stop_ids: set[int]) -> tuple[str, str]:
    """A pad token the vocabulary already has and that is neither a stop token nor part of the chat format.

    Padding with EOS masks the stop token out of the loss (the model never learns to stop); adding a new pad
    resizes the vocabulary, and the adapter then carries the whole embedding matrix (236 MB for SmolLM2-135M).
    ChatML models have `<|endoftext|>`, Llama 3 has reserved tokens, Qwen `<|fim_pad|>`: one of those is used,
    and `<|pad|>` is added only where none exists.
    """
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], tokenize=False
    )
    specials = list(dict.fromkeys([*tokenizer.all_special_tokens, *tokenizer.added_tokens_encoder]))
    in_format = {t for t in specials if t in rendered} | {tokenizer.bos_token}
    usable = [t for t in specials if tokenizer.convert_tokens_to_ids(t) not in stop_ids and t not in in_format]
    current = tokenizer.pad_token
    if current is not None and current in usable:
        return current, f"the tokenizer's own {current}"
    for name in PAD_NAMES:
        for token in usable:
            if name in token.lower():
                return token, f"{token}, already in the vocabulary (the tokenizer's pad was {current})"
    return PAD, f"added {PAD}: the vocabulary has no spare special token (its row is saved with the adapter)"


def linear_module_names(model) -> set[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in QUANTIZED_LINEAR:
            names.add(name.rsplit(".", 1)[-1])
    return names - {"lm_head"}


def check_targets(model, target_modules: str | list[str]) -> list[str]:
    """Every named target must exist: Phi-3's fused `qkv_proj` silently ignores `q_proj/k_proj/v_proj`."""
    available = linear_module_names(model)
    if target_modules == "all-linear":
        return sorted(available)
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    missing = [t for t in targets if t not in available]
    if missing:
        raise UserError(
            f"train.lora.target_modules {missing} match no layer of this model. Its linear layers are: "
            f"{', '.join(sorted(available))}. Use `all-linear` or names from that list (fused models such as "
            "Phi-3 have `qkv_proj` and `gate_up_proj` instead of q/k/v and gate/up)."
        )
    return targets


def encode_or_explain(tokenizer, messages: list[dict]) -> dict[str, list[int]]:
    """encode_chat, with a template's own refusal (Gemma rejects system turns) turned into advice."""
    from jinja2 import TemplateError

    try:
        return encode_chat(tokenizer, messages)
    except TemplateError as err:
        raise UserError(
            f"the model's chat template refuses a training conversation: {err}. Gemma-style templates accept no "
            "system turn and need strict user/assistant alternation starting with the user: set "
            "`persona.system_prompt: ''` and `group.persona_opens: trim` (or `opener`)."
        ) from None


def check_masks(tokenizer, conversations: list[dict], max_length: int, stop_ids: list[int] | None = None) -> dict:
    """The assistant mask must be non-empty and contain a token that ends a reply; report truncation.

    `stop_ids` are the ids generation stops at (see `end_ids`): the model must be
    trained to produce one of them, whether it is the tokenizer's EOS or a
    family's end-of-turn token such as Gemma's `<end_of_turn>`.
    """
    stops = set(stop_ids or [tokenizer.eos_token_id])
    empty, no_eos, unlearnable, lengths = 0, 0, 0, []
    for index, conversation in enumerate(conversations):
        encoded = encode_or_explain(tokenizer, conversation["messages"])
        lengths.append(len(encoded["input_ids"]))
        unlearnable += not any(encoded["assistant_masks"][:max_length])
        if index < MASK_SAMPLE:
            masked = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
            empty += not masked
            no_eos += not stops & set(masked)
    truncated = sum(length > max_length for length in lengths)
    if empty:
        raise UserError(
            f"{empty} of {min(len(conversations), MASK_SAMPLE)} sampled conversations have no assistant tokens in "
            "the loss mask: the chat template does not mark assistant turns. Report the model name; "
            "meanwhile set a template with {% generation %} markers."
        )
    if no_eos:
        raise UserError(
            f"in {no_eos} sampled conversations no end-of-reply token "
            f"({tokenizer.convert_ids_to_tokens(sorted(stops))}) is inside the loss mask, "
            "so the model would never learn to stop. Use a template whose generation block includes the end token."
        )
    if unlearnable == len(conversations):
        raise UserError(
            f"no training conversation has a persona reply within its first train.max_length={max_length} tokens "
            "(a long system prompt, or the family's default one, fills the window): raise train.max_length."
        )
    if unlearnable:
        # TRL drops these silently ("Dropping fully masked examples"): say how many the run loses.
        log.warning(
            "%d of %d training conversations have no persona reply within train.max_length=%d tokens and "
            "will not be trained on",
            unlearnable,
            len(conversations),
            max_length,
        )
    share = truncated / max(len(lengths), 1)
    if share > TRUNCATION_WARNING:
        log.warning(
            "%.1f%% of training conversations are longer than train.max_length=%d and will be truncated",
            100 * share,
            max_length,
        )
    return {
        "histogram": histogram(lengths, bin_width(max(lengths)), "tokens", "conversations"),
        "truncated_share": share,
        "dropped_no_reply_in_window": unlearnable,
        "max_tokens": max(lengths),
        "mean_tokens": sum(lengths) / max(len(lengths), 1),
    }
