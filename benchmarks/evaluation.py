"""Throughput of everything around training: tokenisation and packing, perplexity scoring,
the local judge and `habla serve`, on the builtin architecture at the demo's size.

On a CUDA machine the same code runs on the GPU (bf16 where supported). The model has random
weights (throughput does not depend on what it learned) and a
freshly initialised LoRA adapter, as the stages load it. Each figure is the median of
`repeats` timed passes after one warm-up pass; peers are measured in the same process on
the same inputs:

- tokenisation: our `encode_chat` (chat template + assistant mask) against rendering the
  template to text and batch-tokenising it, as notebooks do (no mask: it cannot train on
  replies only);
- perplexity: `score_windowed` (length-sorted batches) against one conversation per
  forward pass;
- serve: requests per second and latency with a bounded number of concurrent clients;
- prefer: pairs sampled per second and DPO training tokens per second (no peer: none builds these pairs).

    python -m benchmarks.evaluation
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = {"hidden": 192, "layers": 4, "max_length": 256}
JUDGE_PROMPTS = 32
SERVE_REQUESTS = 24
SERVE_CLIENTS = 4
PREFER_PAIRS = 64
PREFER_STEPS = 8


def median_rate(job, amount: float, repeats: int) -> float:
    """amount per second, median over `repeats` passes after one warm-up."""
    job()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return amount / statistics.median(times)


def tokenisation_rows(tokenizer, conversations: list[dict], repeats: int) -> list[dict]:
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    from habla.model.loading import encode_chat

    encoded = [encode_chat(tokenizer, c["messages"]) for c in conversations]
    tokens = sum(len(e["input_ids"]) for e in encoded)
    ours = median_rate(lambda: [encode_chat(tokenizer, c["messages"]) for c in conversations], tokens, repeats)

    def notebook():
        texts = [tokenizer.apply_chat_template(c["messages"], tokenize=False) for c in conversations]
        return tokenizer(texts)["input_ids"]

    peer = median_rate(notebook, sum(len(ids) for ids in notebook()), repeats)
    dataset = Dataset.from_list(
        [{"input_ids": e["input_ids"], "assistant_masks": e["assistant_masks"]} for e in encoded]
    )
    packing = median_rate(
        lambda: pack_dataset(dataset, SPEC["max_length"], "bfd", {"load_from_cache_file": False}), tokens, repeats
    )
    return [
        {
            "figure": f"tokenise {len(conversations)} train conversations (chat template + assistant mask)",
            "unit": "tokens/s",
            "ours": ours,
            "peer_name": "render template to text, batch-tokenise (no mask)",
            "peer": peer,
        },
        {
            "figure": f"pack them into {SPEC['max_length']}-token rows (TRL best-fit decreasing)",
            "unit": "tokens/s",
            "ours": packing,
        },
    ]


def perplexity_rows(model, tokenizer, conversations: list[dict], repeats: int) -> list[dict]:
    from habla.model.perplexity import encode_conversations, score_windowed

    rows = encode_conversations(tokenizer, conversations)
    tokens = sum(len(r["input_ids"]) for r in rows)
    window, stride = SPEC["max_length"], SPEC["max_length"] // 2
    ours = median_rate(lambda: score_windowed(model, rows, tokenizer.pad_token_id, 16, window, stride), tokens, repeats)
    peer = median_rate(lambda: score_windowed(model, rows, tokenizer.pad_token_id, 1, window, stride), tokens, repeats)
    return [
        {
            "figure": f"perplexity forward pass over {len(rows)} conversations",
            "unit": "tokens/s",
            "ours": ours,
            "peer_name": "one conversation per forward pass",
            "peer": peer,
        }
    ]


def judge_rows(model, tokenizer, conversations: list[dict], repeats: int) -> list[dict]:
    from habla.model.generation import cut_before_reply
    from habla.model.judge_backends import PAIRWISE_PROMPTS, RATING_PROMPTS, LocalJudge
    from habla.model.judging import fill

    cases = []
    for conversation in conversations:
        cut = cut_before_reply(conversation)
        if cut and len(cases) < JUDGE_PROMPTS:
            cases.append({"prompt": cut[0], "reference": cut[1]})
    pairwise = (REPO / PAIRWISE_PROMPTS["local"]).read_text(encoding="utf-8")
    rating = (REPO / RATING_PROMPTS["local"]).read_text(encoding="utf-8")
    choose = [fill(pairwise, c, c["reference"], "ya po") for c in cases]
    rate = [fill(rating, c, c["reference"]) for c in cases]
    judge = LocalJudge(model, tokenizer, 16)
    with model.disable_adapter():
        pairs = median_rate(lambda: judge.choose(choose), len(choose), repeats)
        grades = median_rate(lambda: judge.rate(rate), len(rate), repeats)
    return [
        {
            "figure": f"local judge, pairwise verdicts ({len(choose)} prompts, batch 16)",
            "unit": "judgments/s",
            "ours": pairs,
        },
        {
            "figure": f"local judge, 1–10 ratings (expected grade over 10 answers, {len(rate)} prompts)",
            "unit": "ratings/s",
            "ours": grades,
        },
    ]


def serve_rows(model, tokenizer, conversations: list[dict], params) -> list[dict]:
    from habla.apps.serve import Engine, make_server
    from habla.model.generation import cut_before_reply

    settings = dataclasses.replace(params.serve, port=0, queue_limit=SERVE_REQUESTS)
    server = make_server(Engine(model, tokenizer, params), settings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    prompts = [cut[0] for cut in map(cut_before_reply, conversations) if cut][:SERVE_REQUESTS]

    def ask(messages) -> float:
        body = json.dumps({"model": "tuned", "messages": messages, "max_tokens": 24, "temperature": 0.7}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            json.loads(response.read())
        return time.perf_counter() - start

    try:
        ask(prompts[0])
        start = time.perf_counter()
        with ThreadPoolExecutor(SERVE_CLIENTS) as pool:
            latencies = sorted(pool.map(ask, prompts))
        seconds = time.perf_counter() - start
    finally:
        server.shutdown()
        server.server_close()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return [
        {
            "figure": f"`habla serve`, {len(prompts)} chat completions (24 new tokens), "
            f"{SERVE_CLIENTS} concurrent clients",
            "unit": "requests/s",
            "ours": len(prompts) / seconds,
            "detail": f"latency p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s",
        }
    ]


def preference_rows(model, tokenizer, conversations: list[dict], params, repeats: int) -> list[dict]:
    """`prefer`'s two costs: sampling the SFT model's reply for each pair, and DPO steps on the pairs (each step runs
    the policy and the frozen reference copy of the adapter over both replies). Last: training changes the model."""
    from habla.model.generation import generate_replies
    from habla.model.preference import build_dpo_trainer, pair_up, preference_prompts, trained_tokens

    settings = params.prefer
    prompts = preference_prompts(conversations, 1, PREFER_PAIRS, 0)
    contexts = [p["prompt"] for p in prompts]

    def sample():
        replies = generate_replies(model, tokenizer, contexts, settings.sampling, params.evaluate.batch_size)
        return [reply.text for reply in replies]

    pairs_per_second = median_rate(sample, len(prompts), repeats)
    pairs, _ = pair_up(prompts, sample(), settings.max_similarity)
    short = dataclasses.replace(params, prefer=dataclasses.replace(settings, max_steps=PREFER_STEPS, save_steps=10**6))
    trainer = build_dpo_trainer(short, model, tokenizer, pairs, Path("prefer-benchmark"))
    result = trainer.train()
    return [
        {
            "figure": f"`prefer`: sample the SFT model's reply for {len(prompts)} pairs "
            f"(up to {settings.sampling.max_new_tokens} new tokens, batch {params.evaluate.batch_size})",
            "ours": pairs_per_second,
            "unit": "pairs/s",
        },
        {
            "figure": f"`prefer`: {PREFER_STEPS} DPO steps of batch {settings.batch_size} (policy + reference forward)",
            "ours": trained_tokens(trainer.state.log_history) / result.metrics["train_runtime"],
            "unit": "tokens/s",
        },
    ]


def measure(repeats: int = 3) -> list[dict]:
    from peft import get_peft_model

    from benchmarks.train_throughput import TRAIN_SPLIT, build_base
    from habla.io import read_jsonl
    from habla.model.loading import device, load_base
    from habla.model.training import lora_config
    from habla.params import load_params

    if not TRAIN_SPLIT.exists():
        raise SystemExit(f"{TRAIN_SPLIT} is missing: run `dvc repro split` first.")
    train = read_jsonl(TRAIN_SPLIT)
    held_out = read_jsonl(TRAIN_SPLIT.with_name("val.jsonl")) + read_jsonl(TRAIN_SPLIT.with_name("test.jsonl"))
    params = load_params(REPO / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        build_base(Path(tmp), train, SPEC)
        model, tokenizer = load_base()
        model = get_peft_model(model, lora_config(params, [])).to(device()).eval()
        return [
            *tokenisation_rows(tokenizer, train, repeats),
            *perplexity_rows(model, tokenizer, held_out, repeats),
            *judge_rows(model, tokenizer, held_out, repeats),
            *serve_rows(model, tokenizer, held_out, params),
            *preference_rows(model, tokenizer, train, params, repeats),
        ]


def run(repeats: int = 3) -> list[dict]:
    """`measure` in a fresh interpreter, so the data benchmarks' imports and threads do not interfere."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.evaluation", str(repeats)], cwd=REPO, capture_output=True, text=True
    )
    if done.returncode:
        return [{"figure": "evaluation benchmarks", "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}]
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
