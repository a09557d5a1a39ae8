"""A start that never reached a checkpoint (killed, diverged) gives way to the corrected command, saying so;
a run that has saved refuses another config with one line naming each option that differs."""

from __future__ import annotations

import os
import signal

from conftest import assert_refused, gated_task, launch, logged_steps, smtrnn_cli, tiny_args, wait_until
from smtrnn import checkpoint

STEPS = 5
ARGS = [*tiny_args("bptt"), "--method", "bptt", "--steps", STEPS, "--log-every", 1, "--checkpoint-every", 1000]


def test_a_start_that_never_saved_takes_the_corrected_command(tmp_path):
    gate, out = tmp_path / "gate", tmp_path / "run"
    command = ["train", *ARGS, *gated_task(tmp_path, gate, at=3), "--out", out]
    gate.touch()
    first = launch(*command)
    try:
        wait_until(first, lambda: ("bptt", 2) in logged_steps(out))
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
        gate.unlink()
    assert (out / "config.json").exists() and checkpoint.latest_checkpoint(out) is None

    fixed = smtrnn_cli(*command, "--lr", "0.01")
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stderr.splitlines() == [
        f"smtrnn: {out} never reached a checkpoint: starting it afresh with the new config (--lr 0.002 -> 0.01)"
    ]
    assert logged_steps(out) == [("bptt", step) for step in range(1, STEPS + 1)]

    # now it has a checkpoint: another config is refused, naming what differs
    config = (out / "config.json").read_bytes()
    refused = smtrnn_cli(*command, "--lr", "0.005", "--seed", "1", "--task-option", "at=4")
    assert_refused(refused, "holds a run with a different config", "--lr 0.01 -> 0.005", "--seed 0 -> 1")
    assert "--task-option at: 3 -> 4" in refused.stderr
    assert (out / "config.json").read_bytes() == config
