"""Shared test helpers, imported with ``from conftest import ...`` (the tests folder is on sys.path).

Run configs:
    make_tiny_config, tiny_config   a tiny RunConfig (parity at T=12) that trains in well under a second

Models and batches for the method tests (float64, checked against slow references):
    VOCAB, CLASSES, CELL_NAMES      the toy vocabulary, classes and every cell name
    TIGHT                           float64 tolerances for torch.testing.assert_close
    make_models, make_batch         small seeded Models and a seeded, partly unlabelled batch
    grads, backward, all_zero       parameter gradients after a loss, and whether they are all zero
    only                            an SMTConfig with every loss term off except the ones given
    StepSpy                         wraps ``cell.step``: counts calls and records inputs and outputs

The one-line error contract of the CLI:
    TINY, tiny_args(method)         command-line options for a run that trains in well under a second
    assert_user_error               exit code 2, one ``smtrnn: error:`` line on stderr, no traceback

The command line as a user runs it (``python -m smtrnn`` in a subprocess):
    smtrnn_cli, launch              run a command to its end / start one in the background
    assert_refused                  its exit code 2, one ``smtrnn: error:`` line with the fragments, no traceback
    gated_task(folder, gate, at)    a parity task that holds training at its batch ``at`` while a gate file exists
    wait_until                      poll a condition while a background command runs
    records, final_tensors, assert_identical   a run's metrics (no clock), last checkpoint's tensors, bit-equality
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smtrnn import checkpoint
from smtrnn.config import RunConfig, reset_unused
from smtrnn.methods import SMTConfig
from smtrnn.models import ModelConfig, Models
from smtrnn.tasks.base import IGNORE
from smtrnn.train import TrainConfig


def make_tiny_config(method: str = "smt+dmt", steps: int = 6, dmt_steps: int = 4, **top) -> RunConfig:
    """Parity at T=12 with a 16-unit tanh RNN and a one-layer teacher."""
    config = RunConfig(
        task="parity",
        length=12,
        method=method,
        seed=3,
        eval_batches=1,
        model=ModelConfig(
            memory_size=16,
            embed_dim=8,
            readout_hidden=16,
            teacher_width=16,
            teacher_layers=1,
            teacher_heads=2,
            future=2,
        ),
        train=TrainConfig(steps=steps, batch_size=8, warmup=1, log_every=1, checkpoint_every=3),
        dmt_train=TrainConfig(steps=dmt_steps, batch_size=8, warmup=1, log_every=1, checkpoint_every=2),
        **top,
    )
    config.smt.uniformity_samples = 32
    config.smt.horizon, config.smt.horizon_grow, config.smt.dyn_warmup, config.smt.teacher_delay = 2, 1, 1, 0
    reset_unused(config)  # a BPTT run has no teacher settings, an SMT run no DMT ones
    return config


@pytest.fixture
def tiny_config():
    """``tiny_config(method=..., steps=..., dmt_steps=...)``: a fresh tiny RunConfig."""
    return make_tiny_config


# ================================================================================================
# models and batches for the method tests

VOCAB, CLASSES = 6, 5
CELL_NAMES = ["tanh", "mlp", "gru", "lstm", "transformer"]
TIGHT = dict(rtol=1e-9, atol=1e-11)


def make_models(cell="tanh", memory_size=8, future=3, seed=0, double=True, levels=0) -> Models:
    """Continuous memories by default (levels 0): the method tests check the math of the losses against
    slow references; the grid's own tests are in test_memory_grid.py."""
    torch.manual_seed(seed)
    config = ModelConfig(
        cell=cell,
        memory_size=memory_size,
        embed_dim=5,
        memory_tokens=2,
        cell_layers=1,
        cell_heads=2,
        readout_hidden=12,
        teacher_width=16,
        teacher_layers=1,
        teacher_decoder_layers=1,
        teacher_heads=2,
        future=future,
        memory_levels=levels,
    )
    models = Models(config, VOCAB, CLASSES)
    return models.double() if double else models


def make_batch(batch=3, length=6, seed=1, label_every=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (batch, length), generator=generator)
    y = torch.randint(0, CLASSES, (batch, length), generator=generator)
    unlabelled = torch.rand(batch, length, generator=generator) < 0.3
    y[unlabelled] = IGNORE
    if label_every > 1:
        y[:, torch.arange(length) % label_every != label_every - 1] = IGNORE
    return {"x": x, "y": y}


def grads(module) -> dict[str, torch.Tensor]:
    """Gradients of every parameter (zeros where none arrived)."""
    return {
        name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for name, p in module.named_parameters()
    }


def backward(models, loss):
    models.zero_grad(set_to_none=True)
    loss.backward()
    return grads(models)


def all_zero(gradients: dict) -> bool:
    return all(g.abs().max() == 0 for g in gradients.values())


def only(**coefficients) -> SMTConfig:
    """An SMT config with every loss term off except the ones given."""
    values = {
        "c_pred": 0.0,
        "c_dyn": 0.0,
        "c_horizon": 0.0,
        "c_unif": 0.0,
        "c_readout": 0.0,
        "dyn_warmup": 0,
        "teacher_delay": 0,
        "decoder_positions": 0,
    }
    values.update(coefficients)
    return SMTConfig(**values)


class DepthSpy:
    """Wraps the cell's step (``step_with_update``, which ``step`` calls): tags each output with the
    number of cell applications on the longest gradient path behind it (0 for a memory that carries no
    gradient into the cell), and counts the rows each call processes."""

    def __init__(self, cell):
        self.original, self.cell = cell.step_with_update, cell
        self.depths, self.rows = [], []
        cell.step_with_update = self

    def __call__(self, memory, token):
        before = getattr(memory, "cell_depth", 0) if memory.requires_grad else 0
        out, update = self.original(memory, token)
        depth = before + 1 if torch.is_grad_enabled() else 0
        out.cell_depth = update.cell_depth = depth
        self.depths.append(depth)
        self.rows.append(out.reshape(-1, out.shape[-1]).shape[0])
        return out, update


class StepSpy:
    """Wraps the cell's step on the instance (``step_with_update``, which ``step`` calls): counts calls
    (and those under grad), records inputs and the next memories."""

    def __init__(self, cell, transform=None):
        self.raw, self.transform = cell.step_with_update, transform
        self.original = lambda memory, token: self.raw(memory, token)[0]  # the cell's own step
        self.calls, self.grad_calls, self.inputs, self.outputs = 0, 0, [], []
        cell.step_with_update = self

    def __call__(self, memory, token):
        self.calls += 1
        self.grad_calls += torch.is_grad_enabled()
        self.inputs.append((memory.detach().clone(), token.clone()))
        out = self.raw(self.transform(memory) if self.transform else memory, token)
        self.outputs.append(out[0].detach().clone())
        return out


# ================================================================================================
# the one-line error contract of the CLI

RNN_OPTIONS = ["--length", "8", "--steps", "3", "--batch-size", "4", "--warmup", "1", "--memory-size", "8"]
RNN_OPTIONS += ["--readout-hidden", "8", "--eval-batches", "1", "--quiet"]
TEACHER_OPTIONS = ["--teacher-width", "8", "--teacher-layers", "1", "--teacher-heads", "2", "--future", "2"]


def tiny_args(method: str = "smt+dmt") -> list[str]:
    """Command-line options of a run that trains in well under a second: only those ``method`` reads."""
    teacher = TEACHER_OPTIONS if method in ("smt", "smt+dmt", "dmt") else []
    return RNN_OPTIONS + teacher + (["--dmt-steps", "2"] if method == "smt+dmt" else [])


TINY = tiny_args()  # the default method, smt+dmt


def assert_user_error(code: int, capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{captured.err}"
    assert lines[0].startswith("smtrnn: error:"), lines[0]
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ================================================================================================
# the command line as a user runs it

CLI_ENV = {
    **os.environ,
    "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    "OMP_NUM_THREADS": "1",
}


def _command(args) -> list[str]:
    return [sys.executable, "-m", "smtrnn", *map(str, args)]


def smtrnn_cli(*args, timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """``python -m smtrnn ARGS`` to its end: exit code, stdout and stderr as text."""
    return subprocess.run(_command(args), capture_output=True, text=True, env=CLI_ENV, timeout=timeout, **options)


def launch(*args) -> subprocess.Popen:
    """``python -m smtrnn ARGS`` started in the background (``communicate()`` collects its output)."""
    return subprocess.Popen(_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLI_ENV)


def assert_refused(done: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("smtrnn: error:"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


GATED_TASK = """
import os
import time
from dataclasses import dataclass

from smtrnn.tasks.synthetic import Parity


@dataclass
class GatedParity(Parity):
    gate: str = ""  # while this file exists, the batch numbered ``at`` waits
    at: int = 0
    settings = {}  # the shared recipe: no note of its own settings on stderr beside the test's lines

    def sample(self, batch_size, length, generator):
        self.drawn = getattr(self, "drawn", 0) + 1
        if self.drawn == self.at and os.path.exists(self.gate):
            open(self.gate + ".waiting", "w").close()  # the test knows the run is held here
        while self.drawn == self.at and os.path.exists(self.gate):
            time.sleep(0.01)
        return super().sample(batch_size, length, generator)
"""


def gated_task(folder: Path, gate: Path, at: int) -> list[str]:
    """--task options of a parity task (its source written into ``folder``) whose training waits before its
    batch ``at`` while the file ``gate`` exists (and says so in ``gate``.waiting): a test holds a run at a
    known step, then lets it go."""
    source = folder / "gated_task.py"
    source.write_text(GATED_TASK)
    return ["--task", f"{source}:GatedParity", "--task-option", f"gate={gate}", "--task-option", f"at={at}"]


def wait_until(process: subprocess.Popen, ready, timeout: float = 180) -> None:
    """Poll ``ready()`` while ``process`` runs; fail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the command ended first: {process.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def logged_steps(run_dir: Path) -> list[tuple[str, int]]:
    return [(record["phase"], record["step"]) for record in records(run_dir)]


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the clock (the one thing two runs of one command do not share)."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines if line.endswith("}")]


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Weights, optimizer moments and RNG states of the latest checkpoint."""
    folder = checkpoint.latest_checkpoint(run_dir)
    return {
        **{"model." + k: v for k, v in load_file(folder / "model.safetensors").items()},
        **{"state." + k: v for k, v in load_file(folder / "state.safetensors").items()},
    }


def assert_identical(left: dict, right: dict):
    assert set(left) == set(right)
    for key in left:
        assert left[key].dtype == right[key].dtype and torch.equal(left[key], right[key]), key
