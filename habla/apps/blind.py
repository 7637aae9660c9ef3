"""People's blind test: shown a held-out context and two replies, one the person's and one a model's, which one
did they write? `habla serve` shows it at `/blind`; `habla blind --report` summarises the answers.

The answers file (`data/blind/answers.jsonl`, git-ignored) holds ids and choices only: the prompt's id, the
model, where the real reply was shown and what was picked, never text. Which side is real stays on the server
until the answer comes back. Each next pair is one of the (prompt, model) pairs answered least so far, so every
model gets answers at the same pace. 0.5 means people cannot tell the model from the person.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from habla import paths
from habla.errors import UserError
from habla.io import append_jsonl, read_jsonl
from habla.stats import wilson_interval

NOT_A_REPLY = {"id", "prompt", "reference", "source", "persona"}
SIDES = ("A", "B")
PENDING_LIMIT = 256  # pairs shown and not yet answered that the server remembers (oldest forgotten first)


def blind_report(answers: list[dict]) -> dict:
    """Per model: answers, how many found the real reply, and that accuracy with a Wilson 95% interval."""
    models: dict[str, dict] = {}
    for answer in answers:
        tally = models.setdefault(answer["model"], {"answers": 0, "correct": 0})
        tally["answers"] += 1
        tally["correct"] += answer["choice"] == answer["real"]
    for tally in models.values():
        tally["accuracy"] = tally["correct"] / tally["answers"]
        tally["accuracy_ci95"] = list(wilson_interval(tally["correct"], tally["answers"]))
    return {"answers": len(answers), "models": dict(sorted(models.items()))}


class BlindTest:
    """The pairs to show (every held-out prompt against every model's reply to it), the secret side of each pair
    shown, and the answers file. Thread-safe: `habla serve` answers each request on its own thread."""

    def __init__(self, generations: Path | None = None, answers: Path | None = None, seed: int | None = None):
        self.generations = generations or paths.GENERATIONS
        self.answers_path = answers or paths.BLIND_ANSWERS
        self.cases = {case["id"]: case for case in read_jsonl(self.generations)} if self.generations.exists() else {}
        self.answers = read_jsonl(self.answers_path) if self.answers_path.exists() else []
        self.random = random.Random(seed)
        self.pending: OrderedDict[str, dict] = OrderedDict()
        self.lock = threading.Lock()

    def hint(self) -> str:
        if not self.cases:
            return f"{self.generations} does not exist yet: run `dvc repro generate`."
        return ""

    def candidates(self) -> list[tuple[str, str]]:
        return [
            (case_id, model)
            for case_id, case in self.cases.items()
            for model, reply in case.items()
            if model not in NOT_A_REPLY and reply is not None
        ]

    def next_pair(self) -> dict | None:
        """A (prompt, model) pair among those answered least, with the real reply on a random side."""
        with self.lock:
            candidates = self.candidates()
            if not candidates:
                return None
            counts: dict[tuple[str, str], int] = {}
            for answer in self.answers:
                counts[answer["id"], answer["model"]] = counts.get((answer["id"], answer["model"]), 0) + 1
            fewest = min(counts.get(pair, 0) for pair in candidates)
            case_id, model = self.random.choice([pair for pair in candidates if counts.get(pair, 0) == fewest])
            real = self.random.choice(SIDES)
            token = secrets.token_urlsafe(16)
            self.pending[token] = {"id": case_id, "model": model, "real": real}
            while len(self.pending) > PENDING_LIMIT:
                self.pending.popitem(last=False)
        case = self.cases[case_id]
        replies = [case["reference"], case[model]] if real == "A" else [case[model], case["reference"]]
        return {"token": token, "prompt": case["prompt"], "replies": replies}

    def answer(self, token: object, choice: object) -> None:
        """Store the choice for a pair shown; a token that is unknown, used or forgotten is refused (ValueError)."""
        if choice not in SIDES:
            raise ValueError("choice must be A or B")
        with self.lock:
            shown = self.pending.pop(token, None) if isinstance(token, str) else None
            if shown is None:
                raise ValueError("this pair was already answered or is unknown: load the next one")
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            record = {**shown, "choice": choice, "at": now}
            append_jsonl(self.answers_path, [record])
            self.answers.append(record)

    def state(self) -> dict:
        """What the page shows: the next pair, the summary so far and a hint when there is nothing to show."""
        return {"pair": self.next_pair(), "summary": self.summary(), "hint": self.hint()}

    def summary(self) -> dict:
        with self.lock:
            return blind_report(list(self.answers))


def format_report(report: dict, source: Path) -> str:
    if not report["answers"]:
        return f"No answers yet in {source}: open /blind on `habla serve` and pick the real reply of each pair."
    lines = [f"{'model':<12} {'answers':>7} {'found the real one':>18} {'95% interval':>14}"]
    for model, tally in report["models"].items():
        low, high = tally["accuracy_ci95"]
        lines.append(f"{model:<12} {tally['answers']:>7} {tally['accuracy']:>18.2f} {f'{low:.2f}–{high:.2f}':>14}")
    lines.append("0.50: people cannot tell the model from the person; 1.00: they always can.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="habla blind", description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="summarise the answers given on /blind")
    parser.add_argument("--json", action="store_true", help="the summary as JSON")
    parser.add_argument("--answers", type=Path, default=paths.BLIND_ANSWERS, help="the answers file")
    args = parser.parse_args(argv)
    if not args.report:
        raise UserError("habla blind: the test itself is the /blind page of `habla serve`; `--report` summarises it.")
    answers = read_jsonl(args.answers) if args.answers.exists() else []
    report = blind_report(answers)
    print(json.dumps(report, indent=2) if args.json else format_report(report, args.answers))
