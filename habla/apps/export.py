"""`export`: merge the LoRA adapter into the base weights, for serving with tools that take one model folder.

Off the default pipeline (`python -m habla.apps.export` or `habla export`): most users
serve base + adapter, and a merged copy of a 7B model is 15 GB. The merge always
loads the base unquantized, in its own stored precision: merging into a 4-bit
base would round the adapter's update away and produce a worse model than the
one that was evaluated, even when training used QLoRA.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from habla import paths
from habla.errors import UserError, run_stage
from habla.io import read_json, write_json
from habla.model.loading import ADAPTER_NAMES, has_preferred, load_tuned

log = logging.getLogger("export")


def export(out: Path, adapter: str = "tuned") -> dict:
    """Merge the `tuned` (SFT) or the `preferred` (preference-tuned) adapter into the base."""
    folder = {"tuned": paths.ADAPTER, "preferred": paths.PREFERRED}[adapter]
    if adapter == "preferred" and not has_preferred():
        raise UserError(f"{paths.PREFERRED} has no adapter: run the `prefer` stage (with prefer.enabled: true).")
    model, tokenizer = load_tuned(dtype="auto", preferred=adapter == "preferred")
    merged = model.merge_and_unload(adapter_names=[ADAPTER_NAMES[adapter]])
    if out.exists():
        shutil.rmtree(out)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "adapter": str(folder),
        "dtype": str(merged.dtype).removeprefix("torch."),
        "parameters": merged.num_parameters(),
        "trained_with": read_json(folder / "training_params.json")["params"],
    }
    write_json(out / "export.json", record)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="habla export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=paths.MERGED, help=f"folder for the merged model (default {paths.MERGED})"
    )
    parser.add_argument(
        "--adapter", choices=["tuned", "preferred"], default="tuned", help="which adapter to merge (default tuned)"
    )
    args = parser.parse_args(argv)
    record = export(args.out, args.adapter)
    log.info("merged %s parameters (%s) into %s", f"{record['parameters']:,}", record["dtype"], args.out)


if __name__ == "__main__":
    run_stage(main)
