"""`habla chat`: talk to the fine-tuned persona in a terminal, or get one reply for a script.

The conversation is rendered with the same chat template and system prompt as
training, so the model sees at inference exactly the format it learned; the
message separator it learned is shown as a new bubble, never as a token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterator

from habla import paths
from habla.errors import UserError
from habla.grouping import answer_order, chosen_personas
from habla.io import read_json
from habla.model.generation import PromptTooLong, ReplyStream, fit_prompt
from habla.model.loading import (
    as_model,
    load_base,
    load_persona_adapters,
    load_tuned,
    models_in,
    special_separator,
)
from habla.params import Params, Sampling, load_params

HELP = (
    "/reset empieza de nuevo · /base, /tuned, /preferred u /own (el adaptador propio de cada persona) cambia de "
    "modelo · /as <id> habla con otra persona · /group todas responden · /exit sale"
)
OWN = "own"  # each persona answered by its own adapter (`train_persona@<id>`), loaded beside the conditioned one
YOU = ""  # the speaker of the user's own lines in the history


def speaker_view(history: list[tuple[str, str]], speaker: str, system_prompt: str) -> list[dict]:
    """The conversation as `speaker` saw it in training: its own lines are `assistant`, everyone else's `user`,
    the other personas' lines labelled with their id (`[cami]: …`, as `group` labels them) and consecutive user
    lines joined into one turn, so roles alternate."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for who, text in history:
        role = "assistant" if who == speaker else "user"
        content = text if who in (speaker, YOU) else f"[{who}]: {text}"
        if messages and messages[-1]["role"] == role == "user":
            messages[-1] = {"role": "user", "content": f"{messages[-1]['content']}\n{content}"}
        else:
            messages.append({"role": role, "content": content})
    return messages


def group_order(personas: list[str]) -> list[str]:
    """Who answers in group mode, in turn: by the group's own turn-taking in the chats (`turn_taking` in
    metrics/group.json, `grouping.answer_order`), or every persona in the order of `personas` without it."""
    report = paths.report("group")
    return answer_order(read_json(report).get("turn_taking", {}) if report.exists() else {}, personas)


class Session:
    """A multi-turn chat with base+adapters, switchable between the base, the fine-tuned (SFT) and the
    preference-tuned model (where `prefer` made one), and, for a speaker-conditioned model
    (`group.speakers: conditioned`), between its personas, or with all of them in a group; `own` (id → adapter
    name, `load_persona_adapters`) lets each persona speak with its own adapter (`/own`, the default then)."""

    def __init__(
        self, model, tokenizer, params: Params, sampling: Sampling, tuned: bool = True, own: dict | None = None
    ):
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.personas = chosen_personas(params)
        self.speaker = next(iter(self.personas))
        self.order = group_order(list(self.personas))
        self.separator = params.group.separator
        self.own = own or {}
        self.available = [*models_in(model), *([OWN] if self.own else [])]
        self.name = next((name for name in (OWN, "tuned") if tuned and name in self.available), "base")
        self.history: list[tuple[str, str]] = []

    @property
    def adapter(self) -> str:
        """What speaks now: under `own`, the speaker's own adapter (the conditioned one for a persona without)."""
        return self.own.get(self.speaker, "tuned") if self.name == OWN else self.name

    @property
    def system_prompt(self) -> str:
        return self.personas[self.speaker].system_prompt

    def reset(self) -> None:
        self.history = []

    def messages(self, user_text: str | None) -> list[dict]:
        """The prompt for the current speaker; `user_text` None: it answers what was said (group mode)."""
        said = self.history + ([(YOU, user_text)] if user_text is not None else [])
        return speaker_view(said, self.speaker, self.system_prompt)

    def reply(self, user_text: str | None) -> Iterator[str]:
        """Stream the reply's pieces, then keep the exchange in the history.

        A long conversation loses its oldest turns to fit the model's context (the model would otherwise warn inside
        the reply and forget the start anyway); a single message longer than the context is a `PromptTooLong`.
        """
        keep = [t for t in [special_separator(self.separator)] if t]
        messages, max_new_tokens, _ = fit_prompt(
            self.model, self.tokenizer, self.messages(user_text), self.sampling.max_new_tokens, drop_oldest=True
        )
        sampling = dataclasses.replace(self.sampling, max_new_tokens=max_new_tokens)
        stream = ReplyStream(self.model, self.tokenizer, messages, sampling, keep_tokens=keep)
        with as_model(self.model, self.adapter):
            yield from stream
        said = [(YOU, user_text)] if user_text is not None else []
        self.history += [*said, (self.speaker, stream.text.strip())]


def load_session(params: Params, sampling: Sampling, base_only: bool) -> Session:
    if base_only and not (paths.ADAPTER / "adapter_config.json").exists():
        model, tokenizer = load_base()
        model.eval()
    else:
        model, tokenizer = load_tuned(preferred=True)
    conditioned = params.group.speakers == "conditioned" and not base_only
    own = load_persona_adapters(model, chosen_personas(params)) if conditioned else {}
    return Session(model, tokenizer, params, sampling, tuned=not base_only, own=own)


def bubbles(pieces: Iterator[str], separator: str, indent: str) -> Iterator[str]:
    """A learned separator token starts a new message bubble on its own line."""
    token = special_separator(separator)
    for piece in pieces:
        yield piece.replace(token, "\n" + indent) if token else piece


def interactive(session: Session, persona: str, out=sys.stdout, read=input) -> None:
    """The terminal loop. Ctrl-C during a reply stops that reply; Ctrl-C or Ctrl-D at the prompt ends the chat."""
    print(f"Chat con {persona} ({session.name}). {HELP}", file=out)
    group = False
    while True:
        try:
            text = read("tú> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return
        if not text:
            continue
        command = text.lower()
        if command in ("/exit", "/salir", "/quit"):
            return
        if command == "/reset":
            session.reset()
            print("(conversación nueva)", file=out)
        elif command in ("/base", "/tuned", "/preferred", "/own"):
            if command[1:] not in session.available:
                stage = {"/tuned": "train", "/own": "train_persona"}.get(command, "prefer")
                print(f"(no hay adaptador {command[1:]}: corre `dvc repro {stage}`)", file=out)
            else:
                session.name = command[1:]
                print(f"(modelo: {session.name})", file=out)
        elif command.startswith("/as ") or command == "/group":
            group = speak_as(session, text, out)
        elif command.startswith("/"):
            print(HELP, file=out)
        elif group:
            for index, speaker in enumerate(session.order):
                session.speaker = speaker
                answer(session, text if index == 0 else None, speaker, out)
        else:
            label = session.speaker if len(session.personas) > 1 else persona
            answer(session, text, label if session.name in ("tuned", OWN) else session.name, out)


def speak_as(session: Session, command: str, out) -> bool:
    """`/as <id>`: talk to one persona (the history stays: what the others said is theirs); `/group`: the personas
    answer each message in turn (`group_order`). Returns whether group mode is on."""
    if len(session.personas) < 2:
        print("(un solo hablante: `/as` y `/group` son para group.speakers: conditioned)", file=out)
        return False
    if command.lower() == "/group":
        print(f"(grupo: responden {', '.join(session.order)}, en ese orden)", file=out)
        return True
    ident = command[4:].strip()
    if ident not in session.personas:
        print(f"(no hay persona `{ident}`; hay {', '.join(session.personas)})", file=out)
        return False
    session.speaker = ident
    print(f"(hablas con {ident})", file=out)
    return False


def answer(session: Session, text: str, label: str, out) -> None:
    """One reply, streamed under the label of the model that gives it."""
    prefix = f"{label}> "
    out.write(prefix)
    try:
        with contextlib.closing(session.reply(text)) as pieces:
            for piece in bubbles(pieces, session.separator, " " * len(prefix)):
                out.write(piece)
                out.flush()
    except KeyboardInterrupt:
        out.write(" (interrumpido)")
    except PromptTooLong as err:
        out.write(f"(mensaje demasiado largo: {err.length} tokens; este modelo admite {err.window - 1})")
    out.write("\n")


def quiet_libraries() -> None:
    """transformers writes its warnings straight to stderr, in the middle of a streamed reply; through Python logging
    they are log lines (shown from WARNING, like every other log line of habla)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    logging.captureWarnings(True)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="habla chat", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", help="one message; print the reply and exit (for scripts)")
    parser.add_argument("--base-only", action="store_true", help="talk to the base model, without the adapter")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    quiet_libraries()
    params = load_params()
    overrides = {
        k: v
        for k, v in {
            "temperature": args.temperature,
            "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    sampling = dataclasses.replace(params.evaluate.sampling, **overrides)
    session = load_session(params, sampling, args.base_only)
    persona = session.speaker if len(session.personas) > 1 else (params.persona.authors or ["persona"])[0]
    if args.prompt is not None:
        try:
            for piece in bubbles(session.reply(args.prompt), session.separator, ""):
                sys.stdout.write(piece)
        except PromptTooLong as err:
            raise UserError(f"--prompt is too long ({err}); shorten it.") from None
        sys.stdout.write("\n")
        return
    interactive(session, persona)
