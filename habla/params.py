"""The one params loader: `params.yaml` → typed, validated dataclasses.

Every stage reads its settings through `load_params()`. Unknown keys and wrong
types stop the stage with a message that names the key, because a typo in
`dvc exp run -S train.lora.rank=4` would otherwise be silently ignored and the
experiment would compare two identical runs.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from habla import paths
from habla.errors import UserError

PARAMS_FILE_ENV = "HABLA_PARAMS"
# A preset is a ready-made set of settings for a real model; it may only touch the
# sections of the model stages, so choosing one never reruns clean, group or split.
PRESET_SECTIONS = ("model", "train", "prefer", "evaluate", "judge")


AUDIT_ENV = "HABLA_PARAMS_AUDIT"
_read_keys: set[str] | None = None


class _Section:
    """Base of every params section. With HABLA_PARAMS_AUDIT naming a file, the leaf keys a process reads are
    appended to it at exit, so a test can prove that every key a stage reads is a declared DVC param of it
    (a key read but not declared is a change `dvc repro` would not rerun the stage for)."""

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if (
            _read_keys is not None
            and not name.startswith("_")
            and not isinstance(value, _Section)
            and not callable(value)
        ):
            prefix = object.__getattribute__(self, "__dict__").get("_path", "")
            _read_keys.add(f"{prefix}.{name}" if prefix else name)
        return value


def _start_audit(path: str) -> None:
    global _read_keys
    if _read_keys is not None:
        return
    _read_keys = set()

    def write() -> None:
        main = sys.modules.get("__main__")
        module = getattr(getattr(main, "__spec__", None), "name", None) or getattr(main, "__file__", "?")
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"module": module, "keys": sorted(_read_keys)}) + "\n")

    atexit.register(write)


@dataclass(frozen=True)
class Persona(_Section):
    authors: list[str] = field(default_factory=list)
    system_prompt: str = ""


PERSONA_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Redaction(_Section):
    phones: bool = True
    emails: bool = True
    urls: bool = True
    ids: bool = True
    phone_regions: list[str] = field(default_factory=lambda: ["CL", "AR", "MX", "ES", "CO", "PE", "US"])


@dataclass(frozen=True)
class TableColumns(_Section):
    text: str = "text"
    author: str = ""
    title: str = ""
    ts: str = ""


@dataclass(frozen=True)
class Clean(_Section):
    date_order: Literal["auto", "dmy", "mdy", "ymd"] = "auto"
    header_format: str = ""
    max_chars: int = 4000
    max_document_chars: int = 200_000
    whisper_max_no_speech: float = 0.6
    whisper_max_compression: float = 2.4
    max_zip_member_mb: int = 200
    report_file_names: bool = False
    table_columns: TableColumns = field(default_factory=TableColumns)
    redact: Redaction = field(default_factory=Redaction)


@dataclass(frozen=True)
class Resources(_Section):
    """How to run, not what to compute: no stage lists this section as a DVC param, so changing it reruns nothing."""

    batch_rows: int = 250_000


@dataclass(frozen=True)
class KeywordTasks(_Section):
    enabled: bool = True


@dataclass(frozen=True)
class Group(_Section):
    mode: Literal["conversation", "reply"] = "conversation"
    session_gap_minutes: int = 180
    merge_window_minutes: int = 10
    separator: str = "\n"
    label_speakers: bool = True
    persona_opens: Literal["trim", "keep", "opener"] = "trim"
    opener: str = "…"
    min_turns: int = 2
    max_turns: int = 8
    context_turns: int = 6
    max_message_chars: int = 1500
    min_turn_chars: int = 1
    max_turn_chars: int = 3000
    keyword_tasks: KeywordTasks = field(default_factory=KeywordTasks)
    speakers: Literal["single", "conditioned"] = "single"
    speaker_prompt: str = "Eres {persona}."


@dataclass(frozen=True)
class Curate(_Section):
    backend: Literal["passages", "openai"] = "passages"
    prompt_set: str = "texts"
    passage_chars: int = 600
    keywords: int = 3
    extra_stop_words: list[str] = field(
        default_factory=lambda: ["po", "pos", "ya", "oye", "oigan", "weón", "weon", "cachai", "jaja"]
    )
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    timeout_s: float = 120.0
    max_retries: int = 3
    concurrency: int = 4
    max_tokens: int = 4096
    chunk_chars: int = 3000
    overlap_chars: int = 400
    min_similarity: float = 90.0
    min_words: int = 1
    max_words: int = 0
    min_score: int = 0
    field_bounds: dict = field(default_factory=dict)
    near_duplicate_threshold: float = 0.8


@dataclass(frozen=True)
class Ratios(_Section):
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1


@dataclass(frozen=True)
class Split(_Section):
    strategy: Literal["hash", "time"] = "hash"
    seed: int = 13
    ratios: Ratios = field(default_factory=Ratios)
    overlap_min_chars: int = 30
    near_dup_threshold: float = 0.8
    near_dups: Literal["move", "report"] = "move"
    min_test: int = 5


@dataclass(frozen=True)
class Model(_Section):
    base: str = "builtin-tiny"
    revision: str = "main"


@dataclass(frozen=True)
class Builtin(_Section):
    vocab_size: int = 2048
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    context: int = 256
    batch_size: int = 8
    max_steps: int = 120
    learning_rate: float = 3e-3
    seed: int = 7


@dataclass(frozen=True)
class Lora(_Section):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    use_rslora: bool = False
    use_dora: bool = False


@dataclass(frozen=True)
class Train(_Section):
    accelerate_profile: Literal["cpu", "single-gpu", "multi-gpu", "fsdp"] = "cpu"
    seed: int = 42
    max_length: int = 256
    max_steps: int = 150
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    eval_steps: int = 50
    packing: bool = False
    gradient_checkpointing: bool = False
    quantization: Literal["none", "4bit"] = "none"
    resume: Literal["auto", "never"] = "auto"
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "auto"
    padding_free: Literal["auto"] | bool = "auto"
    fused_loss: Literal["auto"] | bool = "auto"
    token_metrics: bool = False
    compile: bool = False
    lora: Lora = field(default_factory=Lora)


@dataclass(frozen=True)
class Sampling(_Section):
    max_new_tokens: int = 40
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class Prefer(_Section):
    enabled: bool = True
    pairs_per_conversation: int = 1
    max_pairs: int = 128
    seed: int = 0
    sampling: Sampling = field(default_factory=lambda: Sampling(max_new_tokens=40, temperature=1.0, top_p=0.95))
    max_similarity: float = 90.0
    filter: Literal["none", "judge"] = "none"
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "apo_zero", "apo_down"] = "sigmoid"
    learning_rate: float = 5e-4
    max_steps: int = 32
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_length: int = 256
    save_steps: int = 20
    resume: Literal["auto", "never"] = "auto"


@dataclass(frozen=True)
class Evaluate(_Section):
    batch_size: int = 16
    bootstrap: int = 1000
    stride: int = 128
    max_conversations: int = 0
    max_prompts: int = 24
    cut: Literal["last", "random"] = "last"
    cut_seed: int = 0
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class Opponent(_Section):
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""
    timeout_s: float = 120.0
    max_retries: int = 3
    concurrency: int = 4
    max_tokens: int = 256


@dataclass(frozen=True)
class Judge(_Section):
    backend: Literal["local", "openai"] = "local"
    model: str = "base"
    prompt: str = "auto"
    base_url: str = ""
    api_key_env: str = ""
    timeout_s: float = 60.0
    max_retries: int = 3
    concurrency: int = 4
    opponent: Opponent = field(default_factory=Opponent)


@dataclass(frozen=True)
class Voice(_Section):
    folds: int = 5
    max_train_turns: int = 20000
    judge: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Serve(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = ""
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int = 512
    queue_limit: int = 16
    read_timeout_s: float = 30.0
    truncate: Literal["error", "oldest"] = "error"


@dataclass(frozen=True)
class Params(_Section):
    preset: str = ""
    persona: Persona = field(default_factory=Persona)
    personas: dict = field(default_factory=dict)
    clean: Clean = field(default_factory=Clean)
    curate: Curate = field(default_factory=Curate)
    group: Group = field(default_factory=Group)
    split: Split = field(default_factory=Split)
    model: Model = field(default_factory=Model)
    builtin: Builtin = field(default_factory=Builtin)
    train: Train = field(default_factory=Train)
    prefer: Prefer = field(default_factory=Prefer)
    evaluate: Evaluate = field(default_factory=Evaluate)
    judge: Judge = field(default_factory=Judge)
    voice: Voice = field(default_factory=Voice)
    serve: Serve = field(default_factory=Serve)
    resources: Resources = field(default_factory=Resources)


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _build(cls: type, raw: Any, path: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"params: `{path}` must be a mapping of settings, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        where = f"`{path}`" if path else "the top level"
        prefix = f"{path}." if path else ""
        names = ", ".join(f"`{prefix}{k}`" for k in unknown)
        raise UserError(
            f"params: unknown key(s) {names} in {where} of params.yaml. "
            f"Known keys there: {', '.join(sorted(known))}. Check the spelling."
        )
    values = {}
    for name in known & set(raw):
        annotation = hints[name]
        key = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, raw[name], key)
        elif not _matches(raw[name], annotation):
            raise UserError(f"params: `{key}` is {raw[name]!r}, but it must be {_describe(annotation)}.")
        else:
            values[name] = raw[name]
    built = cls(**values)
    object.__setattr__(built, "_path", path)
    return built


def persona_specs(params: Params) -> dict[str, Persona]:
    """`personas` as written, by id: each `id: name`, `id: [names]` or `id: {authors, system_prompt}`."""
    specs = {}
    for ident, spec in params.personas.items():
        raw = {"authors": [spec]} if isinstance(spec, str) else {"authors": spec} if isinstance(spec, list) else spec
        specs[ident] = _build(Persona, raw, f"personas.{ident}")
    return specs


def _check_personas(params: Params) -> None:
    if params.group.speakers == "single":
        return
    if not params.personas:
        raise UserError(
            "params: `group.speakers: conditioned` trains every persona under `personas`, which is empty: add one "
            "line per persona, e.g. `personas: {nico: [Nico], cami: [Cami, Camila]}`."
        )
    owners: dict[str, str] = {}
    for ident, persona in persona_specs(params).items():
        if not isinstance(ident, str) or not PERSONA_ID.match(ident):
            raise UserError(
                f"params: persona id {ident!r} must be a short plain id (lowercase letters, digits, - or _), "
                "such as `nico`: it names folders, models and system prompts."
            )
        if not persona.authors:
            raise UserError(f"params: `personas.{ident}` names no author: give the names it appears under.")
        for name in persona.authors:
            if name in owners:
                raise UserError(f"params: the author `{name}` is under both `personas.{owners[name]}` and `{ident}`.")
            owners[name] = ident
    if "{persona}" not in params.group.speaker_prompt:
        raise UserError("params: `group.speaker_prompt` must contain `{persona}` (where the speaker's id goes).")


def _check(params: Params) -> None:
    _check_personas(params)
    ratios = params.split.ratios
    if abs(ratios.train + ratios.val + ratios.test - 1.0) > 1e-6 or min(ratios.train, ratios.val, ratios.test) <= 0:
        raise UserError("params: `split.ratios` must be three positive numbers that add up to 1 (e.g. 0.8, 0.1, 0.1).")
    if params.resources.batch_rows < 1000:
        raise UserError(
            "params: `resources.batch_rows` must be at least 1000 (rows held in memory at once; 250000 ≈ 0.3 GB)."
        )
    if params.group.context_turns < 1:
        raise UserError("params: `group.context_turns` must be at least 1 (the user turn the persona replies to).")
    if params.group.max_turns < 2 or params.group.max_turns % 2:
        raise UserError(
            "params: `group.max_turns` must be an even number ≥ 2, so every window starts with a user turn."
        )
    if params.group.min_turn_chars > params.group.max_turn_chars:
        raise UserError("params: `group.min_turn_chars` must not exceed `group.max_turn_chars`.")
    _check_curate(params.curate)
    if params.judge.backend == "local" and params.judge.model != "base":
        raise UserError(
            "params: `judge.model` must be `base` with the local backend, which judges with the base model; "
            "for another judge, serve it and use `judge.backend: openai`."
        )
    if not 0 < params.evaluate.stride < params.train.max_length:
        raise UserError(
            f"params: `evaluate.stride` ({params.evaluate.stride}) must be positive and below `train.max_length` "
            f"({params.train.max_length}): windows overlap by max_length − stride tokens of context (e.g. half of it)."
        )
    if params.voice.folds < 2:
        raise UserError(f"params: `voice.folds` is {params.voice.folds}: cross-validation needs at least 2 folds.")
    if not 0 <= params.train.lora.dropout < 1:
        raise UserError(f"params: `train.lora.dropout` is {params.train.lora.dropout}: it must be in [0, 1).")
    if params.builtin.hidden_size % params.builtin.heads:
        raise UserError("params: `builtin.hidden_size` must be divisible by `builtin.heads`.")


def _check_curate(curate: Curate) -> None:
    if curate.keywords < 1:
        raise UserError("params: `curate.keywords` must be at least 1.")
    if not 0 <= curate.overlap_chars < curate.chunk_chars // 2:
        raise UserError(
            "params: `curate.overlap_chars` must be at least 0 and under half of `curate.chunk_chars` "
            f"(got {curate.overlap_chars} and {curate.chunk_chars}): the overlap must hold the longest unit you expect."
        )
    if curate.max_words and curate.max_words < curate.min_words:
        raise UserError("params: `curate.max_words` must be 0 (no bound) or at least `curate.min_words`.")
    for name, bounds in curate.field_bounds.items():
        numbers = isinstance(bounds, list) and len(bounds) == 2
        if not numbers or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
            raise UserError(f"params: `curate.field_bounds.{name}` must be [low, high], e.g. [3, 6].")
        if bounds[0] > bounds[1]:
            raise UserError(f"params: `curate.field_bounds.{name}` is {bounds}: low must not exceed high.")


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"params: {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"params: {path} must hold a mapping of settings.")
    return raw


def _flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _deep_merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def apply_preset(raw: dict, presets_dir: Path) -> dict:
    """Overlay `configs/presets/<preset>.yaml` on params.yaml; the preset wins for the keys it sets.

    A key that params.yaml changed from its default and the preset overrides is
    reported, because `-S preset=x -S train.learning_rate=...` would otherwise
    lose the second flag without a word.
    """
    name = raw.get("preset") or ""
    if not name:
        return raw
    path = presets_dir / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in presets_dir.glob("*.yaml"))
        raise UserError(
            f"params: preset `{name}` not found in {presets_dir}/. Available: {', '.join(available) or 'none'}."
        )
    preset = _read_yaml(path)
    outside = sorted(set(preset) - set(PRESET_SECTIONS))
    if outside:
        raise UserError(f"params: preset {path} sets {outside}; presets may only set {', '.join(PRESET_SECTIONS)}.")
    defaults = _flatten(as_dict(Params()))
    mine = _flatten({k: raw[k] for k in PRESET_SECTIONS if isinstance(raw.get(k), dict)})
    clashes = [k for k, v in _flatten(preset).items() if k in mine and mine[k] != defaults.get(k) and mine[k] != v]
    if clashes:
        logging.getLogger("params").warning(
            "preset `%s` overrides %s from params.yaml; edit %s (or set preset: '') to change them",
            name,
            ", ".join(clashes),
            path,
        )
    return _deep_merge(raw, preset)


def load_params(path: str | Path | None = None) -> Params:
    path = Path(path or os.environ.get(PARAMS_FILE_ENV, "params.yaml"))
    if not path.exists():
        raise UserError(f"params: {path} not found. Run the stage from the repository root (where params.yaml is).")
    raw = _read_yaml(path)
    if not isinstance(raw.get("preset", ""), str):
        raise UserError("params: `preset` must be the name of a file in configs/presets/ (without .yaml), or ''.")
    if os.environ.get(AUDIT_ENV):
        _start_audit(os.environ[AUDIT_ENV])
    params = _build(Params, apply_preset(raw, path.parent / paths.PRESETS), "")
    _check(params)
    if _read_keys is not None:
        _read_keys.clear()  # validation reads cross-field keys; only what the stage itself reads counts
    return params


def as_dict(params: Any) -> dict:
    return dataclasses.asdict(params)


def select(params: Params, keys: list[str]) -> dict:
    """The settings named by dotted `keys` (whole sections or single keys), nested as in params.yaml.

    A stage records exactly its declared DVC params this way: a record of the whole file would change
    with keys the stage does not depend on, and go stale when DVC rightly does not rerun it.
    """
    chosen: dict = {}
    for key in keys:
        *parents, last = key.split(".")
        value: Any = params
        node = chosen
        for part in parents:
            value = getattr(value, part)
            node = node.setdefault(part, {})
        value = getattr(value, last)
        node[last] = as_dict(value) if dataclasses.is_dataclass(value) else value
    return chosen
