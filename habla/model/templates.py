"""The chat format a persona is trained in, which `perplexity`, `generate`, `chat`, `serve` and `export` then use.

Loss on the persona's turns needs a template with `{% generation %}` markers. TRL ships marked copies for the
families it knows and *raises* for any other template (SmolLM2's, Llama 3.1's, fine-tunes with edited
templates). habla never crashes there: it reads the model's own turn format off its template by rendering
probe conversations, writes that format back as a template with markers, and proves it renders byte-identically
to the model's own for conversations with and without a system turn before anything trains on it.

One rule on top: the persona is never trained or served under the base model's assistant identity. Templates
that insert a default system prompt when a conversation has none ("You are a helpful AI assistant named SmolLM",
"You are Qwen, created by Alibaba Cloud") get the inferred template, which renders no system turn unless
`persona.system_prompt` gives one; the dropped prompt is recorded.

A base model with no template at all gets its family's turn tokens where the vocabulary has them (Gemma's
`<start_of_turn>`, Llama 3's `<|start_header_id|>`), else ChatML; either way the turn tokens' embedding rows are
trained (a base model never learned them), and the notes say which and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from habla.errors import UserError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML with {% generation %} markers around each assistant reply *and* its end
# token, so the assistant mask covers the token that teaches the model to stop.
CHATML_TRAINING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Families whose base models carry turn tokens without a template: (tokens that must all be in the vocabulary,
# the TRL training template's name, the end-of-turn token).
FAMILY_TURN_TOKENS = [
    (("<start_of_turn>", "<end_of_turn>"), "gemma_training_chat_template", "<end_of_turn>"),
    (("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "llama3_training_chat_template", "<|eot_id|>"),
]

# Probe contents: strings no template writes, so each one's position in a rendering is unambiguous.
SYSTEM, USER_1, REPLY_1, USER_2, REPLY_2 = "⟦s·0⟧", "⟦u·1⟧", "⟦a·1⟧", "⟦u·2⟧", "⟦a·2⟧"


def has_markers(template: str | None) -> bool:
    return bool(template) and "generation %}" in template and "endgeneration" in template


def own_template(tokenizer) -> str | None:
    """The tokenizer's default template (a template shipped as named variants loads as a dict)."""
    template = tokenizer.chat_template
    return template.get("default") if isinstance(template, dict) else template


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def probe(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def sample_conversations(system: bool) -> list[list[dict]]:
    """Conversations the inferred template must render exactly as the model's own does."""
    head = [probe("system", "Eres Nico. Responde corto.")] if system else []
    one = [probe("user", "hola, ¿cómo estai?"), probe("assistant", "bien po 😄\ny tú?")]
    two = one + [probe("user", "  espacios  \n\n"), probe("assistant", "{{ no es jinja }} <b>")]
    return [head + one, head + two, head + two + [probe("user", "¿y mañana?")]]


class NotATurnFormat(Exception):
    """The template does not render conversations as a sequence of role-delimited turns habla can mark."""


def _between(text: str, start: str, end: str) -> str:
    begin = text.index(start) + len(start)
    return text[begin : text.index(end, begin)]


def _after(text: str, marker: str) -> str:
    return text[text.index(marker) + len(marker) :]


@dataclass(frozen=True)
class TurnFormat:
    """A template's turns: text before the first turn, and each role's text before and after its content.

    `reply_end` is the part of the assistant suffix up to its last special token (what the model must learn to
    write to stop); `reply_trail` is what follows it (ChatML's newline), rendered outside the loss.
    """

    preamble: str
    system: tuple[str, str] | None
    user: tuple[str, str]
    assistant_prefix: str
    reply_end: str
    reply_trail: str
    default_system: str | None
    trims: bool = False

    def default_system_turn(self) -> str | None:
        """The whole system turn the model's template writes into a conversation that has none."""
        if self.default_system is None or not self.system:
            return None
        return self.system[0] + self.default_system + self.system[1]

    def template(self) -> str:
        def literal(text: str) -> str:
            return json.dumps(text, ensure_ascii=False)

        content = "(message['content'] | trim)" if self.trims else "message['content']"

        system = (
            "{{- " + literal(self.system[0]) + " + " + content + " + " + literal(self.system[1]) + " }}"
            if self.system
            else "{{- raise_exception('This model has no system role: set persona.system_prompt to \"\"') }}"
        )
        return (
            "{#- habla: the model's own turn format with generation markers; no default system prompt -#}"
            "{%- for message in messages %}"
            "{%- if loop.first %}{{- " + literal(self.preamble) + " }}{%- endif %}"
            "{%- if message['role'] == 'system' %}" + system + "{%- elif message['role'] == 'user' %}"
            "{{- " + literal(self.user[0]) + " + " + content + " + " + literal(self.user[1]) + " }}"
            "{%- elif message['role'] == 'assistant' %}{{- " + literal(self.assistant_prefix) + " }}"
            "{% generation %}{{- " + content + " + " + literal(self.reply_end) + " }}{% endgeneration %}"
            "{{- " + literal(self.reply_trail) + " }}"
            "{%- else %}{{- raise_exception('unknown role: ' + message['role']) }}"
            "{%- endif %}{%- endfor %}"
            "{%- if add_generation_prompt %}{{- " + literal(self.assistant_prefix) + " }}{%- endif %}"
        )


def split_reply_suffix(suffix: str, special_tokens: list[str]) -> tuple[str, str]:
    """(up to and including the suffix's last special token, the rest)."""
    ends = [suffix.rindex(t) + len(t) for t in special_tokens if t and t in suffix]
    cut = max(ends, default=len(suffix))
    return suffix[:cut], suffix[cut:]


def infer_turns(tokenizer, template: str) -> TurnFormat:
    """Read the turn format off a template by rendering probe conversations (see the module docstring)."""
    from jinja2 import TemplateError

    def draw(messages, generation=False):
        try:
            return render(tokenizer, template, messages, generation)
        except (TemplateError, TypeError, ValueError) as err:
            raise NotATurnFormat(f"the template refused a probe conversation: {err}") from None

    turns = [probe("user", USER_1), probe("assistant", REPLY_1), probe("user", USER_2), probe("assistant", REPLY_2)]
    try:
        with_system = draw([probe("system", SYSTEM), *turns])
        head = [probe("system", SYSTEM)]
    except NotATurnFormat:
        with_system, head = None, []
    full = with_system or draw(turns)
    order = [SYSTEM] * bool(head) + [USER_1, REPLY_1, USER_2, REPLY_2]
    positions = [full.find(marker) for marker in order]
    if -1 in positions or positions != sorted(positions) or any(full.count(m) != 1 for m in order):
        raise NotATurnFormat("the probe contents do not appear once each, in order")
    try:
        without_prompt = draw([*head, turns[0]])
        assistant_prefix = draw([*head, turns[0]], generation=True).removeprefix(without_prompt)
        user_suffix = _after(without_prompt, USER_1)
        reply_suffix = _after(draw([*head, *turns[:2]]), REPLY_1)
        between_turns = _between(full, REPLY_1, USER_2)
        if not between_turns.startswith(reply_suffix):
            raise NotATurnFormat("a reply ends differently when another turn follows it")
        user_prefix = between_turns.removeprefix(reply_suffix)
        if _between(full, USER_1, REPLY_1) != user_suffix + assistant_prefix:
            raise NotATurnFormat("the text between a user turn and a reply is not suffix + generation prompt")
        before_first_user = full[: full.index(USER_1)]
        plain = draw(turns[:2])
        plain_head = plain[: plain.index(USER_1)]
    except ValueError as err:  # a marker missing where the format says it must be
        raise NotATurnFormat(str(err)) from None
    if not plain_head.endswith(user_prefix):
        raise NotATurnFormat("the first user turn does not start with the user prefix")
    system, default_system = None, None
    preamble = plain_head.removesuffix(user_prefix)
    if head:
        system_head = full[: full.index(SYSTEM)]
        system_suffix = _between(full, SYSTEM, USER_1).removesuffix(user_prefix)
        if not _between(full, SYSTEM, USER_1).endswith(user_prefix):
            raise NotATurnFormat("the user prefix does not follow the system turn")
        if not system_head.startswith(preamble):
            # The template wrote a system turn of its own into the conversation that had none:
            # plain_head = preamble + system prefix + default prompt + system suffix + user prefix.
            inserted = plain_head.removeprefix(system_head).removesuffix(user_prefix)
            if not plain_head.startswith(system_head) or not inserted.endswith(system_suffix):
                raise NotATurnFormat("the template's own system turn has another shape than a given one")
            default_system = inserted.removesuffix(system_suffix)
            # Where the preamble ends and the system prefix starts: the system prefix is the user prefix with its
            # role renamed in every format seen; `verify` proves the guess or rejects the inference.
            guess = user_prefix.replace("user", "system")
            preamble = system_head[: system_head.find(guess)] if guess in system_head else ""
        system = (system_head.removeprefix(preamble), system_suffix)
        if before_first_user != system_head + SYSTEM + system_suffix + user_prefix:
            raise NotATurnFormat("the system turn is not followed by the user turn")
    padded = draw([probe("user", f"  {USER_1} "), probe("assistant", REPLY_1)])
    trims = f"  {USER_1} " not in padded
    specials = [*tokenizer.all_special_tokens, *getattr(tokenizer, "added_tokens_encoder", {})]
    reply_end, reply_trail = split_reply_suffix(reply_suffix, specials)
    found = TurnFormat(
        preamble, system, (user_prefix, user_suffix), assistant_prefix, reply_end, reply_trail, default_system, trims
    )
    verify(tokenizer, template, found)
    return found


def verify(tokenizer, template: str, found: TurnFormat) -> None:
    """The inferred template must render every sample conversation as the model's own does (a default system
    prompt aside), with and without the generation prompt."""
    ours = found.template()
    for system in ([True] if found.system else []) + [False]:
        for messages in sample_conversations(system):
            for generation in (False, True):
                if messages[-1]["role"] == "assistant" and generation:
                    continue
                expected = render(tokenizer, template, messages, generation)
                if found.default_system_turn() and not system:
                    expected = expected.replace(found.default_system_turn(), "", 1)
                if render(tokenizer, ours, messages, generation) != expected:
                    raise NotATurnFormat("the inferred template renders a sample conversation differently")


def trl_training_template(tokenizer) -> str | None:
    """TRL's marked copy of a template it knows; None for any other (TRL 1.16 raises ValueError there)."""
    from trl.chat_template_utils import get_training_chat_template

    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        return None


def training_template(tokenizer) -> tuple[str, dict]:
    """The template to train with and a note of where it came from (recorded in `metrics/train.json`).

    Order: the model's own when it has markers, TRL's copy for a family it knows, else the model's turn format
    inferred here; the inferred one also replaces the first two when the model's template inserts a default
    system prompt. A template none of these can mark is a user error that says what to do.
    """
    own = own_template(tokenizer)
    if not own:
        raise ValueError("use template_for_untemplated for a tokenizer without a chat template")
    known = own if has_markers(own) else trl_training_template(tokenizer)
    try:
        inferred = infer_turns(tokenizer, own)
    except NotATurnFormat as err:
        if known:
            return known, {"template": _source(own, known)}
        raise UserError(
            f"the model's chat template cannot be trained with loss on the persona's turns only: TRL does not know "
            f"it and habla cannot read its turn format ({err}). Give the tokenizer a template with "
            "{% generation %} markers (tokenizer_config.json) and report the model name."
        ) from None
    if known and inferred.default_system is None:
        return known, {"template": _source(own, known)}
    notes = {"template": "the model's own turn format with generation markers (habla)"}
    if inferred.default_system is not None:
        notes["dropped_default_system_turn"] = inferred.default_system_turn()
    return inferred.template(), notes


def _source(own: str, chosen: str) -> str:
    return "model's own (has generation markers)" if chosen == own else "TRL training template for this model family"


def template_for_untemplated(tokenizer) -> tuple[str, str, list[str], dict]:
    """A template for a base model that has none: (template, end-of-turn token, turn tokens to add and train, notes).

    The turn tokens of its family where its vocabulary has them, else ChatML; a base model never trained their
    embedding rows, so they are trained whether they exist or are added.
    """
    import trl.chat_template_utils as trl_templates

    vocabulary = tokenizer.get_vocab()
    for tokens, name, end in FAMILY_TURN_TOKENS:
        if all(t in vocabulary for t in tokens):
            note = f"no template: the family's turn tokens {list(tokens)} ({name.removesuffix('_chat_template')})"
            return getattr(trl_templates, name), end, list(tokens), {"template": note, "trained_rows": list(tokens)}
    note = "no template and no family turn tokens: ChatML (fallback), its turn tokens' embedding rows trained"
    return CHATML_TRAINING_TEMPLATE, IM_END, [IM_START, IM_END], {"template": note, "trained_rows": [IM_START, IM_END]}
