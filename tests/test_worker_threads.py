"""The background worker's torch threads: its own OpenMP team must not sit beside the training thread's.

With more OpenMP threads in the process than cores, libgomp stops spin-waiting for the training thread's team
and every training step pays futex wake-ups (SmolLM2 on 2 cores: 1.4x slower steps, even with the worker idle).
Each case runs in a fresh process so the thread counts are its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rlvr_extrap.config import ExtrapolationArguments, ExtrapolationConfigError
from rlvr_extrap.runtime.worker import idle_threads

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading
    import torch
    from rlvr_extrap import get_extrapolator
    from rlvr_extrap.linalg.lowrank import LowRank
    from rlvr_extrap.runtime.worker import TrajectoryWorker

    def os_threads():
        return len(os.listdir("/proc/self/task"))

    def heavy():  # a fit-sized matmul and an elementwise pass: both parallel when torch has threads
        x = torch.randn(1024, 1024)
        return float((x @ x).exp_().sum())

    torch.set_num_threads(2)
    heavy()  # the training thread's own team exists before the worker starts
    before = os_threads()
    settings = json.loads(sys.argv[1])
    set_to = settings.pop("set_threads", None)
    lend = settings.pop("lend", None)
    worker = TrajectoryWorker(get_extrapolator("relex"), **settings)
    if set_to is not None:
        worker.set_threads(set_to).result()
    in_fit = []
    if lend is not None:  # the fit records its thread count and the process's OS threads
        fit = worker.extrapolator.fit

        def recording_fit(trajectory):
            heavy()
            in_fit.append([torch.get_num_threads(), os_threads() - before])
            return fit(trajectory)

        worker.extrapolator.fit = recording_fit
        worker.lend_threads(lend)
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        worker.add_snapshot(step, {"m": LowRank(torch.randn(512, 8, generator=g), torch.randn(8, 512, generator=g))})
    if lend is not None:
        worker.plan_jump(3, 1, 1.0).result()
    worker._pool.submit(heavy).result()
    inside = worker._pool.submit(torch.get_num_threads).result()
    added = os_threads() - before
    worker.close()
    later = []  # a thread that first uses torch after the worker closed gets the process default back
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    print(json.dumps({
        "inside": inside, "added": added, "main": torch.get_num_threads(), "later": later[0], "in_fit": in_fit
    }))
    """
)


def _run(settings: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(settings)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts OS threads through /proc (Linux)")
def test_the_worker_runs_torch_on_one_thread_and_adds_no_openmp_team():
    seen = _run({})
    assert seen["inside"] == 1
    assert seen["added"] == 1, f"the worker brought {seen['added'] - 1} extra OS thread(s) (an OpenMP team)"
    assert seen["main"] == 2 and seen["later"] == 2  # the training thread keeps its count; the default is restored


def test_worker_threads_can_be_raised_for_large_fits():
    seen = _run({"threads": 2})
    assert seen["inside"] == 2 and seen["main"] == 2 and seen["later"] == 2


def test_worker_threads_can_be_changed_on_a_running_worker():
    seen = _run({"set_threads": 2})
    assert seen["inside"] == 2 and seen["main"] == 2 and seen["later"] == 2


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts OS threads through /proc (Linux)")
def test_lent_threads_run_the_plan_and_leave_no_team_behind():
    """At a jump the training thread waits: the plan runs on its lent cores, in a thread whose OpenMP team ends
    with it, and the worker is back on its own thread count and OS threads after."""
    seen = _run({"lend": 2})
    (threads, during), *_ = seen["in_fit"]
    assert threads == 2 and during >= 3  # the worker, the lent thread and its team's second thread
    assert seen["inside"] == 1 and seen["added"] == 1 and seen["main"] == 2


def test_idle_threads_add_the_training_threads_up_to_the_cores_other_jobs_leave(monkeypatch):
    load = [0.0]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], 0.0, 0.0), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert idle_threads(1) == 5
    load[0] = 5.0  # this process's own 5 threads: nothing else runs
    assert idle_threads(1) == 5
    load[0] = 9.0  # 4 more: another job holds 4 of the 8 cores
    assert idle_threads(1) == 4
    load[0] = 16.0  # the machine is full: the worker keeps its own
    assert idle_threads(1) == 1
    load[0] = 0.0
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert idle_threads(1) == 8  # no more threads than cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert idle_threads(1) == 2 and idle_threads(3) == 3  # 2 cores each; never fewer than its own


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_bad_worker_threads_name_the_field_and_the_fix(value):
    with pytest.raises(ExtrapolationConfigError, match=r"extrap_worker_threads=.*number of threads >= 1"):
        ExtrapolationArguments(extrap_method="relex", extrap_worker_threads=value).validate_extrapolation()
