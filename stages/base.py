"""`base` stage: provide the base model under models/base/.

With `model.base: builtin-tiny` (the default) it trains, offline and on CPU, a
byte-level BPE tokenizer and a small Llama-architecture model on the *train*
split only (documents and chat text rendered in the chat format), so the demo
has a real pretrained base and the evaluation on val/test stays honest.
With a local `.gguf` file (the model you run in Ollama or LM Studio) it dequantizes it once into an HF folder
here, recording its sha256 and quantization (see `habla/model/gguf.py`). With a hub id or a local folder it
checks that the model resolves and records where, without copying weights.
"""

from __future__ import annotations

import shutil

from habla import paths
from habla.errors import run_stage
from habla.io import write_json
from habla.model import gguf
from habla.model.builtin import build_builtin, resolve_external
from habla.model.loading import BUILTIN, GGUF
from habla.params import load_params

REPORT = paths.report("base")

PARAMS = ["preset", "model", "builtin"]
DEPS = [
    paths.split_file("train"),
    paths.document_split("train"),
    "stages/base.py",
    "habla/model/builtin.py",
    "habla/model/gguf.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    paths.PRESETS,
]
OUTS = [paths.BASE_MODEL]
METRICS = [REPORT]


def main() -> None:
    params = load_params()
    if paths.BASE_MODEL.exists():
        shutil.rmtree(paths.BASE_MODEL)
    paths.BASE_MODEL.mkdir(parents=True)
    if params.model.base == BUILTIN:
        stats = build_builtin(params.builtin)
        source = {"kind": BUILTIN, "location": str(paths.BASE_MODEL)}
    elif gguf.is_gguf(params.model.base):
        stats = gguf.dequantize(gguf.locate(params.model.base), paths.BASE_MODEL)
        source = {"kind": GGUF, "location": str(paths.BASE_MODEL), "gguf": stats}
    else:
        source = resolve_external(params.model)
        stats = {}
    write_json(paths.SOURCE_FILE, source)
    write_json(REPORT, {"source": source["kind"], **stats})


if __name__ == "__main__":
    run_stage(main)
