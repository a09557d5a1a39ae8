"""The horizon study's configs and its page, on the seconds-long smoke preset."""

from __future__ import annotations

import json

from smtrnn.cli import main
from smtrnn.horizon_study import BY_NAME, cpu_study, full_study, recipe
from smtrnn.run import RunConfig


def test_the_t128_recipe_is_the_library_default():
    """docs/horizon.md's T=128 recipe rows are `smtrnn train --task retrieval --length 128 --seed S`."""
    for seed in (0, 1, 2):
        assert recipe("tanh", 128, seed).to_dict() == RunConfig(task="retrieval", length=128, seed=seed).to_dict()


def test_variants_change_what_they_say():
    base = recipe("tanh", 64, 0)
    for name, expected in (
        (
            "paper",
            {
                ("smt", "horizon"): 1,
                ("model", "teacher_positions"): "sinusoid",
                ("smt", "teacher_delay"): 0,
                ("dmt_train", "batch_size"): 32,
            },
        ),
        ("K32", {("smt", "horizon"): 32}),
        ("no-dmt", {("train", "steps"): 1500}),
        ("bptt", {("train", "steps"): 1500}),
    ):
        config = recipe("tanh", 64, 0)
        BY_NAME[name].change(config)
        for (section, field), value in expected.items():
            assert getattr(getattr(config, section), field) == value, (name, section, field)
    assert BY_NAME["bptt"].change is not None and base.method == "smt+dmt"
    for study in (cpu_study(), full_study()):
        assert len(set(study.points)) == len(study.points) and study.seeds == [0, 1, 2]
        assert {cell for _, cell, _ in study.points} == {"tanh", "gru", "mlp", "transformer"}
        assert {length for _, _, length in study.points} == {64, 128, 256}
        for name, cell, length in study.points:  # every SMT point has its BPTT baseline
            assert BY_NAME[name].part != "scale" or ("recipe", cell, length) in study.points
    assert set(cpu_study().points) < set(full_study().points)


def test_smoke_study_page_and_rows(tmp_path):
    code = main(
        [
            "horizon",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(tmp_path / "runs"),
            "--json",
            str(tmp_path / "h.json"),
            "--markdown",
            str(tmp_path / "h.md"),
            "--figures",
            str(tmp_path / "figures"),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "h.json").read_text())
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(rows) == {"paper", "recipe", "bptt"}
    assert rows["bptt"]["sequential_depth"] == 16 and rows["paper"]["sequential_depth"] == 1
    assert rows["recipe"]["sequential_depth"] == 4  # the smoke preset's K
    for name in ("paper", "recipe"):  # the needle measurements of every SMT run
        assert [entry["lag"] for entry in rows[name]["probe"]] == [0, 1, 3, 8]
        assert len(rows[name]["error_curve"]) == 16 and len(rows[name]["stability"]["moduli"]) == 3
    page = (tmp_path / "h.md").read_text()
    assert "SMT->DMT, per seed" in page and "horizon-scale.png" in page
    assert (tmp_path / "figures" / "horizon-scale.png").exists()


def test_report_only_trains_nothing(tmp_path):
    out = tmp_path / "runs"
    empty = main(
        [
            "horizon",
            "--preset",
            "smoke",
            "--quiet",
            "--report-only",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "empty.json"),
        ]
    )
    assert empty == 0 and json.loads((tmp_path / "empty.json").read_text())["rows"] == []
    assert not out.exists() or not any(out.rglob("result.json"))
    main(["horizon", "--preset", "smoke", "--quiet", "--out", str(out), "--json", str(tmp_path / "all.json")])
    main(
        [
            "horizon",
            "--preset",
            "smoke",
            "--quiet",
            "--report-only",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "again.json"),
            "--markdown",
            str(tmp_path / "again.md"),
        ]
    )
    trained, again = (json.loads((tmp_path / name).read_text()) for name in ("all.json", "again.json"))
    assert again["rows"] == trained["rows"] and again["trained"] == 0 and again["planned"] == 3
    assert "planned runs had finished" not in (tmp_path / "again.md").read_text()
