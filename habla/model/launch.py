"""Start the training workers under accelerate, after checking in seconds what would otherwise fail in minutes.

`dvc repro` runs the train stage as a plain process. It loads and checks the params (types, unknown keys, a 4-bit
run on a machine without CUDA) and only then starts `accelerate launch`, whose workers run the stage's `main`.
A user mistake therefore ends in one sentence and an exit status before torch is even imported by a worker, and
a worker's own `error:` line is not followed by the launcher's CalledProcessError traceback (`--quiet`).
"""

from __future__ import annotations

import os
import subprocess
import sys

from habla import paths
from habla.errors import UserError
from habla.params import Params

WORKER_ENV = "HABLA_ACCELERATE_WORKER"


def is_worker() -> bool:
    """Started by a launcher: ours, `accelerate launch` by hand (sets ACCELERATE_USE_CPU), torchrun (LOCAL_RANK)."""
    return os.environ.get(WORKER_ENV) == "1" or "LOCAL_RANK" in os.environ or "ACCELERATE_USE_CPU" in os.environ


def check_before_launch(params: Params) -> None:
    from habla.model.loading import require_cuda_for

    require_cuda_for(params.train.quantization)
    config = paths.accelerate_config(params.train.accelerate_profile)
    if not config.is_file():
        raise UserError(f"train.accelerate_profile: {config} does not exist; the profiles are in {config.parent}/.")


def accelerate_launch(module: str, params: Params) -> None:
    """Run `module` under accelerate with the params' profile; exit with the workers' status if they fail."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--quiet",
        "--config_file",
        str(paths.accelerate_config(params.train.accelerate_profile)),
        "-m",
        module,
    ]
    done = subprocess.run(command, env={**os.environ, WORKER_ENV: "1"}, check=False)
    if done.returncode:
        sys.exit(done.returncode)
