"""`smtrnn compare`: the smoke grid runs through the API and the CLI into rows, markdown and one
figure per task; a re-run trains nothing; two worker processes give the rows of one; a diverged run
is a row; length generalisation and the memory diagnostics measure what they claim."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

import smtrnn.compare as compare_module
import smtrnn.run as run_module
import smtrnn.sweep as sweep_module
from conftest import assert_user_error  # the one-line error contract, shared with the other commands
from smtrnn.cli import main
from smtrnn.compare import Point, compare, customise, preset
from smtrnn.errors import UserError
from smtrnn.evaluate import (
    EVAL_SEED_OFFSET,
    effective_rank,
    length_generalisation,
    mean_pairwise_distance,
    memory_diagnostics,
)
from smtrnn.models import ModelConfig, Models
from smtrnn.report import breaks_at, figures, markdown
from smtrnn.tasks.synthetic import Parity

REQUIRED = {
    "task",
    "cell",
    "method",
    "length",
    "seed",
    "accuracy",
    "seconds",
    "steps",
    "chance",
    "teacher_accuracy",
    "readout_accuracy",
    "one_step_accuracy",
    "loss",
    "sequential_depth",
    "rnn_effective_rank",
    "teacher_effective_rank",
    "drift",
    "relative_drift",
    "generalisation",
    "note",
}
PNG = b"\x89PNG\r\n\x1a\n"


def without_time(rows: list[dict]) -> list[dict]:
    """Rows less their wall time, the one field two identical runs may differ in."""
    return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke grid (2 tasks x tanh x bptt, smt+dmt x T=16 x seed 0), trained once in this process."""
    out = tmp_path_factory.mktemp("compare") / "runs"
    return out, compare(preset("smoke"), out, jobs=1, progress=False)


def test_smoke_grid_rows_report_and_figures(smoke, tmp_path):
    out, result = smoke
    rows = result["rows"]
    assert [(r["task"], r["method"]) for r in rows] == [
        ("retrieval", "bptt"),
        ("retrieval", "smt+dmt"),
        ("parity", "bptt"),
        ("parity", "smt+dmt"),
    ]
    assert json.loads((out / "results.json").read_text()) == rows
    for row in rows:
        assert REQUIRED <= set(row)
        assert 0 <= row["accuracy"] <= 1 and row["steps"] == 6 and row["note"] is None
        assert set(row["generalisation"]) == {"2", "4", "8"}
        assert (out / row["task"] / "tanh" / row["method"] / "T16" / "seed0" / "result.json").exists()
        trains_teacher = row["method"] == "smt+dmt"
        assert (row["teacher_accuracy"] is not None) == trains_teacher == (row["drift"] is not None)
        assert (row["one_step_accuracy"] is not None) == trains_teacher == (row["readout_accuracy"] is not None)
        assert row["sequential_depth"] == (4 if trains_teacher else 16)  # SMT's horizon K = 4; BPTT: T
    page = markdown(result, "smtrnn compare --preset smoke", "a test machine", "figures")
    assert page.count("| cell | method | T=16 |") == 2 and "## retrieval (values=4)" in page and "## parity" in page
    assert "| task | cell | T | teacher | readout on m*_t | one step | RNN alone | breaks at |" in page
    assert "Length generalisation" in page and "eff. rank RNN" in page and "(figures/parity.png)" in page
    paths = figures(rows, tmp_path / "figures")
    assert sorted(p.name for p in paths) == ["parity.png", "retrieval.png"]
    assert all(p.read_bytes().startswith(PNG) for p in paths)


@pytest.mark.parametrize(
    "teacher, readout, one_step, alone, expected",
    [
        (1.0, 1.0, 1.0, 0.95, "solved"),  # 0.94 of the way from chance 0.2 to 1
        (0.5, 0.5, 0.5, 0.45, "the teacher"),
        (1.0, 0.4, 0.4, 0.4, "the readout"),
        (0.8, 0.8, 0.2, 0.2, "one step"),  # modular at T=64: teacher 0.77, one step at chance
        (1.0, 1.0, 1.0, 0.2, "the rollout"),  # retrieval at T=256: every rung but the RNN's own rollout
        (1.0, 1.0, None, 0.2, "–"),  # BPTT rows have no rungs
    ],
)
def test_breaks_at_names_the_rung_that_loses_most(teacher, readout, one_step, alone, expected):
    row = {"chance": 0.2, "teacher_accuracy": teacher, "readout_accuracy": readout, "one_step_accuracy": one_step}
    rows = [dict(row, accuracy=alone - 0.01), dict(row, accuracy=alone + 0.01)]  # the mean over seeds is used
    assert breaks_at(rows) == expected


def test_rerun_trains_nothing(smoke, monkeypatch):
    out, first = smoke
    results = sorted(out.glob("*/*/*/*/*/result.json"))
    stamps = [path.stat().st_mtime_ns for path in results]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(sweep_module, "run", no_training)
    again = compare(preset("smoke"), out, jobs=1, progress=False)
    assert (again["trained"], again["reused"]) == (0, 4) and again["rows"] == first["rows"]
    assert len(results) == 4 and [path.stat().st_mtime_ns for path in results] == stamps


def test_a_point_without_result_resumes_from_its_checkpoint(smoke):
    """As after a kill between the last checkpoint and result.json: run() resumes, nothing is lost."""
    out, first = smoke
    (out / "parity" / "tanh" / "smt+dmt" / "T16" / "seed0" / "result.json").unlink()
    again = compare(preset("smoke"), out, jobs=1, progress=False)
    assert (again["trained"], again["reused"]) == (1, 3)
    assert without_time(again["rows"]) == without_time(first["rows"])


def test_same_out_with_another_config_is_refused_before_training(smoke):
    out, _ = smoke
    with pytest.raises(UserError, match="different config"):
        compare(customise(preset("smoke"), steps=8), out, jobs=1, progress=False)


def test_two_jobs_give_the_rows_of_one(smoke, tmp_path):
    _, one = smoke
    two = compare(preset("smoke"), tmp_path / "runs", jobs=2, progress=False)
    assert without_time(two["rows"]) == without_time(one["rows"])


def test_a_diverged_run_is_a_row_and_is_not_retried(tmp_path, monkeypatch):
    grid = customise(preset("smoke"), tasks=["parity"], methods=["bptt"])

    def nan_loss(models, batch, config, step=0):
        return models.rnn.cell.initial.sum() * float("nan"), {}

    monkeypatch.setattr(run_module, "bptt_loss", nan_loss)  # the real run, diverging at its first step
    [row] = compare(grid, tmp_path, jobs=1, progress=False)["rows"]
    assert row["accuracy"] is None and row["note"].startswith("diverged") and row["chance"] == 0.5
    monkeypatch.setattr(sweep_module, "run", None)  # a second attempt would crash
    assert compare(grid, tmp_path, jobs=1, progress=False)["rows"] == [row]
    assert "diverged (1)" in markdown(
        {"rows": [row], "wall_seconds": 1.0, "trained": 1, "reused": 0, "jobs": 1, "threads_per_job": 1},
        "smtrnn compare",
    )


def test_cli_compare_writes_rows_markdown_and_figures(tmp_path, capsys):
    docs = tmp_path / "docs"
    code = main(
        [
            "compare",
            "--preset",
            "smoke",
            "--tasks",
            "parity",
            "--methods",
            "bptt,smt+dmt",
            "--lengths",
            "12",
            "--no-generalisation",
            "--out",
            str(tmp_path / "runs"),
            "--json",
            str(tmp_path / "rows.json"),
            "--markdown",
            str(docs / "compare.md"),
            "--figures",
            str(docs / "figures"),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["method"], r["length"], r["generalisation"]) for r in rows] == [
        ("bptt", 12, None),
        ("smt+dmt", 12, None),
    ]
    page = (docs / "compare.md").read_text()
    assert "Command: `smtrnn compare --preset smoke --tasks parity" in page and "(figures/parity.png)" in page
    assert "Length generalisation" not in page
    assert (docs / "figures" / "parity.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--preset", "gpu"], "unknown preset"),
        (["--methods", "bptt,backprop"], "backprop"),
        (["--methods", "dmt"], "unknown method"),
        (["--lengths", "0"], "length must be positive"),
        (["--lengths", "16,,32"], "--lengths"),
        (["--seeds", "one"], "--seeds"),
        (["--tasks", "no-such-task"], "unknown task"),
        (["--cells", "elman"], "unknown cell"),
        (["--tasks", "kv", "--lengths", "4"], "cannot hold"),
        (["--steps", "4", "--dmt-steps", "4"], "dmt steps"),
        (["--jobs", "0"], "jobs"),
    ],
)
def test_compare_mistakes_are_one_line_errors(argv, fragment, tmp_path, capsys):
    code = main(["compare", "--preset", "smoke", "--out", str(tmp_path / "runs"), "--quiet", *argv])
    assert_user_error(code, capsys, fragment)
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_every_method_gets_the_same_steps_and_model():
    grid = preset("cpu")
    for length in grid.lengths:
        configs = {m: grid.run_config(Point("retrieval", "gru", m, length, 0)) for m in ("bptt", "tbptt", "smt+dmt")}
        smt = configs["smt+dmt"]
        assert smt.dmt_train.steps > 0
        for config in configs.values():
            assert asdict(config.model) == asdict(smt.model) and config.length_generalisation
            assert compare_module.planned_steps(config) == smt.train.steps + smt.dmt_train.steps
    overridden = customise(grid, steps=100).budget_at(512)  # the DMT share keeps the budget's fraction
    budget = grid.budget(512)
    assert overridden.steps == 100 and overridden.dmt_steps == round(100 * budget.dmt_steps / budget.steps)


def test_effective_rank():
    generator = torch.Generator().manual_seed(0)
    assert effective_rank(
        torch.randn(400, 1, generator=generator) * torch.randn(1, 12, generator=generator)
    ) == pytest.approx(1.0, abs=1e-3)
    isotropic = effective_rank(torch.randn(4000, 12, generator=generator))
    assert 11.5 < isotropic <= 12
    assert effective_rank(torch.full((50, 6), 3.0)) == 0.0  # every memory the same: no spread at all
    assert mean_pairwise_distance(torch.eye(3)) == pytest.approx(2**0.5)


class ShortParity(Parity):
    """Parity that refuses sequences longer than 40: its 4T and 8T are not evaluated."""

    def check_length(self, length):
        super().check_length(length)
        if length > 40:
            raise UserError(f"too long: {length}")


def tiny_models(task) -> Models:
    torch.manual_seed(0)
    config = ModelConfig(
        memory_size=8, embed_dim=4, readout_hidden=8, teacher_width=8, teacher_layers=1, teacher_heads=2, future=2
    )
    return Models(config, task.vocab_size, task.num_classes)


def test_length_generalisation_per_factor():
    task = ShortParity()
    models = tiny_models(task)
    with_teacher = length_generalisation(models, task, 12)
    assert set(with_teacher) == {2, 4, 8} and with_teacher[4] is None and with_teacher[8] is None
    assert with_teacher[2]["length"] == 24 and 0 <= with_teacher[2]["rnn"] <= 1 and 0 <= with_teacher[2]["teacher"] <= 1
    rnn_alone = length_generalisation(models.rnn, task, 10, factors=(3,))
    assert set(rnn_alone) == {3} and rnn_alone[3]["teacher"] is None
    assert rnn_alone[3]["rnn"] == length_generalisation(models, task, 10, factors=(3,))[3]["rnn"]


def test_memory_diagnostics_sides_and_relative_drift():
    task = Parity()
    models = tiny_models(task)
    both = memory_diagnostics(models, task, 12, batches=1, batch_size=4)
    rnn_only = memory_diagnostics(models.rnn, task, 12, batches=1, batch_size=4)
    assert set(rnn_only) == {"rnn_effective_rank", "rnn_pairwise_distance"}
    assert {key: both[key] for key in rnn_only} == rnn_only
    assert 0 < both["teacher_effective_rank"] <= 8 and both["drift"] > 0
    # relative drift is drift over the mean norm of the teacher's memories m*_1..m*_T
    x = task.sample(4, 12, torch.Generator().manual_seed(EVAL_SEED_OFFSET))["x"]  # the batch the diagnostics saw
    with torch.no_grad():
        norm = models.teacher.encode(x)[:, 1:].norm(dim=-1).mean().item()
    assert both["relative_drift"] == pytest.approx(both["drift"] / norm, rel=1e-5)


def test_report_only_trains_nothing_and_reports_the_finished_points(tmp_path, monkeypatch):
    grid = customise(preset("smoke"), tasks=["parity"], methods=["bptt"])
    first = compare(grid, tmp_path, jobs=1, progress=False)
    monkeypatch.setattr(sweep_module, "run", None)  # any training would crash
    wider = customise(grid, methods=["bptt", "smt+dmt"])
    partial = compare(wider, tmp_path, jobs=1, progress=False, train=False)
    assert partial["rows"] == first["rows"] and partial["planned"] == 2 and partial["trained"] == 0
    page = markdown(partial, "smtrnn compare --report-only")
    assert "1 of 2 runs finished" in page
