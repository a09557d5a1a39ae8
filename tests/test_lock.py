"""One process per run directory: a second `smtrnn train` on the same --out is refused with one line naming
the holder and changes nothing; the lock dies with its holder, so a run SIGKILLed resumes at once; `eval`
reads a run in progress and says which checkpoint it scored."""

from __future__ import annotations

import json
import os
import signal
import socket

from conftest import assert_refused, gated_task, launch, logged_steps, smtrnn_cli, tiny_args, wait_until

STEPS = 8
ARGS = [*tiny_args("bptt"), "--method", "bptt", "--steps", STEPS, "--log-every", 1, "--checkpoint-every", 3]


def snapshot(run_dir) -> dict:
    return {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file() and path.name != ".lock"}


def test_a_second_process_on_one_run_directory_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    gate, out = tmp_path / "gate", tmp_path / "run"
    command = ["train", *ARGS, *gated_task(tmp_path, gate, at=5), "--out", out]
    gate.touch()
    first = launch(*command)
    try:
        wait_until(first, lambda: ("bptt", 4) in logged_steps(out))  # holds before step 5, a checkpoint at 3
        before = snapshot(out)
        second = smtrnn_cli(*command)
        assert_refused(second, str(out), f"in use by smtrnn process {first.pid} on {socket.gethostname()}")
        assert snapshot(out) == before  # nothing written twice, no staging folder, no second log

        scored = smtrnn_cli("eval", out, "--batches", 1, "--json", "-")  # reading a run in progress is fine
        assert scored.returncode == 0, scored.stderr
        assert json.loads(scored.stdout)["checkpoint"] == "bptt step 3 (in progress)"
        assert scored.stderr.splitlines() == [
            f"smtrnn: {out} is still in progress (no result.json): scoring its bptt step 3 checkpoint"
        ]
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
        gate.unlink()
    assert (out / ".lock").exists()  # left behind by the kill, and no obstacle
    resumed = smtrnn_cli(*command)
    assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr
    assert logged_steps(out) == [("bptt", step) for step in range(1, STEPS + 1)]  # every step once
