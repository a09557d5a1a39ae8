"""SIGTERM (a scheduler preempting a job) and SIGINT (Ctrl-C) stop a real `python -m smtrnn train` with a
checkpoint at the step it reached and one line; the same command then resumes it to the bit-identical
result of an uninterrupted run. A study training runs in worker processes passes the signal on: every
run under way saves, no queued run starts, no worker outlives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import (
    assert_identical,
    final_tensors,
    gated_task,
    launch,
    logged_steps,
    records,
    smtrnn_cli,
    tiny_args,
    wait_until,
)
from smtrnn import checkpoint

SMT_STEPS, DMT_STEPS = 10, 6
# every step logged, no checkpoint before the end of a phase: what a signal saves is all there is to resume
# from; the uniformity subsample and DMT's teacher start points draw from the global RNG, which must resume too
ARGS = [*tiny_args("smt+dmt"), "--steps", SMT_STEPS, "--dmt-steps", DMT_STEPS, "--log-every", 1]
ARGS += ["--dmt-log-every", 1, "--checkpoint-every", 1000, "--dmt-checkpoint-every", 1000]
ARGS += ["--smt-uniformity-samples", 16, "--dmt-start", "teacher"]


def result_without_clock(run_dir) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    return {key: value for key, value in result.items() if "seconds" not in key}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """(run directory, task folder): the command run to its end uninterrupted (its gate never exists)."""
    folder = tmp_path_factory.mktemp("whole")
    task = gated_task(folder, folder / "no-gate", at=0)
    done = smtrnn_cli("train", *ARGS, *task, "--out", folder / "run")
    assert done.returncode == 0, done.stderr
    return folder / "run", folder


@pytest.mark.parametrize(
    "signum, phase, at",
    [(signal.SIGTERM, "smt", 4), (signal.SIGINT, "dmt", SMT_STEPS + 3)],
    ids=["SIGTERM in SMT", "SIGINT in DMT"],
)
def test_a_signal_saves_the_step_reached_and_the_same_command_resumes_bit_exactly(signum, phase, at, whole, tmp_path):
    whole_dir, task_folder = whole
    gate, out = tmp_path / "gate", tmp_path / "run"
    task = gated_task(task_folder, gate, at)  # the same task file: result.json names it
    step = at if phase == "smt" else at - SMT_STEPS  # the batch `at` is drawn for this step of the phase
    gate.touch()
    process = launch("train", *ARGS, *task, "--out", out)
    try:
        # held before step `step`: every earlier step is done, its interrupt check included
        wait_until(process, lambda: gate.with_name("gate.waiting").exists())
        process.send_signal(signum)
        gate.unlink()  # the step under way finishes, then the run stops
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, err
    assert err.splitlines() == [
        f"smtrnn: interrupted ({signum.name}) at {phase} step {step}; checkpoint saved, the same command resumes"
    ]
    assert checkpoint.latest_checkpoint(out).name == f"{phase}-{step:08d}"
    assert logged_steps(out)[-1] == (phase, step) and not (out / "result.json").exists()

    done = smtrnn_cli("train", *ARGS, *task, "--out", out)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert_identical(final_tensors(out), final_tensors(whole_dir))
    assert records(out) == records(whole_dir)  # no step lost, none twice, every logged value the same
    assert result_without_clock(out) == result_without_clock(whole_dir)


# a study of three tiny BPTT runs, two at a time; each run waits before its third batch while the gate exists
STUDY_SCRIPT = """
import os, sys, time
from dataclasses import dataclass

from smtrnn.config import RunConfig
from smtrnn.experiments.runner import run_study
from smtrnn.experiments.spec import Budget, Point, Study, Variant
from smtrnn.errors import WorkerDied
from smtrnn.interrupt import Interrupted
from smtrnn.models import tiny_model
from smtrnn.tasks import TASKS
from smtrnn.tasks.synthetic import Parity


@dataclass
class Held(Parity):
    gate: str = ""

    def sample(self, batch_size, length, generator):
        self.drawn = getattr(self, "drawn", 0) + 1
        while self.drawn == 3 and os.path.exists(self.gate):
            open(f"{self.gate}.{os.getpid()}", "w").close()  # this worker is held here
            time.sleep(0.01)
        return super().sample(batch_size, length, generator)


TASKS["held"] = Held  # module level: the spawned workers run it too

if __name__ == "__main__":
    gate, out = sys.argv[1:]
    base = RunConfig(length=8, model=tiny_model(), eval_batches=1)
    study = Study(
        "held", "test", base, [Variant("bptt", "BPTT", {"method": "bptt"})], [Point("bptt", "held", "tanh", 8)],
        [0, 1, 2], {8: Budget(20)}, tasks={"held": {"gate": gate}},
    )
    try:
        result = run_study(study, out, jobs=2, progress=False)
    except Interrupted as error:
        print(error, file=sys.stderr)
        sys.exit(error.exit_code)
    except WorkerDied as error:
        print(error, file=sys.stderr)
        sys.exit(1)
    print(len(result["rows"]), result["trained"])
"""


def held_study(tmp_path, stop):
    """Run STUDY_SCRIPT until both workers hold a run at its third batch, ``stop(process, workers)``, then
    let them go; the study's process, its stderr, the workers' pids, and the command and env that rerun it."""
    script, gate, out = tmp_path / "study.py", tmp_path / "gate", tmp_path / "runs"
    script.write_text(STUDY_SCRIPT)
    command = [sys.executable, str(script), str(gate), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    gate.touch()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    held = lambda: sorted(int(path.suffix[1:]) for path in tmp_path.glob("gate.*"))
    try:
        wait_until(process, lambda: len(held()) == 2)
        workers = held()
        stop(process, workers)
        time.sleep(1)
        gate.unlink()
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process, err, workers, command, env


def test_a_signal_to_a_study_stops_its_workers_runs_with_a_checkpoint_and_starts_no_other(tmp_path):
    # the study only: the workers are not signalled by the test
    process, err, workers, command, env = held_study(tmp_path, lambda process, _: process.send_signal(signal.SIGTERM))
    out = tmp_path / "runs"
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines() == [
        "interrupted (SIGTERM): the runs under way saved a checkpoint; the same command resumes the study"
    ]
    runs = {seed: out / "bptt" / "held" / "tanh" / "T8" / f"seed{seed}" for seed in range(3)}
    started = [seed for seed, run in runs.items() if run.exists()]
    assert len(started) == 2 and not runs[2].exists()  # the queued run did not start
    for seed in started:
        assert checkpoint.latest_checkpoint(runs[seed]) is not None and not (runs[seed] / "result.json").exists()
    for pid in workers:  # no worker trains on after the study is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["3", "3"], done.stderr


def test_a_worker_killed_in_a_run_stops_the_study_in_one_line_and_the_others_save(tmp_path):
    """The system's out-of-memory killer (SIGKILL) takes one worker: the study says so in one line, exit 1,
    no traceback; the other run under way saves a checkpoint (the broken pool signals it), the queued run
    does not start, and the same command then finishes all three."""
    process, err, (killed, other), command, env = held_study(
        tmp_path, lambda _, workers: os.kill(workers[0], signal.SIGKILL)
    )
    out = tmp_path / "runs"
    assert process.returncode == 1, err
    assert err.splitlines() == [
        "a worker of the study died in a run (killed from outside, most often by the system for want of memory: "
        "fewer --jobs need less); the other runs under way saved a checkpoint, and the same command resumes every "
        "run from its last checkpoint"
    ]
    runs = {seed: out / "bptt" / "held" / "tanh" / "T8" / f"seed{seed}" for seed in range(3)}
    started = [seed for seed, run in runs.items() if run.exists()]
    assert len(started) == 2 and not runs[2].exists()  # the queued run did not start
    saved = [seed for seed in started if checkpoint.latest_checkpoint(runs[seed]) is not None]
    assert len(saved) == 1 and not (runs[saved[0]] / "result.json").exists()  # the killed one had none yet
    with pytest.raises(ProcessLookupError):
        os.kill(other, 0)

    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["3", "3"], done.stderr
