"""`prefer` stage: preference tuning (DPO) after SFT, from the persona's own replies against the SFT model's.

For persona replies in the **train split only**, the real reply is chosen and the SFT model's sample is rejected
(`habla/model/preference.py`); near-identical pairs are dropped and counted, and `prefer.filter: judge` keeps only
pairs where the configured judge prefers the real reply in both orders. TRL's DPO trainer then continues the SFT
adapter with the SFT model as the reference (checked before the first step), launched through the same
accelerate profile as `train`. With `prefer.enabled: false` the stage writes a note instead of an adapter and the
evaluation compares base and tuned only, so `dvc repro` still runs end to end.
"""

from __future__ import annotations

import logging
import shutil

from habla import paths
from habla.errors import run_stage
from habla.io import read_jsonl, write_json, write_jsonl
from habla.model.checkpoints import DPO_LOG, prefer_fingerprint, resume_and_log, save_adapter, step_rows
from habla.model.launch import accelerate_launch, check_before_launch, is_worker
from habla.model.loading import load_tuned
from habla.model.preference import build_dpo_trainer, build_pairs, check_reference, preference_prompts, training_report
from habla.params import load_params, select

log = logging.getLogger("prefer")

LIVE_DIR = paths.PREFER_LIVE
REPORT = paths.report("prefer")

# the judge's keys matter only with `prefer.filter: judge`, but DVC cannot make a dependency conditional
PARAMS = [
    "preset",
    "model",
    "builtin",
    "train.accelerate_profile",
    "train.quantization",
    "train.gradient_checkpointing",
    "prefer",
    "group.separator",
    "evaluate.batch_size",
    "judge.backend",
    "judge.model",
    "judge.prompt",
    "judge.base_url",
    "judge.api_key_env",
    "judge.timeout_s",
    "judge.max_retries",
    "judge.concurrency",
]
DEPS = [
    paths.BASE_MODEL,
    paths.ADAPTER,
    paths.split_file("train"),
    paths.ACCELERATE,
    paths.PRESETS,
    paths.PROMPTS,
    "stages/prefer.py",
    "habla/model/preference.py",
    "habla/model/generation.py",
    "habla/model/judge_backends.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    "habla/model/launch.py",
    "habla/model/training.py",
    "habla/model/guards.py",
    "habla/model/checkpoints.py",
    "habla/model/fast_paths.py",
    "habla/model/sft.py",
    "habla/model/judging.py",
    "habla/model/scoring.py",
    "habla/stats.py",
    "habla/plots.py",
    "habla/text/near_dups.py",
    "habla/llm.py",
]
OUTS = [paths.PREFERRED, paths.PREFERENCE_PAIRS, LIVE_DIR / "plots" / "metrics", paths.PREFER_STEPS]
METRICS = [REPORT, LIVE_DIR / "metrics.json"]


def disabled() -> None:
    """`prefer.enabled: false`: a note where the adapter would be, so DVC has its outputs and evaluation skips it."""
    shutil.rmtree(paths.PREFERRED, ignore_errors=True)
    write_json(paths.PREFERRED / "DISABLED.json", {"reason": "prefer.enabled is false"})
    (LIVE_DIR / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    write_json(LIVE_DIR / "metrics.json", {})
    write_json(paths.PREFER_STEPS, [])
    write_jsonl(paths.PREFERENCE_PAIRS, [])
    write_json(REPORT, {"enabled": False})


def main() -> None:
    from accelerate import PartialState
    from transformers import set_seed

    params = load_params()
    settings = params.prefer
    if not settings.enabled:
        if PartialState().is_main_process:
            disabled()
        return
    set_seed(settings.seed)
    model, tokenizer = load_tuned(trainable=True, quantization=params.train.quantization)
    prompts = preference_prompts(
        read_jsonl(paths.split_file("train")), settings.pairs_per_conversation, settings.max_pairs, settings.seed
    )
    pairs, counts = build_pairs(params, model, tokenizer, prompts)
    trainer = build_dpo_trainer(params, model, tokenizer, pairs)
    reference = check_reference(trainer)
    checkpoint = resume_and_log(
        trainer, paths.PREFER_CHECKPOINTS, prefer_fingerprint(params), settings.resume, LIVE_DIR
    )
    state = PartialState()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    save_adapter(trainer, paths.PREFERRED, tokenizer, {"params": select(params, PARAMS)})
    if state.is_main_process:
        steps = step_rows(trainer.state.log_history, DPO_LOG)
        write_json(paths.PREFER_STEPS, steps)
        write_jsonl(paths.PREFERENCE_PAIRS, pairs)
        report = training_report(counts, result, trainer.state.log_history, steps, reference)
        write_json(REPORT, report)
        log.info(
            "prefer: %d pairs (built %d, dropped %s, %d by the judge), %d steps, final %s",
            report["pairs"],
            report["pairs_built"],
            report["pairs_dropped"],
            report["judge_filtered_out"],
            report["steps"],
            report["final"],
        )
    state.wait_for_everyone()


def launch() -> None:
    params = load_params()
    check_before_launch(params)
    accelerate_launch("stages.prefer", params)


if __name__ == "__main__":
    run_stage(main if is_worker() else launch)
