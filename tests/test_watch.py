"""Watching a run: TensorBoard scalars alongside metrics.jsonl, and `smtrnn plot`."""

from __future__ import annotations

import pytest

from smtrnn import metrics
from smtrnn.cli import main
from smtrnn.errors import UserError
from smtrnn.plot import curves, plot_runs
from smtrnn.run import run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from conftest import make_tiny_config

    run_dir = tmp_path_factory.mktemp("run")
    run(make_tiny_config(), run_dir, progress=False, tensorboard=True)
    return run_dir


def test_tensorboard_scalars_equal_the_logged_metrics(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished / "tensorboard"))
    events.Reload()
    logged = [record for record in metrics.read(finished) if record["phase"] == "dmt"]
    scalars = events.Scalars("dmt/loss")
    assert [event.step for event in scalars] == [record["step"] for record in logged]
    assert [event.value for event in scalars] == pytest.approx([record["loss"] for record in logged], rel=1e-6)
    assert {"smt/loss", "smt/teacher_acc", "dmt/rollout_acc"} <= set(events.Tags()["scalars"])


def test_curves_put_dmt_after_smt(finished):
    series, boundaries = curves(finished)
    assert boundaries == [6]  # SMT's six steps, then DMT's
    assert [step for step, _ in series["dmt loss"]] == [7, 8, 9, 10]
    assert "smt teacher_acc" in series and "dmt rollout_acc" in series


def test_plot_writes_a_png_of_several_runs(finished, tmp_path):
    out = plot_runs([finished, finished], tmp_path / "figs" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_writes_the_format_its_suffix_names_and_png_without_one(finished, tmp_path, capsys):
    assert plot_runs([finished], tmp_path / "curves") == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_runs([finished], tmp_path / "curves.pdf").read_bytes()[:4] == b"%PDF"
    assert main(["plot", str(finished), "--out", str(tmp_path / "curves.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".png" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "curves.txt").exists()


def test_plot_of_a_directory_without_metrics_is_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        plot_runs([tmp_path], tmp_path / "x.png")
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.jsonl" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_cli_plot(finished, tmp_path, capsys):
    assert main(["plot", str(finished), "--out", str(tmp_path / "c.png")]) in (0, None)
    assert (tmp_path / "c.png").exists() and "wrote" in capsys.readouterr().out
