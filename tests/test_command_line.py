"""The command line as a user meets it, through `python -m smtrnn`: a mistake is one line and exit code 2
before anything is written (a device this machine lacks, a task option the task has not, a learning rate
that is a typo, SMT->DMT without SMT, an unwritable --json); BPTT is not held to the teacher's settings;
--json - prints the JSON; the help explains every option; a phase logged once still shows on a plot, whose
loss axis has labelled ticks within the curves."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest
import torch

from conftest import assert_refused, smtrnn_cli, tiny_args
from smtrnn.plot import draw

DEVICES = ["cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", DEVICES)
def test_a_device_this_machine_lacks_is_one_line(device, tmp_path):
    out = tmp_path / "run"
    assert_refused(smtrnn_cli("train", *tiny_args(), "--device", device, "--out", out), f"--device {device}")
    assert not out.exists()
    assert_refused(smtrnn_cli("eval", out, "--device", device), f"--device {device}")


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--task", "retrieval", "--task-option", "nope=1"], ["no option nope", "--task-option KEY=VALUE): values"]),
        (["--steps", "0"], ["--steps 0", "--method dmt --init RUN"]),
        (["--lr", "1e6"], ["--lr 1000000.0 is above 1"]),
        (["--dmt-lr", "inf"], ["--dmt-lr must be a finite number"]),
        (["--future", "9"], ["--future 9 is longer than the sequence (--length 8)"]),
        (
            ["--train-length", "4", "--future", "5"],
            ["--future 5 is longer than the training sequences (--train-length 4)"],
        ),
        (["--train-length", "9"], ["--train-length must be between 0 (T) and --length 8, got 9"]),
        (["--json", "{file}/result.json"], ["--json", "is a file, not a folder"]),
    ],
    ids=[
        "task option",
        "smt+dmt without smt",
        "lr typo",
        "lr inf",
        "future",
        "future, short",
        "train length",
        "unwritable json",
    ],
)
def test_mistakes_are_one_line_and_write_nothing(argv, fragments, tmp_path):
    regular = tmp_path / "a-file"
    regular.write_text("")
    out = tmp_path / "run"
    argv = [arg.replace("{file}", str(regular)) for arg in argv]
    assert_refused(smtrnn_cli("train", *tiny_args(), *argv, "--out", out), *fragments)
    assert not out.exists()


def test_bptt_ignores_the_teachers_window_and_json_dash_prints_the_result(tmp_path):
    """--length 8 is shorter than the teacher's default future window, which BPTT does not have; a bare
    yes/no option is true; --json - prints the JSON alone."""
    argv = [*tiny_args("bptt"), "--task", "parity", "--method", "bptt", "--length", "8", "--length-generalisation"]
    done = smtrnn_cli("train", *argv, "--out", tmp_path / "run", "--json", "-", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["method"] == "bptt" and set(result["generalisation"]) == {"2", "4", "8"}
    assert not (tmp_path / "-").exists()


def test_help_explains_every_option_and_the_version(tmp_path):
    train = " ".join(smtrnn_cli("train", "--help").stdout.split())
    for text in (
        "--out OUT run directory (required",
        "--task TASK what to learn; one of brown, copy,",
        "one of smt, dmt, smt+dmt, bptt, tbptt, teacher (default: smt+dmt)",
        "one of tanh, mlp, gru, lstm, transformer",
        "--dmt-steps STEPS optimiser steps of this phase; added to --steps",
        "--length-generalisation [yes|no]",
    ):
        assert text in train, text
    assert "--data NEW_PATH the run's data file at a new place" in " ".join(smtrnn_cli("eval", "--help").stdout.split())
    version = smtrnn_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("smtrnn ")


def test_a_phase_logged_once_shows_on_the_plot(tmp_path):
    out = tmp_path / "run"
    assert smtrnn_cli("train", *tiny_args(), "--steps", 1, "--dmt-steps", 1, "--out", out).returncode == 0
    assert smtrnn_cli("plot", out, "--out", tmp_path / "curves.png").returncode == 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    figure = draw([out])
    try:
        lines = [line for axis in figure.axes for line in axis.get_lines() if len(line.get_xdata()) == 1]
        assert lines and all(line.get_marker() not in (None, "None", "") for line in lines)
    finally:
        plt.close(figure)


@pytest.mark.parametrize(
    "losses",
    [[2.1, 2.0, 1.9, 1.8], [0.5, 0.2, -0.05, -0.1], [3.0, 1.0, -1.0, -3.0]],
    ids=["within a decade", "crossing zero", "many decades"],
)
def test_the_loss_axis_has_labelled_ticks_within_the_curves(losses, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"phase": "smt", "step": 10 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    figure = draw([run])
    try:
        figure.canvas.draw()
        loss_axis = figure.axes[0]
        low, high = min(losses), max(losses)
        labelled = [
            tick.get_loc()
            for tick in [*loss_axis.yaxis.get_major_ticks(), *loss_axis.yaxis.get_minor_ticks()]
            if tick.label1.get_visible() and tick.label1.get_text() and low <= tick.get_loc() <= high
        ]
        assert len(labelled) >= 2, labelled
    finally:
        plt.close(figure)
