"""The one data-validation gate: a Great Expectations suite run once on a stage's whole output.

Each stage declares its expectations as `(name, kwargs)` pairs and hands the gate
narrow frames of what they check: numbers, flags and categories that polars
derives from the rows (a text's length, a chat message's year), never the text.
That keeps the gate cheap (GX runs row-wise Python for some checks; a million short
numbers cost it a fraction of what a million strings would), lets the gate hold
the whole output, so uniqueness is judged across batches, and keeps people's
words out of the report, which is committed to git.

Importing GX costs seconds. The import starts in a background thread when a gate
is created (or `warm_up()` is called) and the stage's own work hides it; the
full GX result goes to `metrics/gates/<stage>.json`, and a failure stops the
stage with a short list of what failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import polars as pl

from habla import paths
from habla.errors import UserError
from habla.io import write_json

log = logging.getLogger(__name__)

Expectation = tuple[str, dict[str, Any]]

_runtime: Future | None = None
_runtime_lock = threading.Lock()


class GateError(UserError):
    """A data gate failed: the stage's output breaks the contract the next stage relies on."""


def _import_gx() -> float:
    """Import GX; how long that took (a context afterwards costs milliseconds)."""
    started = time.perf_counter()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations  # noqa: F401

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    return time.perf_counter() - started


def warm_up() -> None:
    """Start GX's import in a daemon thread, once per process (a Ctrl-C never waits for it)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            return
        _runtime = Future()
    future = _runtime

    def run() -> None:
        try:
            future.set_result(_import_gx())
        except BaseException as err:  # handed to the thread that waits for the gate
            future.set_exception(err)

    threading.Thread(target=run, name="great-expectations-start-up", daemon=True).start()


def _context() -> tuple[Any, float, float]:
    """A fresh ephemeral GX context, GX's start-up seconds, and how many of those the caller waited for."""
    warm_up()
    started = time.perf_counter()
    startup = _runtime.result()
    waited = time.perf_counter() - started
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context, startup, waited


def _summarise(result: dict) -> dict:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id",)}
    details = result.get("result") or {}
    return {
        "expectation": config["type"],
        "description": config.get("description") or config["type"].replace("_", " "),
        "kwargs": kwargs,
        "success": result["success"],
        "unexpected_count": details.get("unexpected_count"),
        "observed_value": details.get("observed_value"),
        "examples": [str(v)[:80] for v in (details.get("partial_unexpected_list") or [])[:3]],
    }


class Gate:
    """A stage's gate: `check` collects the narrow frames batch by batch, `close` validates them all at once.

    Row-count checks are judged by the gate on the total; every other check runs in
    GX on the whole output. `timings` says where the gate's seconds went.
    """

    def __init__(self, stage: str, expectations: list[Expectation], out_dir: Path = paths.GATES):
        warm_up()
        self.stage, self.out_dir = stage, Path(out_dir)
        self.row_checks = [(name, kwargs) for name, kwargs in expectations if name.startswith("ExpectTableRowCount")]
        self.expectations = [e for e in expectations if e not in self.row_checks]
        self.frames: list[pl.DataFrame] = []
        self.timings: dict[str, float] = {}

    @property
    def rows(self) -> int:
        return sum(frame.height for frame in self.frames)

    def check(self, frame: pl.DataFrame) -> None:
        if any(dtype == pl.String for dtype in frame.dtypes):
            raise TypeError("gate frames hold numbers, flags and categories: cast string columns to pl.Categorical")
        self.frames.append(frame)

    def _validate(self, frame: pl.DataFrame) -> list[dict]:
        context, self.timings["startup_s"], self.timings["startup_wait_s"] = _context()  # before GX's import lock
        import great_expectations as gx

        batch = (
            context.data_sources.add_pandas(self.stage)
            .add_dataframe_asset(self.stage)
            .add_batch_definition_whole_dataframe(self.stage)
        )
        suite = context.suites.add(gx.ExpectationSuite(name=f"{self.stage}_suite"))
        for name, kwargs in self.expectations:
            suite.add_expectation(getattr(gx.expectations, name)(**kwargs))
        definition = gx.ValidationDefinition(name=self.stage, data=batch, suite=suite)
        validation = context.validation_definitions.add(definition)
        result = validation.run(batch_parameters={"dataframe": frame.to_pandas()}, result_format="SUMMARY")
        return [_summarise(check) for check in result.to_json_dict()["results"]]

    def close(self) -> dict:
        """Validate, write the report; raise GateError listing what failed."""
        started = time.perf_counter()
        rows, column_checks = self.rows, []
        if rows and self.expectations:
            column_checks = self._validate(pl.concat(self.frames, how="vertical_relaxed"))
        self.frames = []
        checks = [*(_row_count(name, kwargs, rows) for name, kwargs in self.row_checks), *column_checks]
        report = {"stage": self.stage, "success": all(c["success"] for c in checks), "rows": rows, "checks": checks}
        path = self.out_dir / f"{self.stage}.json"
        write_json(path, report)
        self.timings["gate_s"] = time.perf_counter() - started
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
        log.info(
            "gate %s: %d checks passed on %d rows in %.1f s (GX start-up %.1f s, of which %.1f s not hidden)",
            self.stage,
            len(checks),
            rows,
            self.timings["gate_s"],
            self.timings.get("startup_s", 0.0),
            self.timings.get("startup_wait_s", 0.0),
        )
        return report


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
