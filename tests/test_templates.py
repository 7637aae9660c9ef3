"""Any chat template, one format: what the persona is trained in is what the model's own template writes.

Every template TRL ships in `trl/chat_templates/` (the families it knows and the ones it raises for), and
SmolLM2's, must get a training template that renders byte-identically to the model's own for the same messages
(generation markers aside), except for a default system turn the model's template writes into a conversation
that has none, which habla drops and records. No template may end in a crash.

Two kinds of template are held to a different rule, each by its own assertion:
- TRL's training variants of thinking and GLM formats change the format on purpose, so that every turn is
  rendered the same way whether or not a later turn follows (prefix preservation; Qwen3 keeps the empty think
  block in history, GLM writes its stop token `<|user|>` after each reply). There habla uses TRL's variant,
  and what is trained is what `serve`, `chat` and `export` render, since they use the template saved with the
  adapter.
- Vision templates refuse plain-text messages altogether; a persona chat cannot be written in them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from habla.errors import UserError
from habla.model import templates
from habla.model.builtin import train_tokenizer
from tests.helpers import SMOLLM2_TEMPLATE

REPLIES = ["bien po 😄\ny tú?", "{{ no es jinja }} <b>", "ya"]


def trl_templates() -> dict[str, str]:
    import trl

    folder = Path(trl.__file__).parent / "chat_templates"
    found = {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.jinja"))}
    return {name: text for name, text in found.items() if not name.endswith("_training")}


TEMPLATES = {**trl_templates(), "smollm2": SMOLLM2_TEMPLATE}
TRL_CHANGES_THE_FORMAT = {"glm4moe", "qwen3", "qwen3_5_nothink", "qwen3_5_think", "qwen3_6"}
VISION_ONLY = {"llava_next"}


@pytest.fixture(scope="module")
def base_tokenizer():
    tokenizer = train_tokenizer(["hola po", "bien y tú", "cachai"] * 20, 300)
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    return tokenizer


def with_template(tokenizer, template: str):
    tokenizer.chat_template = template
    return tokenizer


def conversations(system: bool) -> list[list[dict]]:
    head = [{"role": "system", "content": "Eres Nico."}] if system else []
    turns = []
    for index, reply in enumerate(REPLIES):
        turns += [{"role": "user", "content": f"pregunta {index} ¿ya?"}, {"role": "assistant", "content": reply}]
    return [head + turns[:2], head + turns]


def renders(tokenizer, template: str, messages: list[dict]) -> str | None:
    from jinja2 import TemplateError

    try:
        return templates.render(tokenizer, template, messages)
    except (TemplateError, TypeError, ValueError):
        return None  # the model's own template refuses this conversation (Gemma and a system turn)


def test_the_list_of_templates_is_the_one_trl_ships():
    assert len(TEMPLATES) > 40 and {"qwen2_5", "llama3", "llama3_1", "gemma", "phi3", "smollm2"} <= TEMPLATES.keys()
    assert TRL_CHANGES_THE_FORMAT | VISION_ONLY < TEMPLATES.keys()


@pytest.mark.parametrize("name", sorted(TRL_CHANGES_THE_FORMAT))
def test_where_trl_changes_the_format_on_purpose_its_variant_is_used(base_tokenizer, name):
    import trl.chat_template_utils as trl_templates

    tokenizer = with_template(base_tokenizer, TEMPLATES[name])
    template, notes = templates.training_template(tokenizer)
    assert notes == {"template": "TRL training template for this model family"}
    assert template == trl_templates.get_training_chat_template(tokenizer)
    # the difference is the format, not the content: the same replies and turns, in the same order
    differ = []
    for messages in conversations(system=False):
        ours, own = templates.render(tokenizer, template, messages), renders(tokenizer, TEMPLATES[name], messages)
        assert all(m["content"] in ours for m in messages)
        differ.append(ours != own)
    assert any(differ)  # else this template belongs with the byte-identical ones


@pytest.mark.parametrize("name", sorted(VISION_ONLY))
def test_vision_templates_refuse_text_messages_themselves(base_tokenizer, name):
    tokenizer = with_template(base_tokenizer, TEMPLATES[name])
    assert all(renders(tokenizer, TEMPLATES[name], m) is None for m in conversations(system=False))


@pytest.mark.parametrize("name", sorted(set(TEMPLATES) - TRL_CHANGES_THE_FORMAT - VISION_ONLY))
def test_training_template_renders_what_the_models_own_template_renders(base_tokenizer, name):
    tokenizer = with_template(base_tokenizer, TEMPLATES[name])
    template, notes = templates.training_template(tokenizer)
    assert templates.has_markers(template)
    dropped = notes.get("dropped_default_system_turn")
    compared = 0
    for system in (True, False):
        for messages in conversations(system):
            own = renders(tokenizer, TEMPLATES[name], messages)
            if own is None:
                continue
            if dropped and not system:
                assert own.count(dropped) == 1
                own = own.replace(dropped, "", 1)
            assert templates.render(tokenizer, template, messages) == own
            compared += 1
    assert compared >= 2


@pytest.mark.parametrize("name", ["smollm2", "qwen2_5", "llama3_1", "llama3_2"])
def test_a_default_identity_is_never_trained_or_served(base_tokenizer, name):
    tokenizer = with_template(base_tokenizer, TEMPLATES[name])
    template, notes = templates.training_template(tokenizer)
    assert notes["template"] == "the model's own turn format with generation markers (habla)"
    user_only = [{"role": "user", "content": "hola"}]
    own = templates.render(tokenizer, TEMPLATES[name], user_only)
    ours = templates.render(tokenizer, template, user_only)
    assert notes["dropped_default_system_turn"] in own and notes["dropped_default_system_turn"] not in ours
    given = [{"role": "system", "content": "Eres Nico."}, *user_only]  # asked for: rendered as the model would
    assert templates.render(tokenizer, template, given) == templates.render(tokenizer, TEMPLATES[name], given)


@pytest.mark.parametrize("name", ["smollm2", "llama3_1", "gemma4", "lfm2_2_5"])
def test_templates_trl_cannot_patch_get_markers_from_habla_not_a_crash(base_tokenizer, name):
    tokenizer = with_template(base_tokenizer, TEMPLATES[name])
    assert templates.trl_training_template(tokenizer) is None  # TRL raises ValueError for these
    template, notes = templates.training_template(tokenizer)
    encoded = tokenizer.apply_chat_template(
        conversations(False)[1],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        chat_template=template,
    )
    trained = tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    assert all(reply in trained for reply in REPLIES) and "pregunta" not in trained


def test_smollm2_trains_in_chatml_with_the_end_token_inside_the_loss(base_tokenizer):
    tokenizer = with_template(base_tokenizer, SMOLLM2_TEMPLATE)
    found = templates.infer_turns(tokenizer, SMOLLM2_TEMPLATE)
    assert found.user == ("<|im_start|>user\n", "<|im_end|>\n")
    assert (found.assistant_prefix, found.reply_end, found.reply_trail) == (
        "<|im_start|>assistant\n",
        "<|im_end|>",
        "\n",
    )
    assert found.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_trimming_templates_are_matched_not_fought(base_tokenizer):
    tokenizer = with_template(base_tokenizer, TEMPLATES["llama3_1"])
    found = templates.infer_turns(tokenizer, TEMPLATES["llama3_1"])
    assert found.trims
    padded = [{"role": "user", "content": "  hola \n"}, {"role": "assistant", "content": " ya po  "}]
    own = templates.render(tokenizer, TEMPLATES["llama3_1"], padded).replace(found.default_system_turn(), "")
    assert templates.render(tokenizer, found.template(), padded) == own and "\n\nhola<|eot_id|>" in own


def test_a_template_that_is_no_turn_format_is_one_clear_sentence(base_tokenizer):
    tokenizer = with_template(base_tokenizer, "{{ messages | map(attribute='content') | join(' ') }}")
    with pytest.raises(UserError, match="cannot be trained with loss on the persona's turns only.*generation"):
        templates.training_template(tokenizer)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>"),
        (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>"),
        ([], "<|im_end|>"),
    ],
)
def test_a_base_model_without_template_gets_its_familys_turn_tokens_else_chatml(tokens, expected):
    tokenizer = train_tokenizer(["hola po", "bien y tú"] * 20, 300)
    tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    template, end, trained, notes = templates.template_for_untemplated(tokenizer)
    assert end == expected and templates.has_markers(template)
    assert trained == (tokens or ["<|im_start|>", "<|im_end|>"]) and notes["trained_rows"] == trained
