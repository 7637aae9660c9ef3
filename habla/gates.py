"""The one data-validation gate: a Great Expectations suite run on a polars frame.

Each stage declares its expectations as `(name, kwargs)` pairs so that stage code
never imports GX (importing it costs seconds and hundreds of MB, so it happens
here, once, when a gate runs). The full GX result goes to
`metrics/gates/<stage>.json`; a failure stops the stage with a short list of what
failed, which is what a user needs to find the bad rows.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import polars as pl

from habla import paths
from habla.errors import UserError
from habla.io import write_json

log = logging.getLogger(__name__)

Expectation = tuple[str, dict[str, Any]]
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


class Gate:
    """A stage's gate fed batch by batch, so that a stage never holds all its rows in memory to check them.

    Each batch runs the GX suite; per check, failures add up over batches (unexpected
    counts summed, the first examples kept). Row-count checks are judged once, on
    the total, when the gate closes. Uniqueness checks see one batch at a time, so
    stages keep rows that must be unique together in one batch.
    """

    def __init__(self, stage: str, expectations: list[Expectation], out_dir: Path = paths.GATES):
        self.stage, self.out_dir = stage, Path(out_dir)
        self.row_checks = [(name, kwargs) for name, kwargs in expectations if name.startswith("ExpectTableRowCount")]
        self.expectations = [e for e in expectations if e not in self.row_checks]
        self.rows = 0
        self.checks: dict[str, dict] = {}
        self._validation = None

    def _validation_definition(self):
        """Built on first use: importing GX costs seconds and hundreds of MB."""
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (
            context.data_sources.add_pandas(self.stage)
            .add_dataframe_asset(self.stage)
            .add_batch_definition_whole_dataframe(self.stage)
        )
        suite = context.suites.add(gx.ExpectationSuite(name=f"{self.stage}_suite"))
        for name, kwargs in self.expectations:
            suite.add_expectation(getattr(gx.expectations, name)(**kwargs))
        return context.validation_definitions.add(gx.ValidationDefinition(name=self.stage, data=batch, suite=suite))

    def check(self, frame: pl.DataFrame) -> None:
        self.rows += frame.height
        if frame.is_empty() or not self.expectations:
            return
        if self._validation is None:
            self._validation = self._validation_definition()
        result = self._validation.run(batch_parameters={"dataframe": frame.to_pandas()}, result_format="SUMMARY")
        for check in map(_summarise, result.to_json_dict()["results"]):
            key = json.dumps([check["expectation"], check["kwargs"]], sort_keys=True, default=str)
            self.checks[key] = _merge(self.checks[key], check) if key in self.checks else check

    def close(self) -> dict:
        """Write the report; raise GateError listing what failed."""
        checks = [*(_row_count(name, kwargs, self.rows) for name, kwargs in self.row_checks), *self.checks.values()]
        report = {
            "stage": self.stage,
            "success": all(c["success"] for c in checks),
            "rows": self.rows,
            "checks": checks,
        }
        path = self.out_dir / f"{self.stage}.json"
        write_json(path, report)
        failed = [c for c in checks if not c["success"]]
        if failed:
            lines = [f"data gate after `{self.stage}` failed ({len(failed)} of {len(checks)} checks):"]
            for check in failed:
                column = check["kwargs"].get("column") or check["kwargs"].get("column_list") or "table"
                count = check["unexpected_count"] if check["unexpected_count"] is not None else check["observed_value"]
                examples = f" e.g. {check['examples']}" if check["examples"] else ""
                lines.append(f"  - {check['description']} ({check['expectation']} on {column}): {count}{examples}")
            lines.append(f"Full report: {path}")
            raise GateError("\n".join(lines))
        log.info("gate %s: %d checks passed on %d rows", self.stage, len(checks), self.rows)
        return report


def _merge(old: dict, new: dict) -> dict:
    counts = [c for c in (old["unexpected_count"], new["unexpected_count"]) if c is not None]
    return {
        **old,
        "success": old["success"] and new["success"],
        "unexpected_count": sum(counts) if counts else None,
        "observed_value": new["observed_value"] if old["observed_value"] is None else old["observed_value"],
        "examples": (old["examples"] + new["examples"])[:3],
    }


def _row_count(name: str, kwargs: dict, rows: int) -> dict:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return {
        "expectation": snake,
        "description": kwargs.get("description") or snake.replace("_", " "),
        "kwargs": {k: v for k, v in kwargs.items() if k != "description"},
        "success": (low is None or rows >= low) and (high is None or rows <= high),
        "unexpected_count": None,
        "observed_value": rows,
        "examples": [],
    }


def run_gate(stage: str, frame: pl.DataFrame, expectations: list[Expectation], out_dir: Path = paths.GATES) -> dict:
    """Validate one frame; write the report; raise GateError listing failures."""
    gate = Gate(stage, expectations, out_dir)
    gate.check(frame)
    return gate.close()
