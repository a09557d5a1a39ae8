"""SIGTERM (a scheduler preempting a job) and SIGINT (Ctrl-C) stop a real `python -m smtrnn train` with a
checkpoint at the step it reached and one line; the same command then resumes it to the bit-identical
result of an uninterrupted run."""

from __future__ import annotations

import json
import signal

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
