"""`habla export`: the persona as one model folder, as a GGUF file, or as a GGUF LoRA adapter, checked before it
says so.

Off the default pipeline: most users serve base + adapter. `--format hf` merges the adapter into the base loaded
unquantized in its own stored precision (merging into a 4-bit base would round the adapter's update away, even
when training used QLoRA). `--format gguf` converts that merged model with llama.cpp's own converter (f16, q8_0,
or q4_k_m by llama.cpp's quantizer); `--format gguf-adapter` converts the LoRA alone, for an unchanged base
GGUF that carries the persona's template. `--ollama` writes a Modelfile beside it. Every export is checked
(`habla/model/exporting.py`) and what was checked is written to `export.json`; a check that fails stops the
export with one sentence and no success is reported.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_json, read_jsonl, write_json
from habla.model import exporting, llamacpp
from habla.model.generation import held_out_cases
from habla.model.gguf import sha256
from habla.model.loading import ADAPTER_NAMES, as_model, encode_chat, end_ids, has_preferred, load_tuned
from habla.model.loading import special_separator as separator_token
from habla.params import Params, load_params

log = logging.getLogger("export")

FORMATS = ("hf", "gguf", "gguf-adapter")


def adapter_folder(adapter: str) -> Path:
    if adapter == "preferred" and not has_preferred():
        raise UserError(f"{paths.PREFERRED} has no adapter: run the `prefer` stage (with prefer.enabled: true).")
    return {"tuned": paths.ADAPTER, "preferred": paths.PREFERRED}[adapter]


def check_cases(params: Params, count: int) -> list[dict]:
    """Held-out prompts for the checks: the test split's, cut as `generate` cuts them."""
    split = paths.split_file("test")
    if not split.exists():
        raise UserError(f"{split} is missing: the export checks answer held-out prompts (run `dvc repro split`).")
    cases, _ = held_out_cases(read_jsonl(split), params.evaluate)
    if not cases:
        raise UserError(f"no conversation in {split} has a persona reply to check the export against.")
    return cases[:count]


def conversations(cases: list[dict]) -> list[list[dict]]:
    """Each held-out case whole: its prompt and the persona's real reply."""
    return [case["prompt"] + [{"role": "assistant", "content": case["reference"]}] for case in cases]


def trained_stops(tokenizer, stops: list[int], cases: list[dict]) -> list[int]:
    """The stop tokens inside the loss: what the persona learned to end its replies with."""
    encoded = encode_chat(tokenizer, conversations(cases[:1])[0])
    masked = {i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m}
    return sorted(masked & set(stops)) or [tokenizer.eos_token_id]


def file_record(path: Path, seconds: float) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path), "seconds": round(seconds, 2)}


def save_for_conversion(model, tokenizer, folder: Path) -> None:
    """An HF folder the converter reads: the model, and the tokenizer with the serving template."""
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder)
    template = tokenizer.chat_template
    tokenizer.chat_template = exporting.serving_template(template)
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = template


@dataclass
class Expected:
    """What base + adapter do in habla, which every export must keep: the template and stops of `tokenizer`,
    its greedy `replies` to the held-out `prompts`, and the learned separator token, if any."""

    tokenizer: object
    cases: list[dict]
    prompts: list[list[int]]
    replies: list[list[int]]
    stops: list[int]
    learned_stops: list[int]
    separator: str | None

    def agreement(self, replies: list[list[int]], what: str, identical: bool) -> dict:
        result = exporting.agreement(self.replies, replies, self.stops)
        return exporting.require_identical(result, what) if identical else result

    @property
    def new_tokens(self) -> int:
        return max(len(r) for r in self.replies)


def gguf_checks(gguf: Path, expected: Expected, identical: bool, adapter: Path | None = None) -> dict:
    """Template, stops and separator as the file says; greedy answers in transformers (a merged file) and in
    llama.cpp where it is built."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = expected.tokenizer
    meta = llamacpp.metadata(gguf)
    checks = {"template": exporting.check_template(tokenizer, meta["chat_template"], conversations(expected.cases))}
    end_of_generation = {i for i in (meta["eos_token_id"], meta["eot_token_id"]) if i is not None}
    vocab = llamacpp.vocabulary(gguf) if llamacpp.runtime() is not None else None
    if vocab is not None:
        end_of_generation |= llamacpp.end_of_generation(vocab, expected.stops)
    checks["stops"] = exporting.check_stops(tokenizer, expected.learned_stops, end_of_generation)
    separator = expected.separator
    file_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    exported_ids = file_tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else None
    checks["separator"] = exporting.check_separator(tokenizer, separator, exported_ids)
    if adapter is None:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
        replies = exporting.greedy_ids(model, expected.prompts, expected.new_tokens, expected.stops)
        checks["greedy_transformers"] = expected.agreement(replies, gguf.name, identical)
    if vocab is None and adapter is not None:
        raise UserError(f"a GGUF adapter is checked in llama.cpp only, and it is not built: {llamacpp.INSTALL_HINT}.")
    if vocab is None:
        checks["greedy_llama_cpp"] = {"skipped": f"llama-cpp-python {llamacpp.VERSION} is not built"}
        return checks
    texts = [tokenizer.decode(ids) for ids in expected.prompts]
    if llamacpp.tokenize(vocab, texts) != expected.prompts:
        raise UserError(f"llama.cpp tokenizes the held-out prompts unlike the adapter's tokenizer ({gguf.name}).")
    replies = llamacpp.greedy(gguf, texts, expected.new_tokens, adapter)
    checks["greedy_llama_cpp"] = expected.agreement(replies, f"llama.cpp on {gguf.name}", identical)
    return checks


def export(
    out: Path,
    adapter: str = "tuned",
    fmt: str = "hf",
    quant: str = "f16",
    ollama: bool = False,
    prompts_checked: int = 4,
    tokens_checked: int = 8,
) -> dict:
    """Export the `tuned` (SFT) or `preferred` adapter as `fmt`, check it, and write `export.json` into `out`."""
    params = load_params()
    folder = adapter_folder(adapter)
    cases = check_cases(params, prompts_checked)
    model, tokenizer = load_tuned(dtype="auto", preferred=adapter == "preferred")
    stops = end_ids(model, tokenizer)
    prompts = exporting.reference_prompts(tokenizer, cases)
    with as_model(model, adapter):
        replies = exporting.greedy_ids(model, prompts, tokens_checked, stops)
    separator = separator_token(params.group.separator)
    expected = Expected(
        tokenizer,
        cases,
        prompts,
        replies,
        stops,
        trained_stops(tokenizer, stops, cases),
        separator if separator and separator in tokenizer.get_vocab() else None,
    )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    record: dict = {
        "format": fmt,
        "adapter": str(folder),
        "trained_with": read_json(folder / "training_params.json")["params"],
        "checked_on": {"prompts": len(prompts), "greedy_tokens": tokens_checked},
    }
    started = time.perf_counter()
    if fmt == "gguf-adapter":
        record.update(export_adapter(out, folder, quant, expected))
    else:
        merged = model.merge_and_unload(adapter_names=[ADAPTER_NAMES[adapter]])
        record["dtype"] = str(merged.dtype).removeprefix("torch.")
        record["parameters"] = merged.num_parameters()
        writer = export_merged if fmt == "hf" else export_gguf
        record.update(writer(out, merged, quant, expected))
    record["seconds"] = round(time.perf_counter() - started, 2)
    if ollama and fmt != "hf":
        text = exporting.modelfile(
            record["files"][0]["file"],
            exporting.ollama_template(tokenizer, exporting.serving_template(tokenizer.chat_template)),
            tokenizer.convert_ids_to_tokens(expected.learned_stops),
            params.evaluate.sampling,
            record["files"][1]["file"] if fmt == "gguf-adapter" else None,
        )
        (out / "Modelfile").write_text(text, encoding="utf-8")
        record["modelfile"] = "Modelfile"
    write_json(out / "export.json", record)
    return record


def export_merged(out: Path, merged, quant: str, expected: Expected) -> dict:
    """Today's merged folder, reloaded from disk and checked to answer as base + adapter did."""
    from transformers import AutoModelForCausalLM

    merged.save_pretrained(out)
    expected.tokenizer.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    replies = exporting.greedy_ids(reloaded, expected.prompts, expected.new_tokens, expected.stops)
    return {"checks": {"greedy_transformers": expected.agreement(replies, "the merged folder", identical=True)}}


def export_gguf(out: Path, merged, quant: str, expected: Expected) -> dict:
    """The merged model as one GGUF file at `quant`."""
    staging = out / ".merged"
    save_for_conversion(merged, expected.tokenizer, staging)
    gguf = out / f"persona.{quant}.gguf"
    started = time.perf_counter()
    try:
        llamacpp.convert_model(staging, gguf, quant)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = [file_record(gguf, time.perf_counter() - started)]
    return {"quant": quant, "files": files, "checks": gguf_checks(gguf, expected, identical=quant == "f16")}


def export_adapter(out: Path, folder: Path, quant: str, expected: Expected) -> dict:
    """The base as a GGUF that carries the persona's template, and the LoRA as a GGUF adapter for it."""
    from transformers import AutoModelForCausalLM

    added = read_json(paths.ADAPTER / "training_params.json").get("tokenizer", {}).get("trained_rows", [])
    if added:
        raise UserError(
            f"this adapter trains rows for tokens the base vocabulary lacks ({', '.join(added)}), which a GGUF LoRA "
            "adapter cannot carry: export it merged (`--format gguf`)."
        )
    staging = out / ".base"
    save_for_conversion(AutoModelForCausalLM.from_pretrained(str(paths.BASE_MODEL)), expected.tokenizer, staging)
    base_gguf, adapter_gguf = out / f"base.{quant}.gguf", out / "persona-lora.f16.gguf"
    started = time.perf_counter()
    try:
        llamacpp.convert_model(staging, base_gguf, quant)
        converted = time.perf_counter()
        llamacpp.convert_adapter(folder, staging, adapter_gguf)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = [file_record(base_gguf, converted - started), file_record(adapter_gguf, time.perf_counter() - converted)]
    checks = gguf_checks(base_gguf, expected, identical=quant == "f16", adapter=adapter_gguf)
    return {"quant": quant, "files": files, "checks": checks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="habla export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help=f"folder to write (default {paths.MERGED}, or {paths.GGUF_EXPORT} for GGUF formats)"
    )
    parser.add_argument(
        "--adapter", choices=["tuned", "preferred"], default="tuned", help="which adapter to export (default tuned)"
    )
    parser.add_argument("--format", choices=FORMATS, default="hf", dest="fmt", help="what to write (default hf)")
    parser.add_argument("--quant", choices=llamacpp.QUANTS, default="f16", help="GGUF weights (default f16)")
    parser.add_argument("--ollama", action="store_true", help="write an Ollama Modelfile beside the GGUF")
    parser.add_argument("--check-prompts", type=int, default=4, help="held-out prompts the checks answer")
    parser.add_argument("--check-tokens", type=int, default=8, help="greedy tokens compared per prompt")
    args = parser.parse_args(argv)
    if args.ollama and args.fmt == "hf":
        parser.error("--ollama needs --format gguf or gguf-adapter")
    out = args.out or (paths.MERGED if args.fmt == "hf" else paths.GGUF_EXPORT)
    export(out, args.adapter, args.fmt, args.quant, args.ollama, args.check_prompts, args.check_tokens)
    log.info("exported %s (%s) into %s, checks passed", args.adapter, args.fmt, out)


if __name__ == "__main__":
    run_stage(main)
