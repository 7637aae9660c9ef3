"""What `train` and `prefer` keep between steps and after the last: checkpoints to resume, the adapter, the step log.

Both stages train an adapter under the same rules: a checkpoint is resumed only by a run that would have made it
(the fingerprint), a finished run is retrained rather than "resumed" at its last step, the adapter is saved
reproducibly and without copies of base weights, and the trainer's log becomes plot tables on the optimizer-step
axis.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from habla import paths
from habla.io import read_json, write_json
from habla.params import Params, as_dict

log = logging.getLogger(__name__)


def fingerprint(params: Params, section: str, inputs: Iterable[Path], *also) -> str:
    """What a checkpoint must match to be resumed: the params section that trains (its `resume` aside), the base
    model's params, `also`, and the bytes of the files it trains from."""
    settings = {k: v for k, v in as_dict(getattr(params, section)).items() if k != "resume"}
    digest = hashlib.blake2b(digest_size=16)
    identity = [settings, as_dict(params.model), as_dict(params.builtin), *also]
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def train_fingerprint(params: Params) -> str:
    """`train`: its params, the separator, the base model and the train and validation splits."""
    inputs = (paths.split_file("train"), paths.split_file("val"), paths.SOURCE_FILE)
    return fingerprint(params, "train", inputs, params.group.separator)


def prefer_fingerprint(params: Params) -> str:
    """`prefer`: its params, the base model, the SFT adapter it continues and the train split."""
    inputs = (paths.split_file("train"), paths.ADAPTER / "adapter_model.safetensors", paths.SOURCE_FILE)
    return fingerprint(params, "prefer", inputs)


def finished(checkpoint: str | None) -> bool:
    """Whether a checkpoint is the last step of its run (its trainer state says so)."""
    if not checkpoint or not (state := Path(checkpoint) / "trainer_state.json").exists():
        return False
    recorded = read_json(state)
    return recorded.get("max_steps", 0) > 0 and recorded.get("global_step", 0) >= recorded["max_steps"]


def resumable_in(folder: Path, run: str, resume: str) -> str | None:
    """The last checkpoint in `folder` of an interrupted run with fingerprint `run`; stale checkpoints are removed.

    Without the fingerprint, `-S train.lora.r=4` would try to resume a rank-8 checkpoint.
    A finished run is not resumed either: DVC reruns a stage with unchanged params
    only when its code changed, and "resuming" at the last step would train nothing
    and report a meaningless loss.
    """
    from transformers.trainer_utils import get_last_checkpoint

    marker = folder / "run.json"
    stale = resume != "auto" or not marker.exists() or read_json(marker).get("fingerprint") != run
    if folder.is_dir() and (stale or finished(get_last_checkpoint(str(folder)))):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": run})
    checkpoint = get_last_checkpoint(str(folder))
    if checkpoint:
        log.info("resuming the interrupted run from %s", checkpoint)
    return checkpoint


def resume_and_log(trainer, folder: Path, run: str, resume: str, live_dir: Path) -> str | None:
    """The checkpoint every process resumes from, and dvclive logging on the main process.

    Call it once the trainer exists: its accelerator starts the process group (on CPU an earlier PartialState() would
    see one process). The main process decides (`resumable_in` removes stale checkpoints); the others wait for it
    and read what it left, so every rank resumes from the same step.
    """
    from accelerate import PartialState
    from transformers.trainer_utils import get_last_checkpoint

    state = PartialState()
    checkpoint = resumable_in(folder, run, resume) if state.is_main_process else None
    state.wait_for_everyone()
    if not state.is_main_process:
        return get_last_checkpoint(str(folder))
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    # dvcyaml=None: by default dvclive rewrites our dvc.yaml.
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=checkpoint is not None)
    trainer.add_callback(DVCLiveCallback(live=live, log_model=None))
    return checkpoint


def save_adapter(trainer, folder: Path, tokenizer, record: dict, adapter: str = "default") -> dict:
    """Save one adapter with its tokenizer and `record` (as `training_params.json`), reproducibly and without copies
    of base weights; call on every rank.

    `save_embedding_layers=False`: rows `train` added are saved through PEFT's trainable tokens, so the adapter
    never needs PEFT's "the vocabulary was resized, save both whole matrices" default. The state dict is
    gathered on every rank (FSDP shards it) and written by the main process. Returns sizes for the report.
    """
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if not trainer.accelerator.is_main_process:
        return {}
    shutil.rmtree(folder, ignore_errors=True)
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(
        str(folder), state_dict=state_dict, selected_adapters=[adapter], save_embedding_layers=False
    )
    sort_target_modules(folder / "adapter_config.json")
    tokenizer.save_pretrained(str(folder))
    write_json(folder / "training_params.json", record)
    trainable = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
    size = sum(f.stat().st_size for f in folder.glob("adapter_model*"))
    return {"adapter_bytes": size, "trainable_bytes": trainable, "adapter_to_trainable": round(size / trainable, 3)}


def sort_target_modules(config_path: Path) -> None:
    """PEFT saves `target_modules` from a set, in hash order, so the same run wrote a different file (and a new
    DVC hash for the adapter, rerunning every stage after it) in each process. Sorted, the file is reproducible."""
    config = read_json(config_path)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class StepTable:
    """A plot table from the trainer's log: the entries holding every `required` key become rows, with `columns`
    as (logged key, column, digits kept), each where the entry has it."""

    required: frozenset[str]
    columns: tuple[tuple[str, str, int], ...]


SFT_LOG = StepTable(
    frozenset({"loss"}), (("loss", "loss", 6), ("learning_rate", "learning_rate", 8), ("grad_norm", "grad_norm", 8))
)
EVAL_LOG = StepTable(frozenset({"eval_loss"}), (("eval_loss", "loss", 6),))
DPO_LOG = StepTable(
    frozenset({"loss", "rewards/margins"}),
    (
        ("loss", "loss", 6),
        ("rewards/chosen", "rewards_chosen", 6),
        ("rewards/rejected", "rewards_rejected", 6),
        ("rewards/margins", "margins", 6),
        ("rewards/accuracies", "accuracy", 6),
    ),
)


def step_rows(log_history: list[dict], table: StepTable) -> list[dict]:
    """One plot row per optimizer step, the last entry of a step winning (the evaluation after training repeats
    the last step's).

    dvclive's own series count logging calls, not optimizer steps, and split train and validation loss into
    separate charts; these tables put both losses on one axis that means something.
    """
    rows: dict[int, dict] = {}
    for entry in log_history:
        if table.required <= entry.keys():
            rows[entry["step"]] = {
                "step": entry["step"],
                **{name: round(float(entry[key]), digits) for key, name, digits in table.columns if key in entry},
            }
    return list(rows.values())
