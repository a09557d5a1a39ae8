"""Continuing a run with more steps, and commands that fail before training leave --out untouched."""

from __future__ import annotations

import json

import pytest

from smtrnn import checkpoint
from smtrnn.cli import main
from smtrnn.errors import UserError
from smtrnn.run import run


def logged_steps(run_dir, phase):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if record["phase"] == phase]


def test_a_larger_steps_continues_a_finished_run_from_its_last_checkpoint(tiny_config, tmp_path):
    run(tiny_config("bptt", steps=6), tmp_path, progress=False)
    before = (tmp_path / "metrics.jsonl").read_text()
    result = run(tiny_config("bptt", steps=9), tmp_path, progress=False)
    assert result["steps"] == 9
    assert checkpoint.latest_checkpoint(tmp_path).name == "bptt-00000009"
    assert (tmp_path / "metrics.jsonl").read_text().startswith(before)  # the first six steps are kept, not redone
    assert logged_steps(tmp_path, "bptt") == list(range(1, 10))
    assert checkpoint.read_json(tmp_path / "config.json")["train"]["steps"] == 9


def test_a_larger_dmt_steps_continues_dmt(tiny_config, tmp_path):
    run(tiny_config(), tmp_path, progress=False)
    result = run(tiny_config(dmt_steps=6), tmp_path, progress=False)
    assert result["steps"] == 12
    assert logged_steps(tmp_path, "smt") == list(range(1, 7))  # SMT is not rerun
    assert logged_steps(tmp_path, "dmt") == list(range(1, 7))


def test_smt_cannot_grow_once_dmt_has_started(tiny_config, tmp_path):
    run(tiny_config(), tmp_path, progress=False)
    with pytest.raises(UserError, match="SMT cannot be extended"):
        run(tiny_config(steps=8), tmp_path, progress=False)
    assert checkpoint.read_json(tmp_path / "config.json")["train"]["steps"] == 6  # untouched


@pytest.mark.parametrize("change", ["fewer steps", "another option", "steps and another option"])
def test_any_other_change_is_still_refused(tiny_config, tmp_path, change):
    run(tiny_config("bptt", steps=6), tmp_path, progress=False)
    config = tiny_config("bptt", steps=4 if change == "fewer steps" else 8)
    if change != "fewer steps":
        config.train.lr = 1e-4
    saved = (tmp_path / "config.json").read_bytes()
    with pytest.raises(UserError, match="different config"):
        run(config, tmp_path, progress=False)
    assert (tmp_path / "config.json").read_bytes() == saved and (tmp_path / "result.json").exists()


def test_nothing_changed_resumes_to_the_same_result(tiny_config, tmp_path):
    first = run(tiny_config("bptt"), tmp_path, progress=False)
    again = run(tiny_config("bptt"), tmp_path, progress=False)
    assert {k: v for k, v in first.items() if "seconds" not in k} == {
        k: v for k, v in again.items() if "seconds" not in k
    }


@pytest.mark.parametrize(
    "mistake",
    [
        ["--task", "retreival"],
        ["--task", "retrieval", "--task-option", "values=0"],
        ["--task", "retrieval", "--method", "dmt"],
        ["--task", "retrieval", "--cell", "lstn"],
    ],
    ids=["task typo", "bad task option", "dmt without init", "cell typo"],
)
def test_a_command_refused_before_training_writes_nothing(tmp_path, capsys, mistake):
    out = tmp_path / "run"
    code = main(["train", *mistake, "--length", "8", "--steps", "1", "--quiet", "--out", str(out)])
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    assert not out.exists()
