"""Cleaned messages → conversations (chat examples), documents and keyword tasks: the `group` stage's transformations.

Chats are cut into sessions at silences longer than `group.session_gap_minutes`.
One author's messages sent within `group.merge_window_minutes` of each other are
a burst, joined by `group.separator` (the model learns to send several bubbles);
consecutive bursts with the same role form one turn, joined by a newline, so
roles alternate. The persona's turns are `assistant`, everyone else is `user`
(pseudonymised in group chats), so training teaches the persona's side only.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator

import polars as pl

from habla.errors import UserError
from habla.io import stable_id
from habla.params import Group, Params, Persona, persona_specs

ROLES = ["system", "user", "assistant"]
PLACEHOLDER_ONLY = r"^(?:\s*<(?:URL|EMAIL|TELEFONO|RUT|CURP|DNI|NIE)>\s*)+$"


def chosen_personas(params: Params) -> dict[str, Persona]:
    """The personas one run trains, by id: `personas` under `group.speakers: conditioned`, else the one `persona`
    under the id `persona`.

    A conditioned persona without its own system prompt gets `group.speaker_prompt` with its id: the system turn
    is what tells the one adapter who is speaking, in training and when served."""
    if params.group.speakers == "single":
        return {"persona": params.persona}
    chosen = {}
    for ident, persona in persona_specs(params).items():
        prompt = persona.system_prompt or params.group.speaker_prompt.replace("{persona}", ident)
        chosen[ident] = dataclasses.replace(persona, system_prompt=prompt)
        object.__setattr__(chosen[ident], "_path", f"personas.{ident}")
    return chosen


def check_persona(author_counts: pl.DataFrame, persona: Persona, key: str = "persona.authors") -> None:
    """`author_counts`: one row per chat author with its number of messages (`author`, `len`); `key` is where
    params.yaml names this persona's authors."""
    authors = author_counts.sort("len", "author", descending=[True, False])
    if not persona.authors:
        found = ", ".join(f"{a} ({n})" for a, n in authors.head(10).iter_rows())
        raise UserError(f"params: `{key}` is empty. Authors found (messages): {found}.")
    missing = [name for name in persona.authors if name not in set(authors["author"])]
    if missing:
        found = ", ".join(f"{a} ({n})" for a, n in authors.head(15).iter_rows())
        raise UserError(
            f"persona author(s) {missing} not found in the chats. Authors found (messages): {found}.\n"
            f"Set `{key}` in params.yaml to the name exactly as it appears in the export."
        )


def filter_messages(chats: pl.DataFrame, authors: list[str], settings: Group) -> tuple[pl.DataFrame, dict]:
    """Leave out the chosen `authors`' messages that are only redaction placeholders, and over-long messages, with
    counts."""
    placeholder = pl.col("author").is_in(authors) & pl.col("text").str.contains(PLACEHOLDER_ONLY)
    too_long = pl.col("text").str.len_chars() > settings.max_message_chars
    counts = chats.select(
        persona_placeholder_only=placeholder.sum(), message_too_long=(too_long & ~placeholder).sum()
    ).row(0, named=True)
    return chats.filter(~placeholder & ~too_long), {k: int(v) for k, v in counts.items()}


def session_starts(settings: Group) -> pl.Expr:
    """Over messages sorted by chat and time: whether each starts a session (a new chat, or a silence longer than
    `group.session_gap_minutes`). The one definition of a session, for conversations and turn-taking alike."""
    gap = pl.duration(minutes=settings.session_gap_minutes)
    starts = (pl.col("chat") != pl.col("chat").shift()) | ((pl.col("ts") - pl.col("ts").shift()) > gap)
    return starts.fill_null(True)


def turns(chats: pl.DataFrame, persona: Persona, settings: Group, labels: dict[str, str] | None = None) -> pl.DataFrame:
    """Messages → one row per turn: session, role, content, with sessions and roles assigned.

    `labels` names the other chosen personas in user turns (`[cami]`) instead of a numbered pseudonym, so a
    speaker-conditioned model sees who it answers; every author not chosen stays `[Persona n]`."""
    labels = labels or {}
    speakers = chats.group_by("chat").agg(pl.col("author").n_unique().alias("speakers"))
    first_seen = (
        chats.filter(~pl.col("author").is_in([*persona.authors, *labels]))
        .sort("chat", "ts", "line")
        .group_by("chat", "author", maintain_order=True)
        .agg(pl.col("ts").first())
        .with_columns(pseudonym=pl.format("[Persona {}]", pl.col("ts").rank("ordinal").over("chat").cast(pl.Int64) + 1))
        .select("chat", "author", "pseudonym")
    )
    named = pl.DataFrame(
        {"author": list(labels), "label": [f"[{label}]" for label in labels.values()]},
        schema={"author": pl.String, "label": pl.String},
    )
    frame = (
        chats.sort("chat", "ts", "line")
        .join(speakers, on="chat", how="left", maintain_order="left")
        .join(first_seen, on=["chat", "author"], how="left", maintain_order="left")
        .join(named, on="author", how="left", maintain_order="left")
        .with_columns(pseudonym=pl.coalesce("label", "pseudonym"))
        .with_columns(
            role=pl.when(pl.col("author").is_in(persona.authors)).then(pl.lit("assistant")).otherwise(pl.lit("user"))
        )
    )
    frame = frame.with_columns(new_session=session_starts(settings))
    frame = frame.with_columns(session=pl.col("new_session").cum_sum())
    new_turn = pl.col("new_session") | (pl.col("role") != pl.col("role").shift()).fill_null(True)
    speaker_changed = (pl.col("author") != pl.col("author").shift()).fill_null(True)
    new_burst = (
        new_turn
        | speaker_changed
        | ((pl.col("ts") - pl.col("ts").shift()) > pl.duration(minutes=settings.merge_window_minutes))
    )
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
    return bursts.group_by("turn", maintain_order=True).agg(
        chat=pl.col("chat").first(),
        session=pl.col("session").first(),
        start=pl.col("start").first(),
        role=pl.col("role").first(),
        content=pl.col("piece").str.join("\n"),
    )


def reply_windows(frame: pl.DataFrame, context_turns: int) -> pl.DataFrame:
    """Reply mode: each persona turn with up to `context_turns` turns before it, starting with a user turn.

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


def conversations(
    turn_rows: pl.DataFrame, persona: Persona, settings: Group, speaker: str = ""
) -> tuple[pl.DataFrame, dict]:
    """Turns → conversation examples (windows of at most `max_turns`), with filter counts.

    With a `speaker` (a conditioned persona's id) each example also carries `persona` and `conversation`: its
    session's id, the same in every speaker's view (their windows differ), which `split` keeps together."""
    frame = turn_rows.with_columns(
        position=pl.int_range(pl.len()).over("session"), session_start=pl.col("start").min().over("session")
    )
    dropped: dict[str, int] = {}
    opening = (pl.col("role") == "assistant") & (pl.col("position") == 0)
    if settings.persona_opens == "trim":
        dropped["opening_persona_turns_trimmed"] = frame.filter(opening).height
        frame = frame.filter(~opening).with_columns(position=pl.int_range(pl.len()).over("session"))
    elif settings.persona_opens == "opener":
        openers = frame.filter(opening).with_columns(
            role=pl.lit("user"), content=pl.lit(settings.opener), position=pl.lit(-1, dtype=frame.schema["position"])
        )
        dropped["opening_persona_turns_given_opener"] = openers.height
        frame = (
            pl.concat([openers, frame])
            .sort("session", "position")
            .with_columns(position=pl.int_range(pl.len()).over("session"))
        )
    if settings.mode == "reply":
        frame = reply_windows(frame, settings.context_turns)
    else:
        frame = frame.with_columns(window=pl.col("position") // settings.max_turns)
    grouped = frame.group_by("session", "window", maintain_order=True).agg(
        chat=pl.col("chat").first(),
        start=pl.col("start").first(),
        session_start=pl.col("session_start").first(),
        messages=pl.struct("role", "content"),
        assistant_turns=(pl.col("role") == "assistant").sum(),
        n_turns=pl.len(),
        shortest_turn=pl.col("content").str.len_chars().min(),
        longest_turn=pl.col("content").str.len_chars().max(),
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
    ids = [
        stable_id(chat, str(start), str(window))
        for chat, start, window in kept.select("chat", "start", "window").iter_rows()
    ]
    kept = kept.with_columns(id=pl.Series(ids, dtype=pl.String), source=pl.lit("whatsapp"))
    if persona.system_prompt:
        system = pl.lit([{"role": "system", "content": persona.system_prompt}], dtype=kept.schema["messages"])
        kept = kept.with_columns(messages=pl.concat_list(system, pl.col("messages")))
    columns = ["id", "source", "chat", pl.col("start").dt.to_string("%Y-%m-%dT%H:%M:%S").alias("start"), "messages"]
    if speaker:
        views = [stable_id(window, speaker) for window in kept["id"]]
        sessions = [stable_id(chat, str(start)) for chat, start in kept.select("chat", "session_start").iter_rows()]
        kept = kept.with_columns(
            id=pl.Series(views, dtype=pl.String),
            persona=pl.lit(speaker),
            conversation=pl.Series(sessions, dtype=pl.String),
        )
        columns += ["persona", "conversation"]
    return kept.select(columns), dropped


def speaker_conversations(
    chats: pl.DataFrame, personas: dict[str, Persona], settings: Group
) -> tuple[pl.DataFrame, dict]:
    """`group.speakers: conditioned`: one view of each conversation per chosen persona who speaks in it, that
    persona's turns `assistant` under its system prompt, the other chosen personas named in the user turns.

    One adapter learns every voice; who speaks is the system turn. Filter counts add up over the views (a
    conversation without one persona's turn is counted once for each persona who is silent in it)."""
    owners = {name: ident for ident, persona in personas.items() for name in persona.authors}
    views, dropped = [], Counter()
    for ident, persona in personas.items():
        others = {name: owner for name, owner in owners.items() if owner != ident}
        examples, counts = conversations(turns(chats, persona, settings, others), persona, settings, speaker=ident)
        views.append(examples)
        dropped.update(counts)
    return pl.concat(views), dict(dropped)


OTHERS = "others"  # in turn-taking counts: anyone not chosen (the person talking to the group in group mode)


def turn_taking(chats: pl.DataFrame, personas: dict[str, Persona], settings: Group) -> pl.DataFrame:
    """Who takes the turn after whom in the chats: one row per (`after`, `speaker`, `len`), each a chosen persona's
    id or `others`, counting every change of speaker within a session (a burst of one speaker counts once)."""
    owners = {name: ident for ident, persona in personas.items() for name in persona.authors}
    ordered = chats.sort("chat", "ts", "line").with_columns(
        speaker=pl.col("author").replace_strict(owners, default=OTHERS, return_dtype=pl.String)
    )
    return (
        ordered.with_columns(after=pl.col("speaker").shift(), new_session=session_starts(settings))
        .filter(~pl.col("new_session") & (pl.col("after") != pl.col("speaker")))
        .group_by("after", "speaker")
        .len()
    )


def answer_order(taking: dict[str, dict[str, int]], personas: list[str]) -> list[str]:
    """Who answers a message in group mode, in turn, by the group's own habits (`taking`: after → speaker →
    count, from `turn_taking`): after each speaker, the persona not yet heard who most often spoke right after
    them (ties: the order of `personas`), until the last one to speak handed the turn to someone not chosen more
    often than to any persona left. At least one answers; without counts, every persona in the order given."""
    if not taking:
        return list(personas)
    order, left, last = [], list(personas), OTHERS
    while left:
        after = taking.get(last, {})
        best = max(left, key=lambda ident: after.get(ident, 0))
        if order and after.get(OTHERS, 0) > after.get(best, 0):
            break
        order.append(best)
        left.remove(best)
        last = best
    return order


def unit_tasks(units: list[dict], persona: Persona) -> tuple[list[dict], int]:
    """One instruction example per curated unit that has a request (`task`): the user asks it, the persona answers
    with the unit's text. Returns the tasks and how many units had no request (no keywords found).
    Each task keeps its unit as `document`, so `split` sends it where the unit goes."""
    system = [{"role": "system", "content": persona.system_prompt}] if persona.system_prompt else []
    tasks = [
        {
            "id": stable_id("keywords", unit["id"]),
            "source": "keywords",
            "document": unit["id"],
            "keywords": unit["keywords"],
            "messages": [
                *system,
                {"role": "user", "content": unit["task"]},
                {"role": "assistant", "content": unit["text"]},
            ],
        }
        for unit in units
        if unit.get("task")
    ]
    return tasks, sum(not unit.get("task") for unit in units)


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


MESSAGES_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def batches(messages: pl.LazyFrame, key: str, batch_rows: int) -> Iterator[pl.DataFrame]:
    """The messages in batches of about `batch_rows`, whole `key` groups (a chat, a file) at a time, in key order.

    Every step of this stage works within one chat or one file, so batch by batch
    gives the same output as all at once, in bounded memory.
    """
    sizes = messages.group_by(key).len().sort(key).collect()
    numbered = sizes.with_columns(batch=(pl.col("len").cum_sum() - pl.col("len")) // batch_rows)
    for keys in numbered.group_by("batch", maintain_order=True).agg(pl.col(key))[key]:
        yield messages.filter(pl.col(key).is_in(keys.to_list())).collect()


class Summary:
    """The report's figures, added up batch by batch (medians keep one small integer per conversation and turn)."""

    def __init__(self):
        self.turns: list[pl.Series] = []
        self.chars: list[pl.Series] = []
        self.persona_turns = self.all_turns = self.documents = self.tasks = 0
        self.by_persona: Counter = Counter()

    def add_conversations(self, examples: pl.DataFrame, flat: pl.DataFrame) -> None:
        """`flat` is `flatten(examples)`, computed once for this and the gate."""
        self.turns.append(examples["messages"].list.eval(pl.element().struct.field("role") != "system").list.sum())
        self.chars.append(flat.filter(pl.col("role") != "system")["content"].str.len_chars())
        self.persona_turns += int((flat["role"] == "assistant").sum())
        self.all_turns += flat.height
        if "persona" in examples.columns:
            self.by_persona.update(dict(examples["persona"].value_counts().iter_rows()))

    def turn_counts(self) -> list[int]:
        """User and persona turns per conversation (a system prompt is not a turn)."""
        return [int(count) for part in self.turns for count in part]

    def report(self, dropped: dict, by_source: dict) -> dict:
        turns, chars = (pl.concat(parts) if parts else pl.Series(dtype=pl.UInt32) for parts in (self.turns, self.chars))
        return {
            "messages_by_source": by_source,
            "conversations": turns.len(),
            **({"conversations_by_persona": dict(sorted(self.by_persona.items()))} if self.by_persona else {}),
            "documents": self.documents,
            "keyword_tasks": self.tasks,
            "turns_per_conversation": {"mean": turns.mean(), "median": turns.median(), "max": turns.max()},
            "chars_per_turn": {"mean": chars.mean(), "median": chars.median(), "max": chars.max()},
            "persona_share_of_turns": self.persona_turns / self.all_turns if self.all_turns else 0.0,
            "filtered": dict(sorted(dropped.items())),
        }
