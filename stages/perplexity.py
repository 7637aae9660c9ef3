"""`perplexity` stage: base vs fine-tuned on the test split, over assistant tokens only.

The number is a token-weighted mean NLL over the persona's reply tokens (and their
end-of-turn token), using the same template and mask as training: no padding, no
system or user tokens. Bits per byte divides by UTF-8 bytes of those replies, so
models with different tokenizers can be compared. Test documents (transcripts,
lyrics) are scored on every token, apart. Anything longer than
`train.max_length` is scored with overlapping windows (`evaluate.stride`) instead
of being cut, so long conversations and documents count whole.
"""

from __future__ import annotations

import logging
import math
import time

from habla import paths
from habla.errors import run_stage
from habla.io import read_jsonl, write_json
from habla.model.loading import as_model, load_evaluated, models_in
from habla.model.perplexity import by_field, encode_conversations, encode_documents, score_windowed, summarise
from habla.params import load_params

log = logging.getLogger("perplexity")

TEST = paths.split_file("test")
TEST_DOCUMENTS = paths.document_split("test")
REPORT = paths.report("perplexity")
PLOT = paths.PERPLEXITY_PLOT
PERSONA_PLOT = paths.PERSONA_PERPLEXITY_PLOT

PARAMS = [
    "preset",
    "evaluate.batch_size",
    "evaluate.bootstrap",
    "evaluate.stride",
    "evaluate.max_conversations",
    "train.max_length",
]
# A per-persona instance (`perplexity_persona@<id>`) scores its persona's own adapter (`tuned`) and the
# speaker-conditioned one (`conditioned`) on the same replies, its persona's: no preference-tuned adapter, no
# documents (nobody's chat). It reruns when the conditioned adapter changes, as the comparison must.
DEPS = [
    paths.BASE_MODEL,
    paths.ADAPTER,
    paths.COMPARED_ADAPTER,
    TEST,
    *([] if paths.PERSONA else [TEST_DOCUMENTS]),
    "stages/perplexity.py",
    "habla/model/perplexity.py",
    "habla/model/scoring.py",
    "habla/stats.py",
    "habla/model/loading.py",
    "habla/model/templates.py",
    paths.PRESETS,
]
OUTS = [PERSONA_PLOT]
METRICS = [REPORT]
PLOTS = [PLOT]
if paths.PERSONA:  # `perplexity_persona@<id>`: its report is the metric to compare, its charts are not drawn
    OUTS, PLOTS = [*OUTS, *PLOTS], []


def main() -> None:
    params = load_params()
    window, stride = params.train.max_length, params.evaluate.stride
    model, tokenizer = load_evaluated()
    test = read_jsonl(TEST)
    rows = encode_conversations(tokenizer, test[: params.evaluate.max_conversations or len(test)])
    scored_documents = not paths.PERSONA and TEST_DOCUMENTS.exists()
    documents = encode_documents(tokenizer, read_jsonl(TEST_DOCUMENTS)) if scored_documents else []
    everything = rows + documents
    models = models_in(model)

    def score_as(name: str):
        with as_model(model, name):
            return score_windowed(model, everything, tokenizer.pad_token_id, params.evaluate.batch_size, window, stride)

    start = time.perf_counter()
    scored = {name: score_as(name) for name in models}
    seconds = time.perf_counter() - start
    chats = {name: values[: len(rows)] for name, values in scored.items()}
    report = {
        **{name: summarise(rows, chats[name], params.evaluate.bootstrap) for name in models},
        "conversations": len(rows),
        "windowed_conversations": sum(len(r["input_ids"]) > window for r in rows),
        "tokens_per_second": len(models) * sum(s[1] for s in scored["base"]) / seconds if seconds else None,
    }
    if documents:
        report["documents"] = {
            "count": len(documents),
            "windowed": sum(len(d["input_ids"]) > window for d in documents),
            **{
                name: summarise(documents, values[len(rows) :], params.evaluate.bootstrap)
                for name, values in scored.items()
            },
        }
    if len({r["source"] for r in rows}) > 1:
        report["by_source"] = by_field(rows, chats, "source")
    # Chat replies per persona (one persona: `persona`); writing tasks made from documents are nobody's chat.
    speakers = [{**r, "speaker": r["persona"] or (None if r["source"] == "keywords" else "persona")} for r in rows]
    per_persona = by_field(speakers, chats, "speaker")
    if any(r["persona"] for r in rows):
        report["by_persona"] = per_persona
    write_json(REPORT, report)
    write_json(PERSONA_PLOT, [{"persona": ident, **by_model} for ident, by_model in per_persona.items()])
    write_json(
        PLOT,
        [
            {"id": r["id"], **{name: math.exp(chats[name][i][0] / max(chats[name][i][1], 1)) for name in models}}
            for i, r in enumerate(rows)
        ],
    )
    log.info(
        "perplexity on %d test conversations: base %.2f → fine-tuned %.2f",
        len(rows),
        report["base"]["perplexity"],
        report["tuned"]["perplexity"],
    )


if __name__ == "__main__":
    run_stage(main)
