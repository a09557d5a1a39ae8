"""The command line: every user mistake is one line on stderr and exit code 2 (no traceback); a
user's own task class in a file trains end to end; options map onto the config dataclasses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from conftest import TINY, assert_user_error, tiny_args
from smtrnn.cli import build_parser, config_from_args, main
from smtrnn.config import RunConfig, field_help, set_field, unread_options
from smtrnn.methods import METHODS
from smtrnn.models import ModelConfig
from smtrnn.options import check_given, take_settings
from smtrnn.tasks import TASKS
from smtrnn.tasks.synthetic import Parity

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
        (["--smt-max-length=-1"], "--smt-max-length must be at least 0"),
        (["--no-such-option", "1"], "no-such-option"),
        (["--steps", "three"], "three"),
        (["--task-option", "novalue"], "KEY=VALUE"),
        (["--task", "retrieval", "--task-option", "values=1"], "values"),
        (["--task", "retrieval", "--task-option", "colour=3"], "colour"),
        (["--task", "retrieval", "--task-option", "values=1.5"], "values must be an integer"),
        (["--task-option", "=3"], "the key is empty"),
        # numbers out of range: a negative clip would turn every update into gradient ascent, a bad DMT
        # setting would fail with a traceback once SMT has trained
        (["--clip=-1"], "--clip must be at least 0"),
        (["--memory-size=-1"], "memory-size must be positive"),
        (["--lr=-0.1"], "learning rate must be positive"),
        (["--min-lr-ratio", "2"], "--min-lr-ratio must be at most 1"),
        (["--dmt-weight-decay=-1"], "--dmt-weight-decay must be at least 0"),
        (["--dmt-rollout=-1"], "--dmt-rollout must be at least 0"),
        (["--smt-horizon", "0"], "--smt-horizon must be at least 1"),
        (["--smt-uniformity-samples", "1"], "--smt-uniformity-samples must be at least 2"),
        (["--cell", "transformer", "--memory-tokens", "0"], "--memory-tokens must be at least 1"),
    ],
)
def test_train_mistakes_are_one_line_errors(argv, fragment, tmp_path, capsys):
    method = argv[argv.index("--method") + 1] if "--method" in argv else "smt+dmt"
    code = main(
        ["train", *tiny_args(method if method in METHODS else "smt+dmt"), "--out", str(tmp_path / "run"), *argv]
    )
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
    code = main(["train", *tiny_args("bptt"), "--task", "parity", "--method", "bptt", "--out", str(regular / "run")])
    assert_user_error(code, capsys, "cannot write")
    assert regular.read_text() == "not a directory"


def test_a_refused_run_says_only_its_error_not_the_settings_it_took(tmp_path, capsys):
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    out = str(regular / "run")
    assert_user_error(main(["train", *tiny_args(), "--task", "stack", "--length", "8", "--out", out]), capsys)


def test_out_must_name_a_run_directory_or_a_new_or_empty_one(tmp_path, capsys):
    assert_user_error(main(["train", *TINY, "--out", ""]), capsys, "--out is empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "paper.txt").write_text("mine")
    assert_user_error(main(["train", *TINY, "--out", str(tmp_path / "notes")]), capsys, "holds no smtrnn run")
    assert sorted(path.name for path in (tmp_path / "notes").iterdir()) == ["paper.txt"]
    assert_user_error(main(["train", *TINY, "--out", str(tmp_path / "notes" / "paper.txt")]), capsys, "is a file")
    (tmp_path / "empty").mkdir()
    assert main(["train", *TINY, "--out", str(tmp_path / "empty")]) == 0


def test_a_folder_that_is_not_a_run_is_named_as_such(tmp_path, capsys):
    assert_user_error(main(["eval", str(tmp_path)]), capsys, "not an smtrnn run directory")


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
            *tiny_args(method),
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
    if method == "smt+dmt":  # the rung ladder is printed, each rung with its score
        for rung in ("teacher", "readout", "one_step"):
            assert f"{rung}_bits_per_token: {evaluation[f'{rung}_bits_per_token']:.4f}" in captured.out
        # SMT's last checkpoint stays beside DMT's and scores as itself: the RNN before DMT
        assert main(["eval", str(out / "checkpoints" / "smt-00000003"), "--batches", "1"]) == 0
        captured = capsys.readouterr()
        assert "checkpoint: smt step 3\n" in captured.out and captured.err == ""  # not "in progress"
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
    assert config.train.lr == 0.002
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


def test_demo_smoke_prints_a_row_per_method_and_seed(tmp_path, capsys):
    out = tmp_path / "demo.json"
    code = main(
        ["experiment", "demo", "--preset", "smoke", "--quiet", "--out", str(tmp_path / "runs")]
        + ["--json", str(out), "--markdown", str(tmp_path / "demo.md")]
    )
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(row["method"], row["seed"]) for row in rows] == [("bptt", 0), ("smt+dmt", 0)]
    depth = {row["method"]: row["sequential_depth"] for row in rows}
    assert depth == {"bptt": 64, "smt+dmt": 4}  # BPTT: T; SMT: the smoke preset's horizon K
    assert "| bptt" in capsys.readouterr().out and "seed" in (tmp_path / "demo.md").read_text()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--cell", "tanh", "--cell-heads", "4"], "--cell-heads is read by the transformer cell, not by --cell tanh"),
        (["--cell", "transformer", "--embed-dim", "8"], "--embed-dim is read by the tanh, gru, lstm and mlp cells"),
        (["--method", "bptt", "--teacher-width", "8"], "--teacher-width sets the teacher, which --method bptt has not"),
        (["--method", "bptt", "--smt-horizon", "4"], "--smt-horizon is not read by --method bptt"),
        (["--method", "smt", "--dmt-steps", "4"], "--dmt-steps is not read by --method smt"),
        (["--method", "smt+dmt", "--bptt-truncate", "4"], "--bptt-truncate is not read by --method smt+dmt"),
        (["--smt-context", "4", "--smt-max-length", "4"], "--smt-max-length sets whole sequences, not the crops"),
    ],
)
def test_an_option_the_run_does_not_read_is_refused(argv, fragment, tmp_path, capsys):
    method = argv[argv.index("--method") + 1] if "--method" in argv else "smt+dmt"
    out = tmp_path / "run"
    assert_user_error(main(["train", *tiny_args(method), *argv, "--out", str(out)]), capsys, fragment)
    assert not out.exists()


def test_bptt_honours_truncate_and_ignores_the_teachers_window(tmp_path, capsys):
    """--bptt-truncate k on --method bptt trains in windows of k; a sequence shorter than the teacher's
    default future window is fine for a method without a teacher."""
    argv = ["train", *tiny_args("bptt"), "--task", "parity", "--method", "bptt", "--length", "8"]
    assert (
        main([*argv, "--bptt-truncate", "4", "--out", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")]) == 0
    )
    assert json.loads((tmp_path / "r.json").read_text())["sequential_depth"] == 4


def test_help_explains_every_option_and_lists_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for text in (
        "--out OUT run directory (required",
        "what to learn; one of brown, copy,",
        "one of smt, dmt, smt+dmt, bptt, tbptt, teacher",
        "one of tanh, mlp, gru, lstm, transformer",
        "added to --steps",
        "--smt-horizon HORIZON K: cell applications in series",
    ):
        assert text in out, text
    parser = build_parser()
    train = next(action for action in parser._actions if action.dest == "command").choices["train"]
    for action in train._actions:
        if action.help not in (None, "==SUPPRESS==") and action.dest not in ("help",):
            assert not action.help.startswith("(default"), f"{action.option_strings} has no explanation"


@dataclass
class _Commented:
    width: int = 4  # how wide
    depth: int = 2
    # what a field's own lines above it say
    # may take two lines
    rate: float = 0.1


def test_field_help_never_lends_one_field_the_comment_of_the_field_above():
    helps = field_help(_Commented)
    assert helps["width"] == "how wide"
    assert helps["depth"] == ""  # the comment on the line above belongs to width
    assert helps["rate"] == "what a field's own lines above it say may take two lines"
    model = field_help(ModelConfig)
    assert "grid" in model["memory_levels"] and "size" in model["memory_size"]


def test_yes_no_options_work_bare_negated_and_with_a_value():
    parse = lambda *argv: config_from_args(build_parser().parse_args(["train", "--out", "x", *argv]))
    assert parse("--length-generalisation").length_generalisation is True
    assert parse("--length-generalisation", "false").length_generalisation is False
    assert parse("--no-smt-horizon-detach").smt.horizon_detach is False
    assert parse("--smt-readout-grad").smt.readout_grad is True


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("smtrnn ")


class _Settled(Parity):
    """Parity with settings of its own, to test the mechanism apart from the built-in tasks' choices."""

    settings = {"model.future": 2, "smt.c_unif": 0.5, "dmt.readout_grad": True}


def test_a_task_brings_its_own_settings_under_the_options_the_user_gives(monkeypatch):
    monkeypatch.setitem(TASKS, "settled", _Settled)

    def train(*argv):
        args = build_parser().parse_args(["train", "--out", "x", "--task", "settled", *argv])
        config = config_from_args(args)
        return config, take_settings(config, args)

    config, note = train()
    assert (config.model.future, config.smt.c_unif) == (2, 0.5)
    assert note == (
        "settled trains with its own settings: --future 2, --smt-c-unif 0.5, --dmt-readout-grad true (give the option"
        " to choose otherwise)"  # a flag's value as the option takes it
    )
    assert config.dmt.readout_grad is True
    chosen, note = train("--future", "5")  # the user's option wins, the other setting stays
    assert (chosen.model.future, chosen.smt.c_unif) == (5, 0.5) and "--future" not in note
    default = RunConfig()
    bptt, note = train("--method", "bptt")  # BPTT reads neither: both stay at the defaults
    assert (bptt.model.future, bptt.smt.c_unif) == (default.model.future, default.smt.c_unif)
    assert (bptt.model.memory_levels, note) == (0, None)  # the method's own setting, taken silently
    fine_tune, note = train("--method", "dmt", "--init", "some-run")  # as the SMT run it starts from
    assert (fine_tune.model.future, fine_tune.dmt.readout_grad) == (2, True) and "--dmt-readout-grad true" in note


def test_dmt_fine_tunes_an_smt_run_of_a_task_with_model_settings(tmp_path, capsys):
    # stack's rotary codes: the fine-tune takes them as its SMT run did, so the models agree
    main(["train", "--task", "stack", "--method", "smt", *tiny_args("smt"), "--out", str(tmp_path / "smt")])
    main(
        ["train", "--task", "stack", "--method", "dmt", "--init", str(tmp_path / "smt"), *tiny_args("dmt")]
        + ["--out", str(tmp_path / "dmt")]
    )
    config = json.loads((tmp_path / "dmt" / "config.json").read_text())
    assert (config["model"]["teacher_positions"], config["dmt"]["readout_grad"]) == ("rotary", True)
    capsys.readouterr()
    other = ["--teacher-positions", "none", "--out", str(tmp_path / "other")]  # a model unlike the SMT run's
    code = main(
        ["train", "--task", "stack", "--method", "dmt", "--init", str(tmp_path / "smt"), *tiny_args("dmt"), *other]
    )
    assert_user_error(code, capsys, "trained with --teacher-positions rotary, this run asks for none")
    assert not (tmp_path / "other").exists()  # nothing written


def test_bptts_memory_is_continuous_unless_the_grid_is_asked_for():
    def levels(*argv):
        args = build_parser().parse_args(["train", "--out", "x", "--task", "retrieval", *argv])
        config = config_from_args(args)
        check_given(config, args)
        note = take_settings(config, args)
        return config.model.memory_levels, note

    assert levels() == (5, None)  # SMT's memory is on the grid
    assert levels("--method", "tbptt")[0] == 0
    assert levels("--method", "bptt", "--memory-levels", "5") == (5, None)  # the user's choice wins
    assert levels("--method", "bptt", "--cell", "lstm") == (5, None)  # the lstm cell has no grid to drop
    assert levels("--method", "dmt", "--init", "some-run") == (5, None)  # keeps that run's model


def test_smtrnn_train_names_the_settings_it_took_from_the_task(tmp_path, capsys):
    main(["train", "--task", "stack", "--length", "8", *tiny_args(), "--out", str(tmp_path / "run")])
    assert "stack trains with its own settings: --teacher-positions rotary" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["teacher_positions"] == "rotary"


def test_copy_and_stack_train_on_a_continuous_memory_and_retrieval_on_the_grid():
    def levels(task):
        args = build_parser().parse_args(["train", "--out", "x", "--task", task])
        config = config_from_args(args)
        note = take_settings(config, args) or ""
        return config.model.memory_levels, note

    for task in ("copy", "stack"):  # docs/results.md: the grid drops symbols of the queue or the stack
        task_levels, note = levels(task)
        assert task_levels == 0 and "--memory-levels 0" in note, task
    assert levels("retrieval") == (5, "") and levels("parity")[0] == 5  # the families the grid serves keep it


def test_key_value_trains_on_16_tokens_on_the_grid_with_either_method():
    run = partial(task_run, "kv")

    config, note = run("--length", "256")  # docs/kv-recipe.md: trained at 16, the RNN holds at 256
    assert (config.train_length, config.trained_length(), config.model.memory_levels) == (16, 16, 5)
    assert (config.train.steps, config.dmt_train.steps, config.smt.teacher_pull) == (8900, 4000, False)
    assert "--train-length 16" in note
    bptt, _ = run("--length", "64", "--method", "bptt")  # BPTT too, on the grid (its default is continuous)
    assert (bptt.train_length, bptt.model.memory_levels) == (16, 5)
    assert run("--length", "16")[0].train_length == 0  # no shorter than T: trained at T, as 16 would be
    assert run("--length", "12", "--future", "4")[0].train_length == 0
    wide, _ = run("--length", "64", "--task-option", "pairs=10")  # 21 tokens hold ten pairs: trained at T
    assert wide.train_length == 0
    assert run("--length", "64", "--train-length", "32")[0].train_length == 32  # the user's choice wins
    assert run("--length", "64", "--train-length", "0")[0].train_length == 0


def task_run(task, *options):
    """The config `smtrnn train --task TASK OPTIONS` trains with, and the note that names the task's settings."""
    args = build_parser().parse_args(["train", "--out", "x", "--task", task, *options])
    config = config_from_args(args)
    note = take_settings(config, args) or ""
    config.validate()
    return config, note


copy_run = partial(task_run, "copy")


def test_a_tasks_future_window_is_cut_to_a_shorter_sequence():
    def future(*options):
        config, note = copy_run(*options)
        return config.model.future, "--future" in note and note.split("--future ")[1].split(",")[0]

    assert future("--length", "64") == (32, "32")  # copy's own window: the whole string and the delimiter
    assert future("--length", "256") == (128, "128")  # follows the string (127 symbols)
    assert future("--length", "16") == (16, "16")  # cut to the sequence, and the note says so
    assert future("--length", "64", "--future", "8") == (8, False)  # the user's choice wins


def test_copys_teacher_width_and_decoder_positions_follow_the_string():
    def teacher(*options):
        config, note = copy_run(*options)
        return config.model.teacher_width, config.smt.decoder_positions, note

    for length in ("16", "64"):  # T=64's recipe up to T=64
        assert teacher("--length", length)[:2] == (64, 16), length
    width, positions, note = teacher("--length", "128")  # 63 symbols: a hidden state of 128
    assert (width, positions) == (128, 8) and "--teacher-width 128" in note and "--smt-decoder-positions 8" in note
    assert teacher("--length", "256")[:2] == (256, 4)  # 127 symbols; 4 windows of 128 tokens
    assert teacher("--length", "100")[:2] == (128, 10)  # 49 symbols, a window of 50, in steps of 64
    assert teacher("--length", "256", "--teacher-width", "96")[:2] == (96, 4)  # the user's choice wins
    assert teacher("--length", "256", "--smt-decoder-positions", "16")[:2] == (256, 16)


def test_every_built_in_tasks_settings_name_fields_a_run_reads():
    for name, cls in TASKS.items():
        for dotted, value in cls.settings.items():
            config = RunConfig(task=name)
            set_field(
                config, dotted, value(config.length) if callable(value) else value
            )  # a UserError for a field RunConfig lacks
            assert not unread_options(config, [dotted]), f"{name}: the default method never reads {dotted}"
            config.validate()
