"""The `habla` command: `habla chat`, `habla serve`, `habla export`, `habla blind` (the pipeline itself runs with
`dvc repro`)."""

from __future__ import annotations

import sys

from habla.errors import run_stage

COMMANDS = {
    "chat": "habla.apps.chat",
    "serve": "habla.apps.serve",
    "export": "habla.apps.export",
    "blind": "habla.apps.blind",
}


def main(argv: list[str] | None = None) -> None:
    import importlib

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(
            f"usage: habla {{{','.join(COMMANDS)}}} [options]   (habla <command> --help for its options)",
            file=sys.stderr,
        )
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    module = importlib.import_module(COMMANDS[args[0]])
    run_stage(lambda: module.main(args[1:]))


if __name__ == "__main__":
    main()
