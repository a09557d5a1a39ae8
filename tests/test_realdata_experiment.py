"""`smtrnn realdata`: the smoke preset through the library and the CLI on tiny slices of MNIST, Quick,
Draw! and Brown gives rows, curves, figures and a page; the curves are the RNN alone on held-out
data; a re-run trains nothing; bad input is one line and exit 2."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import assert_user_error  # the one-line error contract, shared with the other commands
from smtrnn.cli import main
from smtrnn.errors import UserError
from smtrnn.evaluate import evaluate_rnn
from smtrnn.methods import SMTConfig
from smtrnn.realdata import TEXT_PROMPT, customise, preset, realdata, write_outputs
from smtrnn.run import load_run

REQUIRED = {
    "dataset",
    "cell",
    "method",
    "bits_per_byte",
    "tokens",
    "seconds",
    "teacher_bits_per_byte",
    "sequential_depth",
    "sequential_compute",
    "parameters",
    "steps",
    "curve",
}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke preset (3 datasets x mlp x bptt, smt+dmt), trained once, with its report written."""
    folder = tmp_path_factory.mktemp("realdata")
    chosen = preset("smoke")
    result = realdata(chosen, folder / "runs", jobs=1, progress=False)
    write_outputs(
        chosen,
        result,
        folder / "runs",
        "smtrnn realdata --preset smoke",
        "a test machine",
        json_path=str(folder / "realdata.json"),
        markdown_path=str(folder / "docs" / "realdata.md"),
        figures_dir=str(folder / "docs" / "figures"),
    )
    return folder, chosen, result


def test_rows_compare_methods_on_equal_terms(smoke):
    _, chosen, result = smoke
    rows = result["rows"]
    assert [(r["dataset"], r["method"]) for r in rows] == [
        (d, m) for d in ("mnist", "quickdraw", "brown") for m in ("bptt", "smt+dmt")
    ]
    total_steps = chosen.smt_steps + chosen.dmt_steps
    for bptt, smt in zip(rows[::2], rows[1::2]):
        assert REQUIRED <= set(bptt) and REQUIRED <= set(smt)
        assert bptt["steps"] == {"bptt": total_steps}
        assert smt["steps"] == {"smt": chosen.smt_steps, "dmt": chosen.dmt_steps}
        assert bptt["parameters"] == smt["parameters"] and bptt["crop_length"] == smt["crop_length"] == 17
        assert bptt["batch_size"] == smt["batch_size"] == chosen.batch_size
        assert bptt["tokens"] == total_steps * 4 * 17  # DMT reads the first Tc = 16 tokens of each crop
        assert smt["tokens"] == chosen.smt_steps * 4 * 17 + chosen.dmt_steps * 4 * 16
        assert bptt["sequential_compute"] == total_steps * 17  # a BPTT step: the crop; DMT: Td = 8
        horizon = min(SMTConfig().horizon, 16)  # an SMT step: K cell applications in series (at most Tc)
        assert smt["sequential_compute"] == chosen.smt_steps * horizon + chosen.dmt_steps * 8
        assert bptt["teacher_bits_per_byte"] is None and 0 < smt["teacher_bits_per_byte"] < 20
        for row in (bptt, smt):
            assert 0 < row["bits_per_byte"] < 20 and row["seconds"] > 0 and row["note"] is None
            evaluated = [(point["phase"], point["step"]) for point in row["curve"]]  # smoke: eval_every 1
            assert evaluated == [(phase, step) for phase, steps in row["steps"].items() for step in range(1, steps + 1)]
            tokens = [point["tokens"] for point in row["curve"]]
            assert tokens == sorted(tokens) and tokens[-1] == row["tokens"]
            assert row["curve"][-1]["sequential"] == row["sequential_compute"]
    assert rows[4]["sample_text"].startswith(TEXT_PROMPT) and rows[0]["sample_text"] is None


def test_curves_are_the_rnn_alone_on_held_out_data(smoke):
    folder, _, result = smoke
    for row in result["rows"][:2]:
        config, task, models = load_run(folder / "runs" / row["dataset"] / row["cell"] / row["method"])
        alone = evaluate_rnn(models.rnn, task, config.length, 2, 64, config.seed)  # evaluate_rnn reads the test split
        assert row["curve"][-1]["bits_per_byte"] == pytest.approx(alone["bits_per_token"], rel=1e-5)


def test_report_json_and_figures(smoke):
    folder, _, result = smoke
    saved = json.loads((folder / "realdata.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert saved["command"] == "smtrnn realdata --preset smoke" and saved["preset"]["smt_steps"] == 3
    page = (folder / "docs" / "realdata.md").read_text()
    assert "| dataset | cell | method | bits/byte (RNN alone) |" in page and page.count("| mlp | smt+dmt |") == 3
    for name in ("mnist-curves", "mnist-samples", "quickdraw-curves", "quickdraw-samples", "brown-curves"):
        assert f"(figures/realdata-{name}.png)" in page
        assert (folder / "docs" / "figures" / f"realdata-{name}.png").read_bytes().startswith(PNG)
    assert not (folder / "docs" / "figures" / "realdata-brown-samples.png").exists()
    assert page.count("```text\n" + TEXT_PROMPT) == 2 and "## Notes" in page and "a test machine" in page


def test_a_second_run_trains_nothing_and_a_changed_config_is_refused(smoke):
    folder, chosen, result = smoke
    results = sorted((folder / "runs").glob("*/*/*/result.json"))
    stamps = [path.stat().st_mtime_ns for path in results]
    again = realdata(chosen, folder / "runs", jobs=1, progress=False)
    assert (again["trained"], again["reused"]) == (0, 6) and again["rows"] == result["rows"]
    assert [path.stat().st_mtime_ns for path in results] == stamps
    with pytest.raises(UserError, match="different config"):
        realdata(replace(chosen, smt_steps=4), folder / "runs", jobs=1, progress=False)


def test_cli_runs_in_two_processes(tmp_path, capsys):
    code = main(
        [
            "realdata",
            "--preset",
            "smoke",
            "--datasets",
            "brown",
            "--methods",
            "bptt,smt+dmt",
            "--jobs",
            "2",
            "--out",
            str(tmp_path / "runs"),
            "--json",
            str(tmp_path / "rows.json"),
            "--markdown",
            str(tmp_path / "page.md"),
            "--figures",
            str(tmp_path / "figures"),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [(row["dataset"], row["method"]) for row in rows] == [("brown", "bptt"), ("brown", "smt+dmt")]
    assert (tmp_path / "figures" / "realdata-brown-curves.png").exists()
    assert "## brown" in (tmp_path / "page.md").read_text()
    assert "bits/byte" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--datasets", "cifar"], "unknown dataset 'cifar'"),
        (["--methods", "smt+bptt"], "unknown method"),
        (["--cells", "mlp,mlp"], "twice"),
        (["--jobs", "0"], "jobs"),
        (["--preset", "huge"], "unknown preset"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(arguments, fragment, tmp_path, capsys):
    assert_user_error(main(["realdata", "--preset", "smoke", "--out", str(tmp_path), *arguments]), capsys, fragment)


def test_customise_keeps_the_plan_of_each_dataset():
    chosen = customise(preset("cpu"), datasets=["brown"], methods=["bptt"])
    assert list(chosen.datasets) == ["brown"] and chosen.methods == ["bptt"]
    assert chosen.datasets["brown"].context == preset("cpu").datasets["brown"].context


def test_steps_that_would_cut_a_curve_short_are_refused(tmp_path):
    with pytest.raises(UserError, match="multiples of eval_every"):
        realdata(replace(preset("smoke"), eval_every=2), tmp_path, progress=False)  # 3 SMT steps
