"""Training throughput: the `train` stage's SFTTrainer path (with and without packing, LoRA or QLoRA)
against a plain `transformers.Trainer` LoRA loop on the same conversations.

Each configuration runs in its own process so that peak memory belongs to it alone.
Tokens are non-padding input tokens; the first steps (compilation, allocator warm-up)
are excluded from the timing. MFU uses the 6·N·tokens convention of the PaLM paper
plus attention, so LoRA runs (which skip weight gradients of the frozen base) use
the hardware less than the figure's 6N assumes; it is still the comparable number.

    python -m benchmarks.train_throughput --suite cpu
    python -m benchmarks.train_throughput --suite gpu   # builtin scaled up, bf16 LoRA and QLoRA
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_SPLIT = REPO / "data" / "splits" / "train.jsonl"
WARMUP_STEPS = 3

SUITES = {
    "cpu": [
        {
            "name": "sft, no packing",
            "runner": "sft",
            "hidden": 192,
            "layers": 4,
            "steps": 20,
            "batch": 8,
            "max_length": 256,
        },
        {
            "name": "sft, packing",
            "runner": "sft",
            "packing": True,
            "hidden": 192,
            "layers": 4,
            "steps": 20,
            "batch": 8,
            "max_length": 256,
        },
        {
            "name": "plain transformers.Trainer",
            "runner": "plain",
            "hidden": 192,
            "layers": 4,
            "steps": 20,
            "batch": 8,
            "max_length": 256,
        },
    ],
    "gpu": [
        {
            "name": "sft bf16 LoRA, no packing",
            "runner": "sft",
            "hidden": 1024,
            "layers": 16,
            "steps": 40,
            "batch": 16,
            "max_length": 1024,
        },
        {
            "name": "sft bf16 LoRA, packing",
            "runner": "sft",
            "packing": True,
            "hidden": 1024,
            "layers": 16,
            "steps": 40,
            "batch": 16,
            "max_length": 1024,
        },
        {
            "name": "plain transformers.Trainer bf16 LoRA",
            "runner": "plain",
            "hidden": 1024,
            "layers": 16,
            "steps": 40,
            "batch": 16,
            "max_length": 1024,
        },
        {
            "name": "sft QLoRA 4-bit, packing",
            "runner": "sft",
            "packing": True,
            "quantization": "4bit",
            "hidden": 1024,
            "layers": 16,
            "steps": 40,
            "batch": 16,
            "max_length": 1024,
        },
        {
            "name": "sft bf16 LoRA, packing, 2048 wide",
            "runner": "sft",
            "packing": True,
            "hidden": 2048,
            "layers": 16,
            "steps": 30,
            "batch": 16,
            "max_length": 1024,
        },
        {
            "name": "sft QLoRA 4-bit, packing, 2048 wide",
            "runner": "sft",
            "packing": True,
            "quantization": "4bit",
            "hidden": 2048,
            "layers": 16,
            "steps": 30,
            "batch": 16,
            "max_length": 1024,
        },
    ],
}


def timing_callback():
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        """Wall time and tokens between the end of warm-up and the end of training."""

        def __init__(self):
            self.start = self.tokens_at_start = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == WARMUP_STEPS:
                _synchronize()
                self.start, self.tokens_at_start = time.perf_counter(), state.num_input_tokens_seen

        def result(self, state) -> tuple[float, int]:
            _synchronize()
            return time.perf_counter() - self.start, state.num_input_tokens_seen - self.tokens_at_start

    return Timing()


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_base(work: Path, rows: list[dict], spec: dict) -> None:
    """A builtin-architecture base of the requested size, saved where `load_base` looks for it."""
    from habla import paths
    from habla.io import write_json
    from habla.model.builtin import build_model, train_tokenizer
    from habla.model.loading import BUILTIN
    from habla.params import Builtin

    texts = [m["content"] for r in rows for m in r["messages"]]
    tokenizer = train_tokenizer(texts, 4096 if spec["hidden"] >= 1024 else 2048)
    settings = Builtin(
        hidden_size=spec["hidden"],
        layers=spec["layers"],
        heads=max(2, spec["hidden"] // 64),
        context=spec["max_length"],
    )
    model = build_model(tokenizer, settings)
    with contextlib.chdir(work):
        model.save_pretrained(paths.BASE_MODEL)
        tokenizer.save_pretrained(paths.BASE_MODEL)
        write_json(paths.SOURCE_FILE, {"kind": BUILTIN, "location": str(paths.BASE_MODEL)})


def bench_params(spec: dict):
    from habla.params import load_params

    params = load_params(REPO / "params.yaml")
    train = dataclasses.replace(
        params.train,
        max_steps=spec["steps"],
        batch_size=spec["batch"],
        max_length=spec["max_length"],
        packing=spec.get("packing", False),
        quantization=spec.get("quantization", "none"),
        grad_accum=1,
    )
    return dataclasses.replace(params, train=train)


def run_sft(rows: list[dict], spec: dict, work: Path) -> tuple[object, object]:
    from habla.model.training import build_trainer, prepare_model

    params = bench_params(spec)
    model, tokenizer, _ = prepare_model(params)
    timing = timing_callback()
    trainer, _ = build_trainer(params, model, tokenizer, rows, None, [timing], work / "out")
    trainer.train()
    return trainer, timing


def run_plain(rows: list[dict], spec: dict, work: Path) -> tuple[object, object]:
    """What a notebook does: render the chat text, loss on every token, pad each batch, LoRA via PEFT."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from habla.model.loading import compute_dtype, load_base
    from habla.model.training import lora_config

    params = bench_params(spec)
    model, tokenizer = load_base()
    model = get_peft_model(model, lora_config(params, []))
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    data = Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=spec["max_length"]),
        batched=True,
        remove_columns=["text"],
    )
    import torch

    args = TrainingArguments(
        output_dir=str(work / "out"),
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch"],
        learning_rate=params.train.learning_rate,
        bf16=compute_dtype() == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        include_num_input_tokens_seen="non_padding",
    )
    timing = timing_callback()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        callbacks=[timing],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    return trainer, timing


def measure(spec: dict) -> dict:
    """One configuration, in this process."""
    from benchmarks.machine import peak_flops, peak_memory_mib
    from habla.io import read_jsonl

    if not TRAIN_SPLIT.exists():
        raise SystemExit(f"{TRAIN_SPLIT} is missing: run `dvc repro split` first.")
    rows = read_jsonl(TRAIN_SPLIT)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        work = Path(tmp)
        build_base(work, rows, spec)
        trainer, timing = (run_sft if spec["runner"] == "sft" else run_plain)(rows, spec, work)
        seconds, tokens = timing.result(trainer.state)
        config = trainer.model.config
        flops_per_token = (
            6 * dense_parameters(config) + 12 * config.num_hidden_layers * config.hidden_size * spec["max_length"]
        )
        tokens_per_second = tokens / seconds
        peak = peak_flops()
        return {
            "name": spec["name"],
            "tokens_per_second": round(tokens_per_second, 1),
            "peak_memory_mib": round(peak_memory_mib(), 1),
            "mfu": round(flops_per_token * tokens_per_second / peak, 4) if peak else None,
            "dense_parameters_m": round(dense_parameters(config) / 1e6, 1),
            "steps_timed": spec["steps"] - WARMUP_STEPS,
        }


def dense_parameters(config) -> int:
    """Weights of the transformer blocks, from the config (4-bit tensors would count half their true size)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    return layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config.intermediate_size)


def run_suite(suite: str) -> list[dict]:
    """Every configuration of the suite, each in a fresh interpreter."""
    rows = []
    for spec in SUITES[suite]:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.train_throughput", "--one", json.dumps(spec)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            rows.append({"name": spec["name"], "error": (done.stderr.strip().splitlines() or ["failed"])[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    from benchmarks.machine import describe

    rows = run_suite(args.suite)
    print(json.dumps(describe()))
    for row in rows:
        print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
