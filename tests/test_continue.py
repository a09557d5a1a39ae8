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


@pytest.mark.parametrize("bad", ["missing file", "empty file", "floats", "label out of range", "corrupt"])
def test_a_bad_data_file_is_one_line_and_touches_no_run(tmp_path, capsys, tiny_config, bad):
    """Own data (text:, tokens:, sequences:) that cannot be used: exit 2, one line naming the file, and an
    existing run given as --out keeps its config and checkpoints byte for byte."""
    import numpy as np

    existing = tmp_path / "run"
    run(tiny_config("bptt"), existing, progress=False)
    before = {path: path.read_bytes() for path in existing.rglob("*") if path.is_file()}
    data = tmp_path / ("data.npz" if bad in ("label out of range", "corrupt") else "data.npy")
    if bad == "empty file":
        data = tmp_path / "empty.txt"
        data.write_bytes(b"")
    elif bad == "floats":
        np.save(data, np.linspace(0, 1, 100))
    elif bad == "label out of range":
        np.savez(data, x=np.zeros((10, 12), dtype=np.int64), y=np.full((10, 12), 7))
    elif bad == "corrupt":
        data.write_bytes(b"not a zip file")
    form = {".txt": "text", ".npy": "tokens", ".npz": "sequences"}[data.suffix]
    spec = f"{form}:{data}" if bad != "missing file" else f"text:{tmp_path / 'nowhere.txt'}"
    options = ["--task-option", "classes=3"] if bad == "label out of range" else []
    code = main(
        ["train", "--task", spec, *options, "--length", "32", "--steps", "1", "--quiet", "--out", str(existing)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("smtrnn: error:"), err
    assert ("nowhere.txt" if bad == "missing file" else data.name) in err[0]
    assert {path: path.read_bytes() for path in existing.rglob("*") if path.is_file()} == before
