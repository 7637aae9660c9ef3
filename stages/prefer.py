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
import time

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_jsonl, write_json, write_jsonl
from habla.model.generation import generate_replies
from habla.model.judge_backends import make_judge, pairwise_template
from habla.model.judging import fill, verdict
from habla.model.launch import accelerate_launch, check_before_launch, is_worker
from habla.model.loading import load_tuned, special_separator
from habla.model.preference import (
    build_dpo_trainer,
    check_reference,
    fingerprint,
    history,
    pair_up,
    preference_prompts,
    trained_tokens,
)
from habla.model.training import resume_and_log, save_adapter
from habla.params import Params, load_params, select

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
    "habla/model/fast_paths.py",
    "habla/model/sft.py",
    "habla/model/judging.py",
    "habla/model/scoring.py",
    "habla/plots.py",
    "habla/text/near_dups.py",
    "habla/llm.py",
]
OUTS = [paths.PREFERRED, paths.PREFERENCE_PAIRS, LIVE_DIR / "plots" / "metrics", paths.PREFER_STEPS]
METRICS = [REPORT, LIVE_DIR / "metrics.json"]


def judged_by_real_preference(params: Params, model, tokenizer, pairs: list[dict]) -> tuple[list[dict], int]:
    """`prefer.filter: judge`: the pairs where the judge prefers the real reply in both orders (failed and flipped
    verdicts are left out); the judge is the one `judge.*` configures, with its cache."""
    template = pairwise_template(params.judge)
    cases = [{"prompt": p["prompt"], "reference": "(sin referencia)"} for p in pairs]
    judge, as_judge = make_judge(params.judge, model, tokenizer, params.evaluate.batch_size)
    with as_judge:
        first = judge.choose([fill(template, c, p["chosen"], p["rejected"]) for c, p in zip(cases, pairs)])
        second = judge.choose([fill(template, c, p["rejected"], p["chosen"]) for c, p in zip(cases, pairs)])
    kept = [p for p, a, b in zip(pairs, first, second) if verdict(a, b, ("real", "model")) == "real"]
    return kept, len(pairs) - len(kept)


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
    separator = special_separator(params.group.separator)
    model.eval()
    started = time.perf_counter()
    replies = generate_replies(
        model,
        tokenizer,
        [p["prompt"] for p in prompts],
        settings.sampling,
        params.evaluate.batch_size,
        keep_tokens=[separator] if separator else [],
    )
    samples = [reply.text for reply in replies]
    sampling_seconds = time.perf_counter() - started
    pairs, dropped = pair_up(prompts, samples, settings.max_similarity)
    judged_out = 0
    if settings.filter == "judge":
        pairs, judged_out = judged_by_real_preference(params, model, tokenizer, pairs)
    if not pairs:
        raise UserError(
            f"no preference pairs left ({len(prompts)} built, dropped {dict(dropped)}, {judged_out} by the judge): "
            "raise prefer.max_similarity or prefer.sampling.temperature, or set prefer.filter: none."
        )
    trainer = build_dpo_trainer(params, model, tokenizer, pairs)
    reference = check_reference(trainer)
    checkpoint = resume_and_log(trainer, paths.PREFER_CHECKPOINTS, fingerprint(params), settings.resume, LIVE_DIR)
    state = PartialState()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    save_adapter(trainer, paths.PREFERRED, tokenizer)
    if state.is_main_process:
        write_json(paths.PREFERRED / "training_params.json", {"params": select(params, PARAMS)})
        rows = history(trainer.state.log_history)
        write_json(paths.PREFER_STEPS, rows)
        write_jsonl(paths.PREFERENCE_PAIRS, pairs)
        last = rows[-1] if rows else {}
        write_json(
            REPORT,
            {
                "enabled": True,
                "pairs_built": len(prompts),
                "pairs_dropped": dict(sorted(dropped.items())),
                "judge_filtered_out": judged_out,
                "pairs": len(pairs),
                "steps": result.global_step,
                "train_loss": result.training_loss,
                "train_seconds": result.metrics["train_runtime"],
                "sampling_seconds": sampling_seconds,
                "pairs_per_second": len(prompts) / sampling_seconds if sampling_seconds else None,
                "train_tokens_per_second": trained_tokens(trainer.state.log_history) / result.metrics["train_runtime"],
                "final": {k: v for k, v in last.items() if k != "step"},
                "reference_check": reference,
            },
        )
        log.info(
            "prefer: %d pairs (built %d, dropped %s, %d by the judge), %d steps, final %s",
            len(pairs),
            len(prompts),
            dict(dropped),
            judged_out,
            result.global_step,
            last,
        )
    state.wait_for_everyone()


def launch() -> None:
    params = load_params()
    check_before_launch(params)
    accelerate_launch("stages.prefer", params)


if __name__ == "__main__":
    run_stage(main if is_worker() else launch)
