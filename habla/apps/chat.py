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
from habla.model.generation import PromptTooLong, ReplyStream, fit_prompt
from habla.model.loading import as_model, load_base, load_tuned, models_in, special_separator
from habla.params import Params, Sampling, load_params

HELP = "/reset empieza de nuevo · /base, /tuned o /preferred cambia de modelo · /exit sale"


class Session:
    """A multi-turn chat with base+adapters, switchable between the base, the fine-tuned (SFT) and the
    preference-tuned model (where `prefer` made one)."""

    def __init__(self, model, tokenizer, params: Params, sampling: Sampling, tuned: bool = True):
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.system_prompt = params.persona.system_prompt
        self.separator = params.group.separator
        self.available = models_in(model)
        self.name = "tuned" if tuned and "tuned" in self.available else "base"
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def messages(self, user_text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.history + [{"role": "user", "content": user_text}]

    def reply(self, user_text: str) -> Iterator[str]:
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
        with as_model(self.model, self.name):
            yield from stream
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": stream.text.strip()}]


def load_session(params: Params, sampling: Sampling, base_only: bool) -> Session:
    if base_only and not (paths.ADAPTER / "adapter_config.json").exists():
        model, tokenizer = load_base()
        model.eval()
    else:
        model, tokenizer = load_tuned(preferred=True)
    return Session(model, tokenizer, params, sampling, tuned=not base_only)


def bubbles(pieces: Iterator[str], separator: str, indent: str) -> Iterator[str]:
    """A learned separator token starts a new message bubble on its own line."""
    token = special_separator(separator)
    for piece in pieces:
        yield piece.replace(token, "\n" + indent) if token else piece


def interactive(session: Session, persona: str, out=sys.stdout, read=input) -> None:
    """The terminal loop. Ctrl-C during a reply stops that reply; Ctrl-C or Ctrl-D at the prompt ends the chat."""
    print(f"Chat con {persona} ({session.name}). {HELP}", file=out)
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
        elif command in ("/base", "/tuned", "/preferred"):
            if command[1:] not in session.available:
                stage = "train" if command == "/tuned" else "prefer"
                print(f"(no hay adaptador {command[1:]}: corre `dvc repro {stage}`)", file=out)
            else:
                session.name = command[1:]
                print(f"(modelo: {session.name})", file=out)
        elif command.startswith("/"):
            print(HELP, file=out)
        else:
            answer(session, text, {"tuned": persona}.get(session.name, session.name), out)


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
    persona = (params.persona.authors or ["persona"])[0]
    if args.prompt is not None:
        try:
            for piece in bubbles(session.reply(args.prompt), session.separator, ""):
                sys.stdout.write(piece)
        except PromptTooLong as err:
            raise UserError(f"--prompt is too long ({err}); shorten it.") from None
        sys.stdout.write("\n")
        return
    interactive(session, persona)
