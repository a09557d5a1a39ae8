"""Reliability: a run SIGKILLed at any moment resumes to the bit-identical result; leftovers of a
write cut short do not matter; a NaN stops the run with one line and keeps the last good
checkpoint; damaged or mismatched checkpoints are one-line user errors; nothing is unpickled."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import smtrnn.methods.table as phases_module
from conftest import assert_identical, final_tensors, records
from smtrnn import checkpoint
from smtrnn.cli import main
from smtrnn.config import RunConfig, get_field, option_name
from smtrnn.models import ModelConfig
from smtrnn.run import load_run, run
from smtrnn.tasks.synthetic import Parity
from smtrnn.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    "OMP_NUM_THREADS": "1",
}

# Parity that sleeps a little per batch, so that the run lasts long enough to be killed in each
# phase whatever the machine's speed (the sleep costs no CPU and changes nothing else).
SLOW_TASK = """
import time

from smtrnn.tasks.synthetic import Parity


class SlowParity(Parity):
    settings = {}  # the shared recipe: nothing on stderr

    def sample(self, batch_size, length, generator):
        time.sleep(0.01)
        return super().sample(batch_size, length, generator)
"""

# the model both command lines train: small enough that a run takes seconds
MODEL_ARGS = (
    "--cell tanh --memory-size 16 --embed-dim 8 --readout-hidden 16 --teacher-width 32 --teacher-layers 1 "
    "--teacher-decoder-layers 1 --teacher-heads 4 --future 2"
).split()

TRAIN_ARGS = [
    *"--method smt+dmt --length 16 --steps 20 --dmt-steps 10 --batch-size 8 --dmt-batch-size 8".split(),
    *MODEL_ARGS,
    *"--warmup 5 --dmt-warmup 5 --checkpoint-every 5 --log-every 5 --dmt-checkpoint-every 5 --dmt-log-every 5".split(),
    # both draw from the global torch RNG, which resuming must therefore restore exactly
    *"--smt-uniformity-samples 64 --dmt-start teacher --dmt-rollout 10 --eval-batches 1 --quiet".split(),
]


# ================================================================================================
# a real kill: SIGKILL a `python -m smtrnn train` process, twice, and re-run the same command


def launch(task_file: Path, out: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "smtrnn",
        "train",
        "--task",
        f"{task_file}:SlowParity",
        *TRAIN_ARGS,
        "--out",
        str(out),
    ]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def latest_name(run_dir: Path) -> str:
    try:
        return (run_dir / "checkpoints" / "latest").read_text()
    except FileNotFoundError:
        return ""


def test_sigkill_twice_then_rerun_is_bit_identical(tmp_path):
    task_file = tmp_path / "slow_task.py"
    task_file.write_text(SLOW_TASK)
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    started = []

    def start(out: Path) -> subprocess.Popen:
        started.append(launch(task_file, out))
        return started[-1]

    try:
        whole = start(whole_dir)  # the uninterrupted run, alongside the killed one
        # kill 1: in the SMT phase, once at least one checkpoint exists
        kill_when(start(killed_dir), lambda: latest_name(killed_dir).startswith("smt-"))
        assert not (killed_dir / "result.json").exists()
        # kill 2: in the DMT phase of the resumed run, once one of its checkpoints exists
        kill_when(start(killed_dir), lambda: latest_name(killed_dir).startswith("dmt-"))
        assert not (killed_dir / "result.json").exists()
        resumed = start(killed_dir)
        for process in (whole, resumed):
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, err
            assert err == ""
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()

    assert_identical(final_tensors(killed_dir), final_tensors(whole_dir))
    steps = [(r["phase"], r["step"]) for r in records(killed_dir)]
    expected = [("smt", s) for s in range(5, 21, 5)] + [("dmt", s) for s in range(5, 11, 5)]
    assert steps == expected  # no step missing, none twice
    assert records(killed_dir) == records(whole_dir)  # and every logged value the same
    results = [json.loads((d / "result.json").read_text()) for d in (killed_dir, whole_dir)]
    for result in results:
        for key in ("seconds", "phase_seconds"):
            result.pop(key)
    assert results[0] == results[1]


# ================================================================================================
# in-process runs of a tiny config (the interruption is an exception raised in the sample hook)

SMT_STEPS, DMT_STEPS = 10, 6


def tiny_config(**model) -> RunConfig:
    config = RunConfig(
        task="parity",
        length=12,
        method="smt+dmt",
        seed=5,
        eval_batches=1,
        model=ModelConfig(
            **{
                **dict(
                    cell="tanh",
                    memory_size=16,
                    embed_dim=8,
                    readout_hidden=16,
                    teacher_width=32,
                    teacher_layers=1,
                    teacher_decoder_layers=1,
                    teacher_heads=4,
                    future=2,
                ),
                **model,
            }
        ),
        train=TrainConfig(steps=SMT_STEPS, batch_size=8, warmup=2, log_every=2, checkpoint_every=4),
        dmt_train=TrainConfig(steps=DMT_STEPS, batch_size=8, lr=3e-4, warmup=2, log_every=2, checkpoint_every=3),
    )
    config.smt.uniformity_samples = 64
    config.dmt.start, config.dmt.rollout = "teacher", 8
    return config


class Interrupted(Exception):
    pass


def stop_at(batch: int):
    count = [0]

    def hook(sampled):
        count[0] += 1
        if count[0] == batch:
            raise Interrupted
        return sampled

    return hook


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny smt+dmt run trained once, without interruption."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = run(tiny_config(), run_dir, progress=False)
    return run_dir, result


def run_args(run_dir: Path) -> list[str]:
    """The CLI arguments that reproduce tiny_config() (for main()), parity's own settings given at its
    values so that the command takes none of them."""
    args = [
        "train",
        "--task",
        "parity",
        "--length",
        "12",
        "--method",
        "smt+dmt",
        "--seed",
        "5",
        "--eval-batches",
        "1",
        *MODEL_ARGS,
        "--steps",
        str(SMT_STEPS),
        "--batch-size",
        "8",
        "--warmup",
        "2",
        "--log-every",
        "2",
        "--checkpoint-every",
        "4",
        "--dmt-steps",
        str(DMT_STEPS),
        "--dmt-batch-size",
        "8",
        "--dmt-lr",
        "3e-4",
        "--dmt-warmup",
        "2",
        "--dmt-log-every",
        "2",
        "--dmt-checkpoint-every",
        "3",
        "--smt-uniformity-samples",
        "64",
        "--dmt-start",
        "teacher",
        "--dmt-rollout",
        "8",
        "--quiet",
        "--out",
        str(run_dir),
    ]
    for dotted in Parity.settings:
        if option_name(dotted) not in args:
            args += [option_name(dotted), str(get_field(tiny_config(), dotted))]
    return args


def test_cli_arguments_reproduce_the_tiny_config(tmp_path):
    from smtrnn.cli import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(run_args(tmp_path)))
    assert config.to_dict() == tiny_config().to_dict()


@pytest.mark.parametrize(
    "stop", [3, 7, SMT_STEPS + 3], ids=["before-any-checkpoint", "smt", "dmt-before-its-checkpoint"]
)
def test_leftovers_of_a_cut_write_do_not_break_resume(stop, reference, tmp_path):
    """A kill inside save_checkpoint leaves a .staging-* folder (and write_atomic a .latest.*
    temporary); a kill before the first checkpoint of a phase leaves log lines of that phase."""
    reference_dir, reference_result = reference
    with pytest.raises(Interrupted):
        run(tiny_config(), tmp_path, progress=False, sample_hook=stop_at(stop))
    root = tmp_path / "checkpoints"
    root.mkdir(exist_ok=True)
    staging = root / ".staging-k1ll3d"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":')  # cut short
    (root / ".latest.x7q2").write_text("smt-99999999")
    (tmp_path / "metrics.jsonl").open("a").write('{"phase": "smt", "step": 99, "lo')  # a line cut by the kill

    result = run(tiny_config(), tmp_path, progress=False)
    assert_identical(final_tensors(tmp_path), final_tensors(reference_dir))
    assert records(tmp_path) == records(reference_dir)
    assert {k: v for k, v in result.items() if "seconds" not in k} == {
        k: v for k, v in reference_result.items() if "seconds" not in k
    }
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # cleaned up by the next save


# ================================================================================================
# NaN / inf


def assert_one_line_error(code: int, capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("smtrnn: error:"), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_nan_loss_exits_2_naming_the_step_and_keeps_the_last_good_checkpoint(reference, tmp_path, capsys, monkeypatch):
    original = phases_module.smt_loss

    def poisoned(models, batch, config, step):
        loss, metrics = original(models, batch, config, step)
        return (loss * float("nan") if step >= 6 else loss), metrics  # the 7th step

    monkeypatch.setattr(phases_module, "smt_loss", poisoned)
    code = main(run_args(tmp_path))
    line = assert_one_line_error(code, capsys, "step 7", "nan", "smt")
    assert "last good checkpoint" in line
    folder = checkpoint.latest_checkpoint(tmp_path)
    assert folder.name == "smt-00000004"  # checkpoint_every 4: the last one before the NaN
    assert not (tmp_path / "result.json").exists()
    _, _, models = load_run(tmp_path)  # loadable, and finite
    assert all(torch.isfinite(value).all() for value in models.state_dict().values())
    assert [r["step"] for r in records(tmp_path)] == [2, 4, 6]

    # intact: without the poison, the same command resumes from it to the uninterrupted result
    monkeypatch.setattr(phases_module, "smt_loss", original)
    assert main(run_args(tmp_path)) == 0
    capsys.readouterr()
    reference_dir, _ = reference
    assert_identical(final_tensors(tmp_path), final_tensors(reference_dir))
    assert records(tmp_path) == records(reference_dir)


# ================================================================================================
# validation on load


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / "result.json").unlink()
    return target


def edit_config(run_dir: Path, **model) -> None:
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    config["model"].update(model)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "model, fragment",
    [
        (dict(memory_size=24), "memory_size=16 (checkpoint) vs 24 (config)"),
        (dict(cell="gru"), "cell='tanh' (checkpoint) vs 'gru' (config)"),
        (dict(teacher_heads=2), "teacher_heads=4 (checkpoint) vs 2 (config)"),  # same names and shapes
    ],
    ids=["sizes", "another-cell", "same-shapes"],
)
def test_config_json_that_does_not_match_the_checkpoint(model, fragment, reference, tmp_path, capsys):
    run_dir = copy_run(reference[0], tmp_path / "run")
    edit_config(run_dir, **model)
    assert_one_line_error(main(["eval", str(run_dir)]), capsys, "another model", fragment)
    # resuming training with the matching arguments refuses too, before anything is written
    before = final_tensors(run_dir)
    args = run_args(run_dir)
    for key, value in model.items():
        option = "--" + key.replace("_", "-")
        args[args.index(option) + 1] = str(value)
    assert_one_line_error(main(args), capsys, "another model")
    assert_identical(final_tensors(run_dir), before)


def test_weights_of_another_cell_without_recorded_config(reference, tmp_path, capsys):
    """Checkpoints written before the model config was recorded: names and shapes still checked."""
    run_dir = copy_run(reference[0], tmp_path / "run")
    path = checkpoint.latest_checkpoint(run_dir) / "model.safetensors"
    save_file(load_file(path), path)  # the same tensors, no metadata
    edit_config(run_dir, cell="gru")
    assert_one_line_error(main(["eval", str(run_dir)]), capsys, "shape")


@pytest.mark.parametrize(
    "content",
    [
        '{"meta": ',
        "[]",
        '{"meta": {"phase": "dmt", "step": 6}}',
        '{"meta": {"phase": "dmt", "step": -1, "seconds": 1}, "optimizer": {}}',
        '{"meta": {"phase": 3, "step": 6, "seconds": 1}, "optimizer": {}}',
        '{"meta": {"phase": "bptt", "step": 6, "seconds": 1}, "optimizer": {}}',
        '{"meta": {"step": 6}, "optimizer": {}}',
    ],
    ids=["cut", "list", "no-optimizer", "negative-step", "phase-number", "other-phase", "no-phase"],
)
def test_corrupt_state_json(content, reference, tmp_path, capsys):
    run_dir = copy_run(reference[0], tmp_path / "run")
    (checkpoint.latest_checkpoint(run_dir) / "state.json").write_text(content)
    assert_one_line_error(main(run_args(run_dir)), capsys, str(checkpoint.latest_checkpoint(run_dir)))


def test_optimizer_state_that_does_not_fit(reference, tmp_path, capsys):
    run_dir = copy_run(reference[0], tmp_path / "run")
    folder = checkpoint.latest_checkpoint(run_dir)
    state = json.loads((folder / "state.json").read_text())
    first = next(iter(state["optimizer"]["state"]))
    assert state["optimizer"]["state"][first]["exp_avg"] == "tensor"  # named in JSON, stored in safetensors
    tensors = load_file(folder / "state.safetensors")
    tensors.pop(f"optimizer.{first}.exp_avg")  # ... but missing there
    save_file(tensors, folder / "state.safetensors")
    (folder / "state.json").write_text(json.dumps(state))
    # the last phase (dmt) resumes at its last step: it loads the optimizer
    assert_one_line_error(main(run_args(run_dir)), capsys, "optimizer state does not fit")
    # moments of the wrong shape
    tensors[f"optimizer.{first}.exp_avg"] = torch.zeros(3, 3)
    save_file(tensors, folder / "state.safetensors")
    assert_one_line_error(main(run_args(run_dir)), capsys, "optimizer state does not fit", "shape")


def test_nothing_is_ever_unpickled():
    """Checkpoints are safetensors + JSON: no torch.load/torch.save, no pickle, and none of the
    torch.distributed *_object collectives (they pickle)."""
    forbidden = re.compile(
        r"torch\.load\b|torch\.save\b|\bimport pickle\b|\bfrom pickle\b|\bpickle\.|cloudpickle|"
        r"\bdill\b|allow_pickle|_object\(|_object_list\(|weights_only"
    )
    sources = sorted((ROOT / "src").rglob("*.py"))
    assert sources
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_the_loop_hands_freed_heap_memory_back_every_few_steps(monkeypatch):
    """A long run's resident memory must not grow with the steps (a fragmented C heap did: 13 MB a step on
    copy at T=256): the loop that every phase trains in gives the heap's free pages back every RELEASE_EVERY steps."""
    import smtrnn.train as loop

    calls = []
    monkeypatch.setattr(loop, "release_freed_memory", lambda: calls.append(1))

    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))

        def forward(self, batch, step):
            return (self.weight * batch["x"]).pow(2).mean(), {}

    objective = Objective()
    config = TrainConfig(steps=2 * loop.RELEASE_EVERY + 3, batch_size=2, warmup=0, log_every=1000)
    sample = lambda generator, step: {"x": torch.randn(2, 3, generator=generator)}
    loop.train(
        objective,
        list(objective.parameters()),
        sample,
        config,
        model=objective,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert len(calls) == 2
