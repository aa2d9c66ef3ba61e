"""A worker process for the crash test: the real `run_worker`, with short POP timings.

`flask --app wsgi worker` reads its settings from the environment only (config.py), where a
crashed worker's account lock lasts a minute; here the lock lasts a second and the sweeper
looks every 0.2 s, so that a dozen kills fit in a test; and it starts working only when
the test writes a line to its stdin, so that the next worker can load while this one runs. Everything else is the production
path: the same app factory, worker class, sweeper thread and fetch job.
"""
from __future__ import annotations

import os
import sys

from webapp import create_app
from worker.runner import run_worker


def main() -> None:
    """Run a fetch worker with its sweeper until killed."""
    app = create_app({"INSTANCE_PATH": os.environ["SKYDESK_INSTANCE_PATH"],
                      "POP_LOCK_SECONDS": 1, "POP_SWEEP_SECONDS": 0.2,
                      "POP_QUEUED_MARKER_SECONDS": 5, "POP_TIMEOUT_SECONDS": 10.0})
    # Start-up (imports, app) happens before the test says go, off the kill loop's clock.
    print("ready", flush=True)
    sys.stdin.readline()
    run_worker(app, ["fetch"], with_scheduler=True)


if __name__ == "__main__":
    sys.exit(main())
