"""`group` stage: cleaned messages → conversations (chat examples) and documents.

Chats are cut into sessions at silences longer than `group.session_gap_minutes`.
One author's messages sent within `group.merge_window_minutes` of each other are
a burst, joined by `group.separator` (the model learns to send several bubbles);
consecutive bursts with the same role form one turn, joined by a newline, so
roles alternate. The persona's turns are `assistant`, everyone else is `user`
(pseudonymised in group chats), so training teaches the persona's side only.
Transcripts and lyrics become plain-text passages for language modelling, and
each passage an instruction example ("write about <its keywords>") when
`group.keyword_tasks.enabled`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import polars as pl

from stages.errors import UserError, run_stage
from stages.gates import run_gate
from stages.io import write_frame_jsonl, write_json, write_jsonl
from stages.keywords import keyword_prompt, top_keywords
from stages.params import Group, KeywordTasks, Persona, load_params

log = logging.getLogger("group")

MESSAGES = Path("data/cleaned/messages.parquet")
OUT_DIR = Path("data/grouped")
REPORT = Path("metrics/group.json")
ROLES = ["system", "user", "assistant"]
PLACEHOLDER_ONLY = r"^(?:\s*<(?:URL|EMAIL|TELEFONO|RUT|CURP|DNI|NIE)>\s*)+$"
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def stable_id(*parts: str) -> str:
    """A short id that stays the same across runs, machines and library versions."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


def check_persona(chats: pl.DataFrame, persona: Persona) -> None:
    authors = chats.group_by("author").len().sort("len", descending=True)
    if not persona.authors:
        found = ", ".join(f"{a} ({n})" for a, n in authors.head(10).iter_rows())
        raise UserError(f"params: `persona.authors` is empty. Authors found (messages): {found}.")
    missing = [name for name in persona.authors if name not in set(authors["author"])]
    if missing:
        found = ", ".join(f"{a} ({n})" for a, n in authors.head(15).iter_rows())
        raise UserError(
            f"persona author(s) {missing} not found in the chats. Authors found (messages): {found}.\n"
            "Set `persona.authors` in params.yaml to the name exactly as it appears in the export."
        )


def filter_messages(chats: pl.DataFrame, persona: Persona, settings: Group) -> tuple[pl.DataFrame, dict]:
    """Leave out persona messages that are only redaction placeholders, and over-long messages, with counts."""
    placeholder = pl.col("author").is_in(persona.authors) & pl.col("text").str.contains(PLACEHOLDER_ONLY)
    too_long = pl.col("text").str.len_chars() > settings.max_message_chars
    counts = chats.select(
        persona_placeholder_only=placeholder.sum(), message_too_long=(too_long & ~placeholder).sum()
    ).row(0, named=True)
    return chats.filter(~placeholder & ~too_long), {k: int(v) for k, v in counts.items()}


def turns(chats: pl.DataFrame, persona: Persona, settings: Group) -> pl.DataFrame:
    """Messages → one row per turn: session, role, content, with sessions and roles assigned."""
    gap = pl.duration(minutes=settings.session_gap_minutes)
    speakers = chats.group_by("chat").agg(pl.col("author").n_unique().alias("speakers"))
    first_seen = (
        chats.filter(~pl.col("author").is_in(persona.authors))
        .sort("chat", "ts", "line")
        .group_by("chat", "author", maintain_order=True)
        .agg(pl.col("ts").first())
        .with_columns(pseudonym=pl.format("[Persona {}]", pl.col("ts").rank("ordinal").over("chat").cast(pl.Int64) + 1))
        .select("chat", "author", "pseudonym")
    )
    frame = (
        chats.sort("chat", "ts", "line")
        .join(speakers, on="chat", how="left", maintain_order="left")
        .join(first_seen, on=["chat", "author"], how="left", maintain_order="left")
        .with_columns(role=pl.when(pl.col("author").is_in(persona.authors)).then(pl.lit("assistant")).otherwise(pl.lit("user")))
    )
    new_session = (pl.col("chat") != pl.col("chat").shift()) | ((pl.col("ts") - pl.col("ts").shift()) > gap)
    frame = frame.with_columns(new_session=new_session.fill_null(True))
    frame = frame.with_columns(session=pl.col("new_session").cum_sum())
    new_turn = pl.col("new_session") | (pl.col("role") != pl.col("role").shift()).fill_null(True)
    speaker_changed = (pl.col("author") != pl.col("author").shift()).fill_null(True)
    new_burst = new_turn | speaker_changed | ((pl.col("ts") - pl.col("ts").shift()) > pl.duration(minutes=settings.merge_window_minutes))
    frame = frame.with_columns(turn=new_turn.cum_sum(), burst=new_burst.fill_null(True).cum_sum())
    labelled = settings.label_speakers & (pl.col("speakers") > 2) & (pl.col("role") == "user")
    bursts = (
        frame.group_by("burst", maintain_order=True)
        .agg(
            pl.col("turn", "chat", "session", "role", "pseudonym").first(),
            start=pl.col("ts").first(),
            labelled=labelled.first(),
            text=pl.col("text").str.join(settings.separator),
        )
        .with_columns(
            piece=pl.when(pl.col("labelled")).then(pl.format("{}: {}", "pseudonym", "text")).otherwise(pl.col("text"))
        )
    )
    return (
        bursts.group_by("turn", maintain_order=True)
        .agg(
            chat=pl.col("chat").first(),
            session=pl.col("session").first(),
            start=pl.col("start").first(),
            role=pl.col("role").first(),
            content=pl.col("piece").str.join("\n"),
        )
    )


def reply_windows(frame: pl.DataFrame, context_turns: int) -> pl.DataFrame:
    """Reply mode: for each persona turn, that turn and up to `context_turns` turns before it, starting with a user turn.

    Rows are repeated once per window they belong to; `window` is the position of
    the reply, so (session, window) identifies an example ending with that reply.
    Earlier persona turns inside the window are in the loss too (TRL's assistant
    mask covers every assistant turn), as in the seed notebooks this mode is kept
    to compare against; `conversation` mode sees each reply once and is cheaper.
    """
    replies = frame.filter((pl.col("role") == "assistant") & (pl.col("position") > 0)).select(
        "session", window=pl.col("position")
    )
    joined = frame.join(replies, on="session", how="inner", maintain_order="right").filter(
        (pl.col("position") <= pl.col("window")) & (pl.col("position") >= pl.col("window") - context_turns)
    )
    first_user = pl.when(pl.col("role") == "user").then(pl.col("position")).min().over("session", "window")
    return joined.filter(pl.col("position") >= first_user).sort("session", "window", "position", maintain_order=True)


def conversations(turn_rows: pl.DataFrame, persona: Persona, settings: Group) -> tuple[pl.DataFrame, dict]:
    """Turns → conversation examples (windows of at most `max_turns`), with filter counts."""
    frame = turn_rows.with_columns(position=pl.int_range(pl.len()).over("session"))
    dropped: dict[str, int] = {}
    opening = (pl.col("role") == "assistant") & (pl.col("position") == 0)
    if settings.persona_opens == "trim":
        dropped["opening_persona_turns_trimmed"] = frame.filter(opening).height
        frame = frame.filter(~opening).with_columns(position=pl.int_range(pl.len()).over("session"))
    elif settings.persona_opens == "opener":
        openers = frame.filter(opening).with_columns(role=pl.lit("user"), content=pl.lit(settings.opener), position=pl.lit(-1, dtype=frame.schema["position"]))
        dropped["opening_persona_turns_given_opener"] = openers.height
        frame = (
            pl.concat([openers, frame]).sort("session", "position")
            .with_columns(position=pl.int_range(pl.len()).over("session"))
        )
    if settings.mode == "reply":
        frame = reply_windows(frame, settings.context_turns)
    else:
        frame = frame.with_columns(window=pl.col("position") // settings.max_turns)
    grouped = (
        frame.group_by("session", "window", maintain_order=True)
        .agg(
            chat=pl.col("chat").first(),
            start=pl.col("start").first(),
            messages=pl.struct("role", "content"),
            assistant_turns=(pl.col("role") == "assistant").sum(),
            n_turns=pl.len(),
            shortest_turn=pl.col("content").str.len_chars().min(),
            longest_turn=pl.col("content").str.len_chars().max(),
        )
    )
    reasons = {
        "no_persona_turn": pl.col("assistant_turns") == 0,
        "too_few_turns": pl.col("n_turns") < settings.min_turns,
        "turn_too_short": pl.col("shortest_turn") < settings.min_turn_chars,
        "turn_too_long": pl.col("longest_turn") > settings.max_turn_chars,
    }
    rejected = pl.lit(False)
    for reason, condition in reasons.items():
        dropped[reason] = grouped.filter(~rejected & condition).height
        rejected = rejected | condition
    kept = grouped.filter(~rejected)
    ids = [stable_id(chat, str(start), str(window)) for chat, start, window in kept.select("chat", "start", "window").iter_rows()]
    kept = kept.with_columns(id=pl.Series(ids, dtype=pl.String), source=pl.lit("whatsapp"))
    if persona.system_prompt:
        system = pl.lit([{"role": "system", "content": persona.system_prompt}], dtype=kept.schema["messages"])
        kept = kept.with_columns(messages=pl.concat_list(system, pl.col("messages")))
    return kept.select("id", "source", "chat", pl.col("start").dt.to_string("%Y-%m-%dT%H:%M:%S").alias("start"), "messages"), dropped


def passages(text: str, target_chars: int) -> list[str]:
    """Cut text at sentence boundaries into passages of about `target_chars`."""
    out, current = [], ""
    for sentence in SENTENCE_END.split(text.strip()):
        if current and len(current) + 1 + len(sentence) > target_chars:
            out.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        out.append(current)
    return out


def documents(messages: pl.DataFrame, settings: Group) -> list[dict]:
    """One document per song; transcripts and table rows with the same title cut into passages."""
    texts = messages.filter(pl.col("source").is_in(["transcript", "lyrics", "table"])).sort("file", "line")
    by_document = texts.group_by("source", "file", "chat", maintain_order=True).agg(pl.col("text").str.join("\n"))
    rows = []
    for source, file, chat, text in by_document.iter_rows():
        pieces = [text] if source == "lyrics" else passages(text.replace("\n", " "), settings.doc_chars)
        rows += [{"id": stable_id(file, chat, str(i)), "source": source, "file": file, "text": piece} for i, piece in enumerate(pieces)]
    return rows


def keyword_tasks(docs: list[dict], persona: Persona, settings: KeywordTasks) -> tuple[list[dict], int]:
    """One instruction example per document: the user asks for a text about its keywords, the persona answers with it.

    Returns the tasks and how many documents had no keyword left after stop words.
    Each task keeps its `document` id, so `split` sends it where the document goes.
    """
    if not settings.enabled:
        return [], 0
    chosen = top_keywords([d["text"] for d in docs], settings.keywords, settings.extra_stop_words)
    system = [{"role": "system", "content": persona.system_prompt}] if persona.system_prompt else []
    tasks = [
        {
            "id": stable_id("keywords", doc["id"]),
            "source": "keywords",
            "document": doc["id"],
            "keywords": words,
            "messages": [
                *system,
                {"role": "user", "content": keyword_prompt(settings.song_prompt if doc["source"] == "lyrics" else settings.prompt, words)},
                {"role": "assistant", "content": doc["text"]},
            ],
        }
        for doc, words in zip(docs, chosen)
        if words
    ]
    return tasks, len(docs) - len(tasks)


def flatten(examples: pl.DataFrame) -> pl.DataFrame:
    """One row per turn with its position and the previous role, for the gate."""
    return (
        examples.select("id", "messages")
        .explode("messages")
        .unnest("messages")
        .with_columns(
            previous_role=pl.col("role").shift().over("id"),
            assistant_turns=(pl.col("role") == "assistant").sum().over("id"),
        )
        .with_columns(
            role_repeats=(pl.col("role") == pl.col("previous_role")).fill_null(False),
            system_not_first=(pl.col("role") == "system") & pl.col("previous_role").is_not_null(),
        )
    )


GATE = [
    ("ExpectTableRowCountToBeBetween", {"min_value": 1, "description": "at least one example"}),
    ("ExpectColumnValuesToNotBeNull", {"column": "content", "description": "every turn has content"}),
    ("ExpectColumnValueLengthsToBeBetween", {"column": "content", "min_value": 1, "description": "no empty turn"}),
    ("ExpectColumnValuesToBeInSet", {"column": "role", "value_set": ROLES, "description": "roles are system, user or assistant"}),
    ("ExpectColumnValuesToBeBetween", {"column": "assistant_turns", "min_value": 1, "description": "every example has a persona turn"}),
    ("ExpectColumnValuesToBeInSet", {"column": "role_repeats", "value_set": [False], "description": "roles alternate (no two turns in a row with one role)"}),
    ("ExpectColumnValuesToBeInSet", {"column": "system_not_first", "value_set": [False], "description": "a system turn only comes first"}),
]


def summary(examples: pl.DataFrame, docs: list[dict], tasks: list[dict], dropped: dict, messages: pl.DataFrame) -> dict:
    flat = flatten(examples)
    chars = flat.filter(pl.col("role") != "system")["content"].str.len_chars()
    n_turns = examples["messages"].list.len()
    return {
        "messages_by_source": dict(sorted(messages.group_by("source").len().iter_rows())),
        "conversations": examples.height,
        "documents": len(docs),
        "keyword_tasks": len(tasks),
        "turns_per_conversation": {"mean": n_turns.mean(), "median": n_turns.median(), "max": n_turns.max()},
        "chars_per_turn": {"mean": chars.mean(), "median": chars.median(), "max": chars.max()},
        "persona_share_of_turns": float((flat["role"] == "assistant").mean()) if flat.height else 0.0,
        "filtered": dropped,
    }


def main() -> None:
    params = load_params()
    messages = pl.read_parquet(MESSAGES)
    chats = messages.filter(pl.col("source") == "whatsapp")
    if chats.is_empty():
        raise UserError("no chat messages in data/cleaned/messages.parquet: add WhatsApp exports under data/raw/.")
    check_persona(chats, params.persona)
    chats, dropped_messages = filter_messages(chats, params.persona, params.group)
    examples, dropped = conversations(turns(chats, params.persona, params.group), params.persona, params.group)
    dropped = {**dropped_messages, **dropped}
    docs = documents(messages, params.group)
    tasks, dropped["documents_without_keywords"] = keyword_tasks(docs, params.persona, params.group.keyword_tasks)
    checked = pl.concat([examples.select("id", "messages"), pl.DataFrame(tasks, schema={"id": pl.String, "messages": examples.schema["messages"]})])
    run_gate("group", flatten(checked).select("role", "content", "assistant_turns", "role_repeats", "system_not_first"), GATE)
    write_frame_jsonl(OUT_DIR / "conversations.jsonl", examples)
    write_jsonl(OUT_DIR / "documents.jsonl", docs)
    write_jsonl(OUT_DIR / "keyword_tasks.jsonl", tasks)
    stats = summary(examples, docs, tasks, dropped, messages)
    write_json(REPORT, stats)
    log.info("%d conversations, %d documents, %d keyword tasks, filtered %s", stats["conversations"], stats["documents"], len(tasks), dropped)


if __name__ == "__main__":
    run_stage(main)
