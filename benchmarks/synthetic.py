"""A large synthetic Android WhatsApp export, in a format that both habla and whatstk read.

24-hour clocks (whatstk misreads Spanish `p. m.`, which would make the comparison
unfair to it), multi-line messages, system events and media placeholders in the
proportions of real exports, so every code path of the parser is exercised.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

AUTHORS = ["Nico", "Cami", "Feña", "Pancho", "Javi", "+56 9 8765 4321"]
PHRASES = [
    "wena po, ¿cómo estai?",
    "ya po, nos vemos al tiro",
    "¿vamos al estadio el domingo?",
    "cachai que mañana hay paro",
    "la pega estuvo pesada hoy",
    "obvio que voy po",
    "¿alguien tiene el número del Pancho?",
    "qué lata, se largó a llover",
    "mándame la dirección porfa",
    "jajaja no puedo más",
    "¿quién lleva las chelas?",
    "el Colo ganó igual 🤙",
]


def export_lines(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    moment = datetime(2021, 3, 1, 9, 0)
    lines: list[str] = []
    while len(lines) < count:
        moment += timedelta(minutes=rng.choice((0, 1, 1, 2, 5, 30, 240)))
        head = f"{moment.day}/{moment.month}/{moment.year % 100:02d}, {moment.hour}:{moment.minute:02d} - "
        roll = rng.random()
        if roll < 0.01:
            lines.append(head + f"{rng.choice(AUTHORS)} añadió a {rng.choice(AUTHORS)}")
        elif roll < 0.03:
            lines.append(head + f"{rng.choice(AUTHORS)}: <Multimedia omitido>")
        else:
            lines.append(head + f"{rng.choice(AUTHORS)}: {rng.choice(PHRASES)}")
            if roll > 0.95:
                lines.append(rng.choice(PHRASES))
    return lines[:count]


def write_export(path: Path, count: int, seed: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(export_lines(count, seed)) + "\n", encoding="utf-8")
    return path


def write_exports(folder: Path, count: int, per_export: int) -> list[Path]:
    """`count` lines as chats of at most `per_export` lines, as a corpus of many exports looks."""
    sizes = [per_export] * (count // per_export) + ([count % per_export] if count % per_export else [])
    return [
        write_export(folder / f"Chat de WhatsApp con Cami {index:04d}.txt", size, seed=7 + index)
        for index, size in enumerate(sizes)
    ]
