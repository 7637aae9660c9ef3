"""`train` stage: LoRA / QLoRA supervised fine-tuning with TRL, launched by accelerate.

Run as `python -m stages.train`: it checks the params, then starts itself under `accelerate launch` with the
profile's config (`configs/accelerate/<profile>.yaml`); see `habla.model.launch`.
Before any step runs, guards check the mistakes that silently ruin persona
fine-tunes: LoRA targets that match nothing (or only part of a fused layer), a
chat template with no assistant mask, pad = EOS, an end-of-turn token outside
the loss, a separator that is not a token, and conversations whose first reply
lies beyond `train.max_length` (see `habla/model/guards.py`).
"""

from __future__ import annotations

from habla import paths
from habla.errors import run_stage
from habla.io import read_jsonl, write_json
from habla.model.checkpoints import EVAL_LOG, SFT_LOG, resume_and_log, save_adapter, step_rows, train_fingerprint
from habla.model.fast_paths import resolve
from habla.model.guards import check_masks
from habla.model.launch import accelerate_launch, check_before_launch, is_worker
from habla.model.loading import end_ids
from habla.model.training import build_trainer, final_eval_loss, prepare_model
from habla.params import load_params, select

LIVE_DIR = paths.TRAIN_LIVE
REPORT = paths.report("train")

# `model` and `builtin` are part of a checkpoint's identity (see `train_fingerprint`).
PARAMS = ["preset", "model", "builtin", "train", "group.separator"]
DEPS = [
    paths.BASE_MODEL,
    paths.split_file("train"),
    paths.split_file("val"),
    paths.ACCELERATE,
    paths.PRESETS,
    "stages/train.py",
    "habla/model/training.py",
    "habla/model/guards.py",
    "habla/model/checkpoints.py",
    "habla/model/fast_paths.py",
    "habla/model/sft.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    "habla/model/launch.py",
    "habla/plots.py",
]
OUTS = [paths.ADAPTER, LIVE_DIR / "plots" / "metrics", paths.TRAIN_STEPS, paths.EVAL_STEPS]
PLOTS = [paths.TOKENS_PLOT]
METRICS = [REPORT, LIVE_DIR / "metrics.json"]
if paths.PERSONA:  # one persona's own adapter (`train_persona@<id>`): reports kept, not N more charts and columns
    OUTS, PLOTS, METRICS = [*OUTS, *PLOTS, *METRICS], [], []


def main() -> None:
    from accelerate import PartialState
    from transformers import set_seed

    params = load_params()
    set_seed(params.train.seed)  # before the model and the adapter exist, so LoRA init is reproducible
    model, tokenizer, notes, fast = prepare_model(params)
    train_rows = read_jsonl(paths.split_file("train"))
    val_rows = read_jsonl(paths.split_file("val"))
    token_stats = check_masks(tokenizer, train_rows, params.train.max_length, end_ids(model, tokenizer))
    token_histogram = token_stats.pop("histogram")
    trainer, adapter = build_trainer(
        params, model, tokenizer, fast, train_rows, val_rows, trained_rows=notes["trained_rows"]
    )
    checkpoint = resume_and_log(trainer, paths.CHECKPOINTS, train_fingerprint(params), params.train.resume, LIVE_DIR)
    state = PartialState()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    eval_loss = final_eval_loss(trainer)
    record = {"params": select(params, PARAMS), "tokenizer": notes, "fast_paths": fast.record()}
    sizes = save_adapter(trainer, paths.ADAPTER, tokenizer, record)
    if state.is_main_process:
        write_json(paths.TRAIN_STEPS, step_rows(trainer.state.log_history, SFT_LOG))
        write_json(paths.EVAL_STEPS, step_rows(trainer.state.log_history, EVAL_LOG))
        write_json(paths.TOKENS_PLOT, token_histogram)
        write_json(
            REPORT,
            {
                "train_loss": result.training_loss,
                "eval_loss": eval_loss,
                "steps": result.global_step,
                "train_seconds": result.metrics["train_runtime"],
                "trainable_parameters": adapter["trainable_parameters"],
                **sizes,
                "adapted_modules": adapter["adapted_modules"],
                "tokens": token_stats,
                "tokenizer": notes,
                "fast_paths": fast.record(),
            },
        )
    state.wait_for_everyone()


def launch() -> None:
    params = load_params()
    check_before_launch(params)
    resolve(params.train)  # a fast path this machine cannot run stops here, before any worker starts
    accelerate_launch("stages.train", params)


if __name__ == "__main__":
    run_stage(main if is_worker() else launch)
