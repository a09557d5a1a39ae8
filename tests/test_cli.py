"""The command line: every user mistake is one line on stderr and exit code 2 (no traceback); a
user's own task class in a file trains end to end; options map onto the config dataclasses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, assert_user_error
from smtrnn.cli import build_parser, config_from_args, main

SRC = str(Path(__file__).resolve().parents[1] / "src")
USER_TASK = '''
import torch


class Echo:
    """Label each position with the token before it (y_t = x_{t-1}); nothing to import from smtrnn."""

    vocab_size = 3
    num_classes = 3

    def __init__(self, shift: int = 1):
        self.shift = shift

    def sample(self, batch_size, length, generator):
        x = torch.randint(0, 3, (batch_size, length), generator=generator)
        y = torch.full_like(x, -1)
        y[:, self.shift:] = x[:, :-self.shift]
        return {"x": x, "y": y}
'''


@pytest.fixture
def user_task(tmp_path) -> Path:
    path = tmp_path / "my_task.py"
    path.write_text(USER_TASK)
    return path


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--task", "no-such-task"], "unknown task"),
        (["--cell", "elman"], "unknown cell"),
        (["--method", "backprop"], "unknown method"),
        (["--length=-4"], "length"),
        (["--future", "9"], "future"),  # the tiny length is 8
        (["--cell", "transformer", "--memory-size", "10", "--memory-tokens", "4"], "divisible"),
        (["--cell", "lstm", "--memory-size", "7"], "even"),
        (["--task", "path/missing.py:Cls"], "not found"),
        (["--method", "dmt"], "--init"),
        (["--steps", "-1"], "steps"),
        (["--smt-detach-target", "maybe"], "maybe"),
        (["--no-such-option", "1"], "no-such-option"),
        (["--steps", "three"], "three"),
        (["--task-option", "novalue"], "KEY=VALUE"),
        (["--task", "retrieval", "--task-option", "values=1"], "values"),
        (["--task", "retrieval", "--task-option", "colour=3"], "colour"),
    ],
)
def test_train_mistakes_are_one_line_errors(argv, fragment, tmp_path, capsys):
    code = main(["train", *TINY, "--out", str(tmp_path / "run"), *argv])
    assert_user_error(code, capsys, fragment)


def test_user_task_file_without_that_class(user_task, tmp_path, capsys):
    code = main(["train", *TINY, "--task", f"{user_task}:NoSuchClass", "--out", str(tmp_path / "run")])
    assert_user_error(code, capsys, "NoSuchClass")


@pytest.mark.parametrize(
    "source, named",
    [
        ("import torch\nvalue = 1 / 0\n", "ZeroDivisionError"),
        ("def (:\n", "SyntaxError"),
        ('raise RuntimeError("first line\\nsecond line")\n', "RuntimeError"),  # still one line
    ],
)
def test_user_task_file_that_fails_to_import(tmp_path, capsys, source, named):
    broken = tmp_path / "broken.py"
    broken.write_text(source)
    code = main(["train", *TINY, "--task", f"{broken}:Echo", "--out", str(tmp_path / "run")])
    assert_user_error(code, capsys, named)


def test_unwritable_out_directory(tmp_path, capsys):
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    code = main(["train", *TINY, "--task", "parity", "--method", "bptt", "--out", str(regular / "run")])
    assert_user_error(code, capsys, "cannot write")
    assert regular.read_text() == "not a directory"


def test_missing_run_directory_for_eval(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "nowhere")])
    assert_user_error(code, capsys, "nowhere")
    (tmp_path / "empty").mkdir()
    code = main(["eval", str(tmp_path / "empty")])
    assert_user_error(code, capsys)


def test_missing_command_and_out(capsys):
    assert_user_error(main([]), capsys)
    assert_user_error(main(["train", *TINY]), capsys, "--out")
    assert_user_error(main(["fly"]), capsys)


@pytest.mark.parametrize("method", ["smt+dmt", "bptt"])
def test_user_task_class_trains_end_to_end(method, user_task, tmp_path, capsys):
    out, result_file = tmp_path / "run", tmp_path / "result.json"
    code = main(
        [
            "train",
            *TINY,
            "--method",
            method,
            "--task",
            f"{user_task}:Echo",
            "--task-option",
            "shift=2",
            "--out",
            str(out),
            "--json",
            str(result_file),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""  # --quiet: no progress bar, no warnings
    result = json.loads(result_file.read_text())
    assert result["method"] == method and result["steps"] == (3 + 2 if method == "smt+dmt" else 3)
    assert 0 <= result["accuracy"] <= 1
    assert "accuracy" in captured.out
    saved = json.loads((out / "config.json").read_text())
    assert saved["task"] == f"{user_task}:Echo" and saved["task_options"] == {"shift": 2}
    assert (out / "checkpoints" / "latest").exists()
    # the run evaluates from its directory, also at another length
    code = main(["eval", str(out), "--batches", "1", "--length", "12", "--json", str(tmp_path / "eval.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["length"] == 12 and evaluation["trained_length"] == 8
    assert_user_error(main(["eval", str(out), "--length", "0"]), capsys, "length")


def test_options_map_onto_the_config_sections():
    args = build_parser().parse_args(
        [
            "train",
            "--out",
            "x",
            "--task",
            "copy",
            "--length",
            "12",
            "--cell",
            "gru",
            "--memory-size",
            "24",
            "--smt-c-dyn",
            "0.25",
            "--smt-detach-target",
            "yes",
            "--dmt-every",
            "4",
            "--dmt-steps",
            "7",
            "--dmt-lr",
            "5e-5",
            "--bptt-truncate",
            "6",
            "--lr",
            "0.002",
            "--task-option",
            "reverse=true",
            "--task-option",
            "name=abc",
        ]
    )
    config = config_from_args(args)
    assert (config.task, config.length, config.model.cell, config.model.memory_size) == ("copy", 12, "gru", 24)
    assert config.smt.c_dyn == 0.25 and config.smt.detach_target is True
    assert config.dmt.every == 4 and config.dmt_train.steps == 7 and config.dmt_train.lr == 5e-5
    assert config.bptt.truncate == 6 and config.train.lr == 0.002
    assert config.task_options == {"reverse": True, "name": "abc"}
    # what was not given keeps the dataclass default
    from smtrnn.run import RunConfig

    default = RunConfig()
    assert config.train.steps == default.train.steps and config.smt.c_pred == default.smt.c_pred


def test_python_dash_m_help_and_exit_codes(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "smtrnn", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage: smtrnn" in done.stdout and "train" in done.stdout and "eval" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "smtrnn", "train", "--cell", "elman", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("smtrnn: error:") and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "elman" in bad.stderr


def test_train_help_lists_every_section(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--memory-size",
        "--steps",
        "--smt-c-dyn",
        "--smt-detach-target",
        "--dmt-every",
        "--dmt-steps",
        "--bptt-truncate",
        "--task-option",
        "--init",
    ):
        assert option in out, option


def test_demo_quick_writes_a_row_per_method_and_seed(tmp_path, capsys):
    out = tmp_path / "demo.json"
    code = main(
        [
            "demo",
            "--quick",
            "--jobs",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "runs"),
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "demo.md"),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert {"task", "length", "rows"} <= set(result)
    assert [(row["method"], row["seed"]) for row in result["rows"]] == [("smt+dmt", 0), ("bptt", 0)]
    for row in result["rows"]:
        assert {"method", "cell", "accuracy", "seconds", "sequential_depth", "seed"} <= set(row)
    depth = {row["method"]: row["sequential_depth"] for row in result["rows"]}
    assert depth == {"bptt": 16, "smt+dmt": 16}  # quick: T=16, and the horizon K=16 is cut to T
    assert "| bptt" in capsys.readouterr().out and "seed" in (tmp_path / "demo.md").read_text()
