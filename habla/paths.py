"""Every path the pipeline reads or writes, named once.

Stages run from the repository root, so these are relative paths. `dvc.yaml`
names them too (DVC cannot import Python); each stage module declares the paths
and params it depends on and produces, and `tests/test_layout.py` fails when a
declaration and `dvc.yaml` disagree.
"""

from __future__ import annotations

import os
from pathlib import Path

# Set by a per-persona instance of a matrix stage (`HABLA_PERSONA=nico python -m stages.train` is `train_persona@nico`
# in dvc.yaml): the stage reads that persona's splits and writes its own adapter and reports, under `personas/<id>/`.
PERSONA = os.environ.get("HABLA_PERSONA", "")
PERSONAS = Path("personas")


def _own(root: Path, persona: str = PERSONA) -> Path:
    """`root`, or `root/personas/<id>` for a persona (by default this per-persona instance's)."""
    return root / PERSONAS / persona if persona else root


RAW = Path("data/raw")
CLEANED = Path("data/cleaned")
MESSAGES = CLEANED / "messages.parquet"
REJECTED = CLEANED / "rejected.parquet"
CURATED = Path("data/curated")
UNITS = CURATED / "units.jsonl"  # transcript, lyrics and table units: source text at a span, keywords, request
CURATE_REJECTED = CURATED / "rejected.jsonl"  # proposals left out, each with its reason
CURATE_CACHE = Path("data/cache/curate.jsonl")  # answers already paid for: git-ignored, survives reruns
GROUPED = Path("data/grouped")
CONVERSATIONS = GROUPED / "conversations.jsonl"
DOCUMENTS = GROUPED / "documents.jsonl"
KEYWORD_TASKS = GROUPED / "keyword_tasks.jsonl"
SPLITS = Path("data/splits")

BASE_MODEL = Path("models/base")  # shared by every persona's adapter
SOURCE_FILE = BASE_MODEL / "source.json"
MODELS = _own(Path("models"))
ADAPTER = MODELS / "adapter"
# The speaker-conditioned adapter (`group.speakers: conditioned`): a per-persona instance runs it beside its persona's
# own adapter on the same held-out prompts (`generate_persona@<id>`); elsewhere it is ADAPTER.
CONDITIONED_ADAPTER = Path("models/adapter")
CHECKPOINTS = _own(Path("models/checkpoints"))  # scratch for `train.resume`, never a DVC output
PREFERRED = MODELS / "preferred"  # the preference-tuned adapter (`prefer`), on the same base as ADAPTER
# What the evaluation stages run beside ADAPTER: the preference-tuned adapter, in a per-persona instance the
# conditioned one (`loading.load_evaluated`).
COMPARED_ADAPTER = CONDITIONED_ADAPTER if PERSONA else PREFERRED
PREFER_CHECKPOINTS = Path("models/checkpoints-prefer")  # scratch for `prefer.resume`, never a DVC output
MERGED = Path("models/merged")  # `habla export` (hf): never a DVC output, git-ignored
GGUF_EXPORT = Path("models/gguf")  # `habla export --format gguf / gguf-adapter`, git-ignored

METRICS = Path("metrics")
OWN_METRICS = _own(METRICS)  # a per-persona instance's reports and plots
GATES = METRICS / "gates"
TRAIN_LIVE = OWN_METRICS / "train"
PERPLEXITY_PLOT = OWN_METRICS / "plots" / "perplexity.json"
PERSONA_PERPLEXITY_PLOT = OWN_METRICS / "plots" / "persona_perplexity.json"  # drawn by the top-level plot
TRAIN_STEPS = OWN_METRICS / "plots" / "train_steps.json"  # loss, learning rate, gradient norm per optimizer step
EVAL_STEPS = OWN_METRICS / "plots" / "eval_steps.json"  # validation loss per optimizer step
PREFER_LIVE = METRICS / "prefer"
PREFERENCE_PAIRS = Path("data/preference/pairs.jsonl")  # chat text: a DVC-cached output, never in git
PREFER_STEPS = METRICS / "plots" / "prefer_steps.json"  # DPO loss, rewards, margins, accuracy per optimizer step
CLEAN_OUTCOMES_PLOT = METRICS / "plots" / "clean_outcomes.json"
MONTHLY_PLOT = METRICS / "plots" / "messages_per_month.json"
TURNS_PLOT = METRICS / "plots" / "conversation_turns.json"
TOKENS_PLOT = OWN_METRICS / "plots" / "train_tokens.json"
SPLIT_PLOT = METRICS / "plots" / "split_sizes.json"
JUDGE_OUTCOMES_PLOT = OWN_METRICS / "plots" / "judge_outcomes.json"
JUDGE_RATINGS_PLOT = OWN_METRICS / "plots" / "judge_ratings.json"
JUDGMENTS = OWN_METRICS / "judgments.jsonl"  # verdicts and ratings per held-out prompt, read by /generations
VOICE_ATTRIBUTION_PLOT = OWN_METRICS / "plots" / "voice_attribution.json"
VOICE_TOLD_APART_PLOT = OWN_METRICS / "plots" / "voice_told_apart.json"
BLIND_ANSWERS = Path("data/blind/answers.jsonl")  # people's answers on /blind: ids and choices, git-ignored
GENERATIONS = OWN_METRICS / "generations.jsonl"  # held-out text: a DVC-cached output, never committed to git
JUDGE_CACHE = Path("data/cache/judge.jsonl")  # answers already paid for: git-ignored, survives reruns
OPPONENT_CACHE = Path("data/cache/opponent.jsonl")  # the opponent model's replies, the same way

PROMPTS = Path("prompts")
PROMPT_SETS = PROMPTS / "sets"
PRESETS = Path("configs/presets")
ACCELERATE = Path("configs/accelerate")


def split_file(name: str) -> Path:
    """`data/splits/<name>.jsonl`: conversations and keyword tasks of one split (a per-persona instance: its
    persona's views, `persona_split`)."""
    return _own(SPLITS) / f"{name}.jsonl"


def persona_split(persona: str, name: str) -> Path:
    """`data/splits/personas/<id>/<name>.jsonl`: one persona's views of one split (`group.speakers: conditioned`),
    what its own adapter trains and is scored on."""
    return _own(SPLITS, persona) / f"{name}.jsonl"


def persona_adapter(persona: str) -> Path:
    """`models/personas/<id>/adapter`: what `train_persona@<id>` trains (the one path `habla serve` needs outside
    an instance)."""
    return _own(Path("models"), persona) / "adapter"


def document_split(name: str) -> Path:
    """`data/splits/documents/<name>.jsonl`: transcript and lyrics passages of one split."""
    return SPLITS / "documents" / f"{name}.jsonl"


def accelerate_config(profile: str) -> Path:
    """`configs/accelerate/<profile>.yaml`: how `train` is launched (CPU, one GPU, DDP, FSDP)."""
    return ACCELERATE / f"{profile}.yaml"


def report(stage: str) -> Path:
    return OWN_METRICS / f"{stage}.json"


def gate_report(stage: str) -> Path:
    return GATES / f"{stage}.json"
