"""User-facing failures: one readable message, never a bare traceback.

Stages raise `UserError` for anything the user can fix (a wrong persona name, an
empty folder, a bad param, a failed data gate). `run_stage` turns it into a single
message on stderr and exit code 2; unexpected exceptions still show a traceback,
because those are our bugs and the traceback is what a bug report needs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem in the user's data, params or environment, with what to do about it."""


def configure_logging() -> None:
    level = os.environ.get("HABLA_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "great_expectations", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(main: Callable[[], None]) -> None:
    configure_logging()
    try:
        main()
    except UserError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
