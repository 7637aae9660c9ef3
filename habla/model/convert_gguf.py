"""Run one of llama.cpp's own converters (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`) from its folder.

`python -m habla.model.convert_gguf CONVERTER_DIR SCRIPT [ARGS…]` runs SCRIPT as `__main__` with ARGS, in a
process of its own (the converter sets up logging and reads `sys.argv`), with the `gguf-py` vendored beside it
rather than the `gguf` package habla reads GGUF files with. One thing is added, and no tensor is touched:
llama.cpp names a BPE tokenizer's pre-tokenizer by hashing how it tokenizes a test string, so any tokenizer
trained here (the builtin model's) is "not recognized" although its pre-tokenizer is GPT-2's byte-level regex
itself. For a `tokenizer.json` whose pre-tokenizer is exactly that (ByteLevel with the regex, no normalizer),
the converter is told `gpt-2`, which is what llama.cpp then runs; every other unknown tokenizer still fails
as the converter decides.
"""

from __future__ import annotations

import importlib
import json
import runpy
import sys
from pathlib import Path

GPT2_PRE_TOKENIZER = {"type": "ByteLevel", "use_regex": True}


def pre_tokenizes_like_gpt2(model_dir: Path) -> bool:
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        return False
    spec = json.loads(path.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    return spec.get("normalizer") is None and all(pre.get(k) == v for k, v in GPT2_PRE_TOKENIZER.items())


def recognise_gpt2_byte_level(base_module) -> None:
    text_model = base_module.TextModel
    original = text_model.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if pre_tokenizes_like_gpt2(self.dir_model):
                return "gpt-2"
            raise

    text_model.get_vocab_base_pre = get_vocab_base_pre


def main(argv: list[str]) -> None:
    converter, script, *args = argv
    sys.path[:0] = [str(Path(converter) / "gguf-py"), converter]  # the converter's own gguf-py, pinned with it
    recognise_gpt2_byte_level(importlib.import_module("conversion.base"))
    sys.argv = [script, *args]
    runpy.run_path(str(Path(converter) / script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
