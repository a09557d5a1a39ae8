"""A run directory stands on its own: export, generate and smtrnn.load need only the run (task.json), not
its data file; eval on a moved file says how to point at it; a changed file is refused on continue, the
same bytes at a new place accepted; what a run and an export write is readable by others."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys

from conftest import CLI_ENV, assert_refused, smtrnn_cli, tiny_args

TEXT = b"the cat sat on the mat; the dog sat on the log. " * 12
ARGS = [*tiny_args("bptt"), "--method", "bptt", "--steps", 4]


def train_on_text(tmp_path, name: str = "a.txt"):
    data, out = tmp_path / name, tmp_path / "run"
    data.write_bytes(TEXT)
    done = smtrnn_cli("train", *ARGS, "--task", f"text:{data}", "--out", out)
    assert done.returncode == 0, done.stderr
    return data, out


def test_a_run_keeps_working_after_its_data_file_moves(tmp_path):
    data, out = train_on_text(tmp_path)
    record = json.loads((out / "task.json").read_text())
    assert record["data"] == {"path": str(data), "size": len(TEXT), "sha256": hashlib.sha256(TEXT).hexdigest()}
    assert (record["vocab_size"], record["num_classes"], record["text"]) == (256, 256, True)
    moved = data.rename(tmp_path / "b.txt")

    assert smtrnn_cli("export", out, tmp_path / "exported").returncode == 0
    generated = smtrnn_cli("generate", out, "--prompt", "the ", "--steps", 5)
    assert generated.returncode == 0 and generated.stdout.startswith("the "), generated.stderr
    loaded = subprocess.run(
        [sys.executable, "-c", f"import smtrnn; print(smtrnn.load({str(out)!r}).decode([104, 105]))"],
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=300,
    )
    assert loaded.returncode == 0 and loaded.stdout == "hi\n", loaded.stderr

    # eval needs the held-out bytes: it names the file and the way to point at its new place
    assert_refused(smtrnn_cli("eval", out, "--batches", 1), f"text:{data}: file not found", "--data NEW_PATH")
    scored = smtrnn_cli("eval", out, "--batches", 1, "--data", moved, "--json", "-")
    assert scored.returncode == 0 and 0 <= json.loads(scored.stdout)["accuracy"] <= 1, scored.stderr
    other = tmp_path / "other.txt"
    other.write_bytes(TEXT.upper())
    assert_refused(smtrnn_cli("eval", out, "--data", other), str(other), "not the data this run was trained on")

    # the same bytes at the new place continue the run, which records where they are now
    continued = smtrnn_cli("train", *ARGS, "--steps", 6, "--task", f"text:{moved}", "--out", out)
    assert continued.returncode == 0, continued.stderr
    assert f"moved: {data} -> {moved} (same sha256)" in continued.stderr
    assert json.loads((out / "config.json").read_text())["task"] == f"text:{moved}"
    assert json.loads((out / "task.json").read_text())["data"]["path"] == str(moved)
    assert smtrnn_cli("eval", out, "--batches", 1).returncode == 0


def test_a_changed_data_file_is_refused_on_continue(tmp_path):
    data, out = train_on_text(tmp_path)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name != ".lock"}
    data.write_bytes(TEXT.replace(b"cat", b"cow"))
    refused = smtrnn_cli("train", *ARGS, "--steps", 6, "--task", f"text:{data}", "--out", out)
    assert_refused(refused, f"{data} has changed since this run was trained on it", "sha256")
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and path.name != ".lock"} == before


def test_what_a_run_and_an_export_write_is_readable_by_others(tmp_path):
    umask = 0o022
    os.umask(previous := os.umask(umask))  # the subprocesses inherit this process's umask
    try:
        out, exported, result = tmp_path / "run", tmp_path / "exported", tmp_path / "json" / "result.json"
        done = smtrnn_cli("train", *ARGS, "--task", "parity", "--out", out, "--json", result)
        assert done.returncode == 0, done.stderr
        assert smtrnn_cli("export", out, exported).returncode == 0
    finally:
        os.umask(previous)
    files = [result, exported / "config.json", exported / "model.safetensors"]
    files += [path for path in out.rglob("*") if path.is_file()]
    folders = [path for path in out.rglob("*") if path.is_dir()]
    names = {path.name for path in files}
    assert {"config.json", "task.json", "result.json", "metrics.jsonl", "state.safetensors", "latest"} <= names
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    for path in folders:
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path
