"""The pages `habla serve` shows a browser: the chat at `/`, the side-by-side generations at `/generations` and the
blind test at `/blind` (habla/apps/blind.py).

Both are static, self-contained files (inline CSS and JS, no CDN, no web fonts) so they work offline; they get
their data from the server's own API with the same bearer key as any client, and render it with `textContent`,
never as HTML. The held-out conversations behind `/generations` are other people's words: that data (and the blind
test's) is given only to clients on the machine itself, whatever address the API is bound to.
"""

from __future__ import annotations

import ipaddress
import json
from importlib import resources
from pathlib import Path

from habla import paths
from habla.apps.blind import NOT_A_REPLY
from habla.io import read_jsonl
from habla.model.judging import chosen_model

PAGES = {"/": "chat.html", "/generations": "generations.html", "/blind": "blind.html"}


def page(name: str, config: dict) -> bytes:
    """The page's HTML with `config` in its JSON island (`<` escaped, so no text can close the script element)."""
    html = resources.files("habla.apps").joinpath("static", name).read_text(encoding="utf-8")
    island = json.dumps(config, ensure_ascii=False).replace("<", "\\u003c")
    return html.replace("{{config}}", island).encode()


def is_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def picked(choice: str | None, shown_first: str, shown_second: str) -> str | None:
    """The model the judge chose when `shown_first` was answer A; `tie` for C, None when the judgment failed."""
    return None if choice is None else chosen_model(choice, shown_first, shown_second)


def judged_orders(judgment: dict) -> dict:
    """A stored judgment as the page shows it: each order's pick by model name, the outcome for the pair's first
    model (win, tie, loss, failed) and the ratings."""
    first, second = judgment["pair"].split(" vs ")
    return {
        "pair": judgment["pair"],
        "orders": [
            {"shown_first": first, "picked": picked(judgment["first_as_a"], first, second)},
            {"shown_first": second, "picked": picked(judgment["first_as_b"], second, first)},
        ],
        "outcome": {first: "win", second: "loss"}.get(judgment["outcome"], judgment["outcome"]),
        "rating": judgment.get("rating", {}),
    }


def generation_cases(generations: Path = paths.GENERATIONS, judgments: Path = paths.JUDGMENTS) -> dict:
    """Every held-out prompt with the real reply, each model's reply and the judge's verdicts on it.

    A workspace without `generate`'s output gives an empty list and a hint, not an error: the page says what to run.
    """
    if not generations.exists():
        return {"cases": [], "hint": f"{generations} does not exist yet: run `dvc repro generate judge`."}
    verdicts: dict[str, list[dict]] = {}
    for judgment in read_jsonl(judgments) if judgments.exists() else []:
        verdicts.setdefault(judgment["id"], []).append(judged_orders(judgment))
    cases = [
        {
            "id": case["id"],
            "source": case.get("source", ""),
            "prompt": case["prompt"],
            "reference": case["reference"],
            "replies": {name: text for name, text in case.items() if name not in NOT_A_REPLY},
            "judgments": verdicts.get(case["id"], []),
        }
        for case in read_jsonl(generations)
    ]
    hint = "" if verdicts else f"{judgments} does not exist yet: run `dvc repro judge` for the verdicts."
    return {"cases": cases, "hint": hint}
