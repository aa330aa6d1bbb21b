"""Process exit: a trajectory worker that was never closed (training raised) does not hold the process up."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CRASHED_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    from rlvr_extrap import get_extrapolator
    from rlvr_extrap.runtime.worker import TrajectoryWorker

    out = Path(sys.argv[1])
    worker = TrajectoryWorker(get_extrapolator("linear"))

    def fit(i):  # stands for a long fit queued behind the running one
        time.sleep(1.0)
        (out / f"ran-{i}").touch()

    for i in range(5):
        worker._pool.submit(fit, i)
    time.sleep(0.3)  # the first one is running
    raise RuntimeError("training crashed before on_train_end")
    """
)


def test_an_unclosed_worker_drops_its_queued_work_at_exit(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", CRASHED_RUN, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "training crashed before on_train_end" in done.stderr, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ran-0"]  # the running fit ended; the queued ones never ran
