"""torchrun that ends a stopped job like train.py does: `python -m torch_utils.torchrun` (or `ganforge-torchrun`).

When SLURM (or anyone) sends SIGTERM or SIGINT to a job, torchrun passes the signal on to its training processes and
waits for them, so train.py saves its training state and exits 143 / 130. torchrun itself then raises the signal as
an exception: every agent ends with a traceback and exit status 1, so the job's log has one traceback per machine for
an ordinary preemption, and its status cannot tell a stop from a failure. This runs torchrun in this process with
the same options (torch_utils.distributed.run_torchrun) and changes two things only:

- a stop signal ends it with one line and the status 128 + the signal's number (143 for SIGTERM, 130 for SIGINT);
- torchrun waits up to 120 s (not 30 s) for the training processes to finish the step in progress
  and write their state before it kills them, unless `--shutdown-timeout` or TORCH_ELASTIC_SHUTDOWN_TIMEOUT says
  otherwise.

    python -m torch_utils.torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        train.py --outdir=runs ... --gpus=16 --resume=latest
"""

from __future__ import annotations

import sys

from torch_utils.distributed import run_torchrun


def main(argv: list[str] | None = None) -> None:
    """Run torchrun with `argv` (default: this command's arguments); exit as described above."""
    run_torchrun(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
