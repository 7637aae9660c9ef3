"""llama.cpp at one pinned version: its own converters, its quantizer and its runtime, for `habla export`.

Everything comes from one registry package, `llama-cpp-python` at `VERSION`: its sdist vendors llama.cpp with
`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py` and their `gguf-py`, which `make export-tools` unpacks into the
venv (`converter_dir`), and the package built from it gives the quantizer and the runtime the export checks run.
habla never maps a tensor itself: the converters do, exactly as llama.cpp's own users run them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from habla.errors import UserError

VERSION = "0.3.36"
QUANTS = ("f16", "q8_0", "q4_k_m")
# What the converter cannot write itself: llama.cpp's quantizer makes it from the f16 file (LLAMA_FTYPE_MOSTLY_*).
QUANTIZED_AFTER = {"q4_k_m": 15}
INSTALL_HINT = (
    f"run `make export-tools` (it builds llama-cpp-python {VERSION} from the registry's sdist, about 11 minutes on "
    "2 cores, and unpacks llama.cpp's converters into the venv)"
)


def converter_dir() -> Path:
    """llama.cpp's converter scripts, unpacked from the pinned sdist by `make export-tools`."""
    folder = Path(os.environ.get("HABLA_LLAMA_CPP", Path(sys.prefix) / "share" / "habla" / f"llama.cpp-{VERSION}"))
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise UserError(f"llama.cpp's converter is not installed ({folder}): {INSTALL_HINT}.")
    return folder


def runtime():
    """The `llama_cpp` package, or None where it is not built (checks that need it are then reported skipped)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp


def convert(script: str, args: list[str]) -> None:
    """Run one of llama.cpp's converters in its own process; its error becomes one sentence with its last line."""
    command = [sys.executable, "-m", "habla.model.convert_gguf", str(converter_dir()), script, *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no output")
        raise UserError(f"llama.cpp's {script} could not convert this model: {last}")


def convert_model(folder: Path, outfile: Path, quant: str) -> None:
    """An HF model folder → one GGUF file at `quant` (f16 and q8_0 by the converter, q4_k_m by llama.cpp's own
    quantizer from the f16 file)."""
    if quant not in QUANTIZED_AFTER:
        convert("convert_hf_to_gguf.py", [str(folder), "--outfile", str(outfile), "--outtype", quant])
        return
    f16 = outfile.with_suffix(".f16.gguf")
    convert("convert_hf_to_gguf.py", [str(folder), "--outfile", str(f16), "--outtype", "f16"])
    try:
        quantize(f16, outfile, QUANTIZED_AFTER[quant])
    finally:
        f16.unlink()


def convert_adapter(adapter: Path, base: Path, outfile: Path) -> None:
    """A PEFT LoRA folder → a GGUF LoRA adapter for the base model in `base` (an HF folder)."""
    convert(
        "convert_lora_to_gguf.py", [str(adapter), "--base", str(base), "--outfile", str(outfile), "--outtype", "f16"]
    )


def quantize(source: Path, target: Path, ftype: int) -> None:
    llama_cpp = runtime()
    if llama_cpp is None:
        raise UserError(f"quantizing to Q4_K needs llama.cpp's quantizer: {INSTALL_HINT}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise UserError(f"llama.cpp could not quantize {source.name}")


def metadata(path: Path) -> dict:
    """What the export checks read from a GGUF file: its chat template, its stop ids and its architecture."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str):
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    return {
        "chat_template": value("tokenizer.chat_template"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "eot_token_id": value("tokenizer.ggml.eot_token_id"),
        "architecture": value("general.architecture"),
    }


def greedy(path: Path, prompts: list[str], max_new_tokens: int, adapter: Path | None = None) -> list[list[int]]:
    """Greedy token ids llama.cpp generates for each rendered prompt (its special tokens parsed), stopping at the
    model's end-of-generation tokens, which are kept as the last id."""
    llama_cpp = runtime()
    model = llama_cpp.Llama(
        model_path=str(path),
        lora_path=str(adapter) if adapter else None,
        n_ctx=1024,
        n_threads=max(1, (os.cpu_count() or 2)),
        seed=0,
        verbose=False,
    )
    outputs = []
    for prompt in prompts:
        tokens = model.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        produced: list[int] = []
        for token in model.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            produced.append(token)
            if llama_cpp.llama_vocab_is_eog(model._model.vocab, token) or len(produced) >= max_new_tokens:
                break
        outputs.append(produced)
    return outputs


def vocabulary(path: Path):
    """The file's vocabulary as llama.cpp loads it (no weights): for `end_of_generation` and `tokenize`."""
    return runtime().Llama(model_path=str(path), vocab_only=True, verbose=False)


def end_of_generation(vocab, ids: list[int]) -> set[int]:
    """The `ids` at which llama.cpp ends generation with this vocabulary (its EOS, EOT and the tokens it knows end
    turns)."""
    return {i for i in ids if runtime().llama_vocab_is_eog(vocab._model.vocab, i)}


def tokenize(vocab, texts: list[str]) -> list[list[int]]:
    """llama.cpp's own tokenization of each text (special tokens parsed)."""
    return [vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in texts]
