"""The one data-validation gate: a Great Expectations suite run on a polars frame.

Each stage declares its expectations as `(name, kwargs)` pairs so that stage code
never imports GX (importing it costs seconds and hundreds of MB, so it happens
here, once, when a gate runs). The full GX result goes to
`metrics/gates/<stage>.json`; a failure stops the stage with a short list of what
failed, which is what a user needs to find the bad rows.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import polars as pl

from stages.errors import UserError
from stages.io import write_json

log = logging.getLogger(__name__)

Expectation = tuple[str, dict[str, Any]]
GATES_DIR = Path("metrics/gates")
# Columns that hold people's words: a failing check shows their length, never the text, because
# the gate report is committed to git and the error is printed.
PRIVATE_COLUMNS = {"text", "content"}


class GateError(UserError):
    """A data gate failed: the stage's output breaks the contract the next stage relies on."""


def _example(value: Any, private: bool) -> str:
    return f"<{len(str(value))} characters>" if private else str(value)[:80]


def _summarise(result: dict) -> dict:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id",)}
    details = result.get("result") or {}
    private = kwargs.get("column") in PRIVATE_COLUMNS
    return {
        "expectation": config["type"],
        "description": config.get("description") or config["type"].replace("_", " "),
        "kwargs": kwargs,
        "success": result["success"],
        "unexpected_count": details.get("unexpected_count"),
        "observed_value": details.get("observed_value"),
        "examples": [_example(v, private) for v in (details.get("partial_unexpected_list") or [])[:3]],
    }


def run_gate(stage: str, frame: pl.DataFrame, expectations: list[Expectation], out_dir: Path = GATES_DIR) -> dict:
    """Validate `frame`; write the report; raise GateError listing failures."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(stage)
        .add_dataframe_asset(stage)
        .add_batch_definition_whole_dataframe(stage)
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"{stage}_suite"))
    for name, kwargs in expectations:
        suite.add_expectation(getattr(gx.expectations, name)(**kwargs))
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=stage, data=batch, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame.to_pandas()}, result_format="SUMMARY")
    outcome = result.to_json_dict()
    checks = [_summarise(r) for r in outcome["results"]]
    report = {"stage": stage, "success": bool(result.success), "rows": frame.height, "checks": checks}
    write_json(Path(out_dir) / f"{stage}.json", report)
    failed = [c for c in checks if not c["success"]]
    if failed:
        lines = [f"data gate after `{stage}` failed ({len(failed)} of {len(checks)} checks):"]
        for check in failed:
            column = check["kwargs"].get("column") or check["kwargs"].get("column_list") or "table"
            count = check["unexpected_count"] if check["unexpected_count"] is not None else check["observed_value"]
            examples = f" e.g. {check['examples']}" if check["examples"] else ""
            lines.append(f"  - {check['description']} ({check['expectation']} on {column}): {count}{examples}")
        lines.append(f"Full report: {Path(out_dir) / f'{stage}.json'}")
        raise GateError("\n".join(lines))
    log.info("gate %s: %d checks passed on %d rows", stage, len(checks), frame.height)
    return report
