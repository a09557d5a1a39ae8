"""Evaluation (smtrnn.evaluate and smtrnn.run.evaluate_run), checked against hand computations.

What is proven:

- ``evaluate_rnn``: its accuracy and loss equal a step-by-step rollout from the initial memory, read out
  with ``rnn.logits`` and scored on the labelled positions of the held-out batches; those batches come
  from a generator seeded ``seed + EVAL_SEED_OFFSET`` (never the training stream of the seed) and from
  the task's held-out split (``task.evaluation()``); an always-right RNN scores 1.0 with the loss of its
  logits, a constant guess scores the frequency of its class.
- ``evaluate_teacher``: every rung equals its hand computation; an RNN whose cell replays the teacher's
  memories exactly has zero drift (at every t of a length-T curve) and one-step accuracy = readout
  accuracy.
- ``effective_rank`` (exp of the entropy of the centred singular values) and ``mean_pairwise_distance``
  (mean over ordered pairs of distinct rows) against their definitions and known cases.
- ``length_generalisation``: factor * length where the task accepts it, None where ``check_length``
  refuses, the teacher only for Models.
- ``memory_diagnostics``: computed on the RNN's own rollout memories and the teacher's memories.
- ``evaluate_run``: teacher rungs only for methods that train a teacher; ``full`` adds chance,
  diagnostics and (only when the config asks) length generalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smtrnn.cells import Cell
from smtrnn.errors import UserError
from smtrnn.evaluate import (
    EVAL_SEED_OFFSET,
    effective_rank,
    evaluate_rnn,
    evaluate_teacher,
    length_generalisation,
    mean_pairwise_distance,
    memory_diagnostics,
)
from smtrnn.models import Models, tiny_model
from smtrnn.run import build, evaluate_run
from smtrnn.tasks import make_task
from smtrnn.tasks.base import IGNORE, Task
from smtrnn.tasks.synthetic import Parity

TOL = dict(rel=1e-6, abs=1e-9)  # accuracies are float32 ratios, the rest float64


# ---------------------------------------------------------------------------------------------
# helpers


@dataclass
class Echo(Task):
    """y_t = x_t at odd t, unlabelled at even t (the same number of labels in every batch). Lengths above
    ``max_length`` are refused, as a task with a fixed row width would."""

    classes: int = 3
    max_length: int | None = None
    name: str = "echo"

    def __post_init__(self):
        self.vocab_size = self.num_classes = self.classes

    def check_length(self, length: int) -> None:
        super().check_length(length)
        if self.max_length is not None and length > self.max_length:
            raise UserError(f"echo: length {length} is above {self.max_length}")

    def sample(self, batch_size, length, generator):
        x = torch.randint(0, self.classes, (batch_size, length), generator=generator)
        y = x.clone()
        y[:, ::2] = IGNORE
        return {"x": x, "y": y}


class Recording(Echo):
    """An Echo task that keeps every batch it hands out."""

    def __post_init__(self):
        super().__post_init__()
        self.drawn: list[dict] = []

    def sample(self, batch_size, length, generator):
        batch = super().sample(batch_size, length, generator)
        self.drawn.append(batch)
        return batch


class OneHotCell(Cell):
    """m_t = one_hot(x_t): with an identity readout the logits are one-hot of the current token."""

    def __init__(self, vocab_size: int):
        super().__init__(vocab_size, vocab_size, 1)

    def step(self, memory, token):
        return F.one_hot(token, self.memory_size).to(memory.dtype).expand(*memory.shape[:-1], -1)


class ConstantReadout(nn.Module):
    """Logits favouring class ``choice`` whatever the memory."""

    def __init__(self, num_classes: int, choice: int):
        super().__init__()
        self.num_classes, self.choice = num_classes, choice

    def forward(self, features):
        logits = features.new_zeros(*features.shape[:-1], self.num_classes)
        logits[..., self.choice] = 1.0
        return logits


class ReplayCell(Cell):
    """A cell that replays the teacher on recorded sequences: step(m*_{t-1}, x_t) = m*_t, looked up
    among the recorded transitions with that token (the stored memory must match to 1e-9)."""

    def __init__(self, vocab_size: int, memories: torch.Tensor, x: torch.Tensor):
        size = memories.shape[-1]
        super().__init__(vocab_size, size, 1)
        self.keys = memories[:, :-1].reshape(-1, size)
        self.values = memories[:, 1:].reshape(-1, size)
        self.tokens = x.reshape(-1)
        self.initial = nn.Parameter(memories[0, 0].clone())

    def step(self, memory, token):
        lead = torch.broadcast_shapes(memory.shape[:-1], token.shape)
        memory = memory.expand(*lead, memory.shape[-1]).reshape(-1, memory.shape[-1])
        token = token.expand(lead).reshape(-1)
        distance = torch.cdist(memory, self.keys, compute_mode="donot_use_mm_for_euclid_dist")  # exact zeros
        distance[token.unsqueeze(1) != self.tokens.unsqueeze(0)] = math.inf
        nearest, index = distance.min(1)
        assert nearest.max() < 1e-9, "a transition the teacher never made"
        return self.values[index].reshape(*lead, -1)


def make_models(task, cell="tanh", seed=0) -> Models:
    """Tiny untrained models in float64 (no argmax ties, tight comparisons)."""
    torch.manual_seed(seed)
    return Models(tiny_model(cell=cell), task.vocab_size, task.num_classes).double()


def held_out(task, length, batches, batch_size, seed) -> list[dict]:
    """The batches evaluation must see: the task's held-out split, generator seed + EVAL_SEED_OFFSET."""
    generator = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    return [task.evaluation().sample(batch_size, length, generator) for _ in range(batches)]


def step_rollout(cell, x) -> torch.Tensor:
    """Memories after each token [B, T, M], one cell.step at a time from the initial memory."""
    memory, memories = cell.initial_memory(x.shape[0]), []
    for t in range(x.shape[1]):
        memory = cell.step(memory, x[:, t])
        memories.append(memory)
    return torch.stack(memories, 1)


def scored(logits, y) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the labelled positions, by hand."""
    labelled = y != IGNORE
    chosen, targets = logits[labelled], y[labelled]
    losses = [-torch.log_softmax(row, -1)[target].item() for row, target in zip(chosen, targets)]
    correct = [row.argmax().item() == target.item() for row, target in zip(chosen, targets)]
    return sum(losses) / len(losses), sum(correct) / len(correct)


def first_prediction(teacher, memories, y) -> float:
    """Teacher accuracy by hand: decode each labelled position's memory alone, no future inputs."""
    rows, columns = (y != IGNORE).nonzero(as_tuple=True)
    correct = 0
    for b, t in zip(rows.tolist(), columns.tolist()):
        logits = teacher.decode(memories[b, t + 1].unsqueeze(0), y.new_zeros(1, 0))[0, 0]
        correct += int(logits.argmax().item() == y[b, t].item())
    return correct / len(rows)


def first_prediction_bits(teacher, memories, y) -> float:
    """The teacher's first-prediction loss by hand, in bits per labelled position."""
    rows, columns = (y != IGNORE).nonzero(as_tuple=True)
    losses = []
    for b, t in zip(rows.tolist(), columns.tolist()):
        logits = teacher.decode(memories[b, t + 1].unsqueeze(0), y.new_zeros(1, 0))[0, 0]
        losses.append(-torch.log_softmax(logits, -1)[y[b, t]].item() / math.log(2))
    return sum(losses) / len(losses)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------------
# evaluate_rnn


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm"])
def test_rnn_accuracy_and_loss_equal_a_step_by_step_rollout(cell):
    task = make_task("retrieval", values=4)  # one label per sequence, at the last step
    rnn = make_models(task, cell).rnn
    result = evaluate_rnn(rnn, task, 8, batches=3, batch_size=16, seed=5)
    losses, accuracies = [], []
    with torch.no_grad():
        for batch in held_out(task, 8, 3, 16, seed=5):
            loss, accuracy = scored(rnn.logits(step_rollout(rnn.cell, batch["x"])), batch["y"])
            losses.append(loss)
            accuracies.append(accuracy)
    assert result["accuracy"] == pytest.approx(mean(accuracies), **TOL)
    assert result["loss"] == pytest.approx(mean(losses), **TOL)
    assert result["bits_per_token"] == pytest.approx(mean(losses) / math.log(2), **TOL)


def test_rnn_evaluation_is_deterministic_per_seed_and_differs_across_seeds():
    task = make_task("parity")
    rnn = make_models(task).rnn
    first = evaluate_rnn(rnn, task, 10, batches=2, batch_size=8, seed=0)
    assert evaluate_rnn(rnn, task, 10, batches=2, batch_size=8, seed=0) == first
    assert evaluate_rnn(rnn, task, 10, batches=2, batch_size=8, seed=1)["loss"] != first["loss"]


def test_held_out_batches_are_seeded_apart_from_training():
    task = Recording()
    evaluate_rnn(make_models(task).rnn, task, 6, batches=3, batch_size=4, seed=7)
    expected = held_out(Echo(), 6, 3, 4, seed=7)
    assert len(task.drawn) == 3
    for drawn, wanted in zip(task.drawn, expected):
        assert torch.equal(drawn["x"], wanted["x"]) and torch.equal(drawn["y"], wanted["y"])
    training = torch.Generator().manual_seed(7)  # what run() samples its training batches with
    assert not torch.equal(task.drawn[0]["x"], Echo().sample(4, 6, training)["x"])
    # no evaluation seed of a sweep over seeds 0..999 is the training seed of another run in it
    assert not set(range(1000)) & {seed + EVAL_SEED_OFFSET for seed in range(1000)}


def test_evaluation_samples_the_held_out_split():
    class TwoSplits(Echo):
        def __post_init__(self):
            super().__post_init__()
            self.test_split = Recording()

        def evaluation(self):
            return self.test_split

        def sample(self, batch_size, length, generator):
            raise AssertionError("evaluation sampled the training split")

    task = TwoSplits()
    evaluate_rnn(make_models(task).rnn, task, 6, batches=2, batch_size=4)
    assert len(task.test_split.drawn) == 2


def test_an_always_right_rnn_scores_one_with_the_loss_of_its_logits():
    task = Echo(classes=3)
    rnn = make_models(task).rnn.float()
    rnn.cell, rnn.readout = OneHotCell(3), nn.Identity()  # logits = one_hot(x_t), and y_t = x_t
    result = evaluate_rnn(rnn, task, 9, batches=2, batch_size=8)
    assert result["accuracy"] == 1.0
    # logit 1 on the label, 0 on the two others: -log(e / (e + 2))
    assert result["loss"] == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)


def test_a_constant_guess_scores_the_frequency_of_its_class():
    task = Echo(classes=3)
    rnn = make_models(task).rnn
    rnn.readout = ConstantReadout(3, choice=2)
    result = evaluate_rnn(rnn, task, 9, batches=4, batch_size=8, seed=2)
    frequency = mean((b["y"] == 2).sum().item() / (b["y"] != IGNORE).sum().item() for b in held_out(task, 9, 4, 8, 2))
    assert 0 < frequency < 1
    assert result["accuracy"] == pytest.approx(frequency, **TOL)


def test_an_always_right_rnn_scores_one_when_some_batches_hold_no_label(tmp_path):
    """Every labelled position counts once: a held-out batch without labels does not count as accuracy 0."""
    # a sequences file labelled in its last four columns only; crops of 8 of its 16 columns often miss them
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (20, 16), generator=generator).numpy()
    y = np.full_like(x, IGNORE)
    y[:, -4:] = x[:, -4:]
    np.savez(tmp_path / "rows.npz", x=x, y=y)
    task = make_task(f"sequences:{tmp_path / 'rows.npz'}", vocab=3, classes=3)
    labels = [int((b["y"] != IGNORE).sum()) for b in held_out(task, 8, 8, 2, seed=0)]
    assert 0 in labels and max(labels) > 0  # some batches carry labels, some none
    rnn = make_models(task).rnn.float()
    rnn.cell, rnn.readout = OneHotCell(3), nn.Identity()
    assert evaluate_rnn(rnn, task, 8, batches=8, batch_size=2)["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------
# evaluate_teacher


def ahead_logits(teacher, memories, x):
    """The teacher's decoder on each m*_t, t < T, with x_t as its next input: the logits of y_t [B, T, C]."""
    return torch.stack([teacher.decode(memories[:, t], x[:, t : t + 1])[:, 1] for t in range(x.shape[1])], 1)


def test_teacher_rungs_equal_their_hand_computation():
    task = Echo(classes=4)
    models = make_models(task, seed=1)
    rnn, teacher = models.rnn, models.teacher
    result = evaluate_teacher(models, task, 6, batches=2, batch_size=5, seed=3)
    records, curves = [], []
    with torch.no_grad():
        for batch in held_out(task, 6, 2, 5, seed=3):
            x, y = batch["x"], batch["y"]
            memories = teacher.encode(x)
            assert rnn.logits(memories).argmax(-1).unique().numel() > 1  # the readout reads the memory
            one_step = torch.stack([rnn.cell.step(memories[:, t], x[:, t]) for t in range(6)], 1)
            drift = (step_rollout(rnn.cell, x) - memories[:, 1:]).norm(dim=-1).mean(0)
            curves.append(drift)
            records.append(
                {
                    "teacher_accuracy": first_prediction(teacher, memories, y),
                    "teacher_bits_per_token": first_prediction_bits(teacher, memories, y),
                    # one token ahead: y_t from m*_{t-1} with x_t as the decoder's next input
                    "teacher_step_accuracy": scored(ahead_logits(teacher, memories, x), y)[1],
                    "teacher_step_bits_per_token": scored(ahead_logits(teacher, memories, x), y)[0] / math.log(2),
                    "readout_accuracy": scored(rnn.logits(memories[:, 1:]), y)[1],
                    "readout_bits_per_token": scored(rnn.logits(memories[:, 1:]), y)[0] / math.log(2),
                    "one_step_accuracy": scored(rnn.logits(one_step), y)[1],
                    "one_step_bits_per_token": scored(rnn.logits(one_step), y)[0] / math.log(2),
                    "drift": drift.mean().item(),
                    "drift_final": drift[-1].item(),
                    "memory_norm": memories[:, 1:].norm(dim=-1).mean().item(),
                }
            )
    for key in records[0]:
        assert result[key] == pytest.approx(mean(r[key] for r in records), **TOL), key
    assert result["drift"] > 0
    assert result["drift_curve"] == pytest.approx(torch.stack(curves).mean(0).tolist(), **TOL)


def test_a_cell_that_replays_the_teacher_has_no_drift():
    task = make_task("parity")
    models = make_models(task, seed=2)
    batches = held_out(task, 7, 2, 6, seed=4)
    with torch.no_grad():
        memories = [models.teacher.encode(b["x"]) for b in batches]
    models.rnn.cell = ReplayCell(2, torch.cat(memories), torch.cat([b["x"] for b in batches])).double()
    result = evaluate_teacher(models, task, 7, batches=2, batch_size=6, seed=4)
    assert len(result["drift_curve"]) == 7
    assert max(result["drift_curve"]) < 1e-9
    assert result["drift"] < 1e-9 and result["drift_final"] < 1e-9
    assert result["one_step_accuracy"] == result["readout_accuracy"]
    assert result["memory_norm"] > 0.1  # the memories are not trivially zero


# ---------------------------------------------------------------------------------------------
# effective_rank and mean_pairwise_distance


def test_effective_rank_of_points_on_a_line_is_one_and_of_one_point_is_zero():
    a = torch.randn(30, 1, generator=torch.Generator().manual_seed(0))
    line = 3.0 + a * torch.tensor([[1.0, -2.0, 0.5, 4.0]])  # offset rows on one line
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.full((10, 4), 0.7)) == 0.0


def test_effective_rank_of_k_equal_orthogonal_directions_is_k():
    for k in (2, 3, 5):
        rows = torch.cat([torch.eye(k), -torch.eye(k)])  # centred, X^T X = 2 I_k
        rows = F.pad(rows, (0, 8 - k)) + 5.0  # inside 8 dims, off the origin
        assert effective_rank(rows) == pytest.approx(k, rel=1e-9)


def test_effective_rank_is_exp_entropy_of_the_centred_singular_values():
    matrix = torch.randn(40, 6, generator=torch.Generator().manual_seed(1)) * torch.tensor([3.0, 2, 1, 0.5, 0.2, 0.1])
    centred = (matrix - matrix.mean(0)).double()
    singular = torch.linalg.eigvalsh(centred.T @ centred).clamp(min=0).sqrt()  # not via an SVD
    share = singular / singular.sum()
    expected = math.exp(-(share * share.log()).sum().item())
    assert effective_rank(matrix) == pytest.approx(expected, rel=1e-6)
    assert 1 < expected < 6
    assert effective_rank(10 * matrix + 4) == pytest.approx(expected, rel=1e-6)  # scale, shift invariant


def test_effective_rank_of_an_isotropic_cloud_is_close_to_its_dimension():
    cloud = torch.randn(4000, 6, generator=torch.Generator().manual_seed(2))
    assert 5.8 < effective_rank(cloud) <= 6.0


def test_mean_pairwise_distance_is_the_mean_over_pairs_of_distinct_rows():
    points = torch.randn(7, 3, generator=torch.Generator().manual_seed(3))
    pairs = [(i, j) for i in range(7) for j in range(7) if i != j]
    expected = mean((points[i] - points[j]).norm().item() for i, j in pairs)
    assert mean_pairwise_distance(points) == pytest.approx(expected, rel=1e-6)
    assert mean_pairwise_distance(torch.ones(5, 3)) == 0.0
    assert mean_pairwise_distance(points[:1]) == 0.0


def test_mean_pairwise_distance_subsamples_at_most_samples_rows():
    points = torch.randn(20, 2, generator=torch.Generator().manual_seed(4))
    chosen = points[torch.randperm(20, generator=torch.Generator().manual_seed(9))[:6]]
    assert mean_pairwise_distance(points, samples=6, seed=9) == pytest.approx(mean_pairwise_distance(chosen), rel=1e-9)
    assert mean_pairwise_distance(points, samples=6, seed=9) != mean_pairwise_distance(points)


# ---------------------------------------------------------------------------------------------
# length_generalisation and memory_diagnostics


def test_length_generalisation_of_an_rnn_alone_refuses_what_the_task_refuses():
    task = Echo(classes=3, max_length=30)
    rnn = make_models(task).rnn
    result = length_generalisation(rnn, task, 6, batches=2, batch_size=4, seed=1)
    assert set(result) == {2, 4, 8} and result[8] is None  # 48 > 30
    for factor in (2, 4):
        expected = evaluate_rnn(rnn, task, 6 * factor, 2, 4, 1)["accuracy"]
        assert result[factor] == {"length": 6 * factor, "rnn": expected, "teacher": None}


def test_a_perfect_rnn_generalises_to_every_length():
    task = Echo(classes=3)
    rnn = make_models(task).rnn.float()
    rnn.cell, rnn.readout = OneHotCell(3), nn.Identity()
    result = length_generalisation(rnn, task, 5, batches=1, batch_size=4)
    assert [(entry["length"], entry["rnn"]) for entry in result.values()] == [(10, 1.0), (20, 1.0), (40, 1.0)]


def test_length_generalisation_of_models_scores_the_teacher_on_the_same_sequences():
    task = Echo(classes=3, max_length=12)
    models = make_models(task, seed=3)
    result = length_generalisation(models, task, 6, batches=2, batch_size=3, seed=2)
    assert result[4] is None and result[8] is None
    with torch.no_grad():
        teacher = mean(
            first_prediction(models.teacher, models.teacher.encode(b["x"]), b["y"]) for b in held_out(task, 12, 2, 3, 2)
        )
    assert result[2]["teacher"] == pytest.approx(teacher, **TOL)
    assert result[2]["rnn"] == evaluate_rnn(models.rnn, task, 12, 2, 3, 2)["accuracy"]


def test_memory_diagnostics_measure_the_rollout_and_the_teacher_memories():
    task = make_task("parity")
    models = make_models(task, seed=4)
    with torch.no_grad():
        batches = held_out(task, 5, 2, 4, seed=6)
        rollout = torch.cat([step_rollout(models.rnn.cell, b["x"]).flatten(0, 1) for b in batches])
        expert = torch.cat([models.teacher.encode(b["x"])[:, 1:].flatten(0, 1) for b in batches])
    alone = memory_diagnostics(models.rnn, task, 5, batches=2, batch_size=4, seed=6)
    assert alone == pytest.approx(
        {"rnn_effective_rank": effective_rank(rollout), "rnn_pairwise_distance": mean_pairwise_distance(rollout)},
        **TOL,
    )
    both = memory_diagnostics(models, task, 5, batches=2, batch_size=4, seed=6)
    drift = mean((rollout - expert).norm(dim=-1).tolist())
    expected = {
        **alone,
        "teacher_effective_rank": effective_rank(expert),
        "teacher_pairwise_distance": mean_pairwise_distance(expert),
        "drift": drift,
        "relative_drift": drift / mean(expert.norm(dim=-1).tolist()),
    }
    assert both == pytest.approx(expected, **TOL)
    assert drift > 0


# ---------------------------------------------------------------------------------------------
# evaluate_run

RUNG_KEYS = {"teacher_accuracy", "teacher_bits_per_token", "readout_accuracy", "one_step_accuracy"}
RUNG_KEYS |= {"teacher_step_accuracy", "teacher_step_bits_per_token"}  # the tiny teacher's window Tf is 2
RUNG_KEYS |= {"readout_bits_per_token", "one_step_bits_per_token"}
RUNG_KEYS |= {"drift", "drift_final", "memory_norm"}
RNN_KEYS = {"accuracy", "loss", "bits_per_token"}


def test_evaluate_run_reports_teacher_rungs_only_for_methods_that_train_a_teacher(tiny_config):
    bptt = tiny_config(method="bptt")
    task, models = build(bptt)
    result = evaluate_run(bptt, task, models, batches=2)
    assert set(result) == RNN_KEYS
    assert result == evaluate_rnn(models.rnn, task, bptt.length, 2, 64, bptt.seed)

    smt = tiny_config(method="smt")
    task, models = build(smt)
    result = evaluate_run(smt, task, models, length=8, batches=2)
    assert set(result) == RNN_KEYS | RUNG_KEYS  # no drift curve
    teacher = evaluate_teacher(models, task, 8, 1, 64, smt.seed)  # half the batches
    assert {key: result[key] for key in RUNG_KEYS} == {key: teacher[key] for key in RUNG_KEYS}


def test_a_teacher_with_a_window_of_one_has_no_step_ahead_rung(tiny_config):
    """With Tf = 1 the decoder is never trained on a next input: no teacher-step rung is reported."""
    smt = tiny_config(method="smt")
    smt.model.future = 1
    task, models = build(smt)
    result = evaluate_teacher(models, task, 8, 1, 16, smt.seed)
    assert "teacher_accuracy" in result and "teacher_step_accuracy" not in result


def test_evaluate_run_full_adds_chance_diagnostics_and_asked_for_generalisation(tiny_config):
    smt = tiny_config(method="smt")
    task, models = build(smt)
    result = evaluate_run(smt, task, models, batches=1, full=True)
    assert result["chance"] == 0.5  # parity
    assert set(result["diagnostics"]) > {"rnn_effective_rank", "teacher_effective_rank", "drift"}
    assert "generalisation" not in result

    asked = tiny_config(method="smt", length_generalisation=True)
    result = evaluate_run(asked, task, models, batches=1, full=True)
    assert list(result["generalisation"]) == ["2", "4", "8"]
    assert [e["length"] for e in result["generalisation"].values()] == [24, 48, 96]
    assert all(e["teacher"] is not None for e in result["generalisation"].values())

    bptt = tiny_config(method="bptt", length_generalisation=True)
    result = evaluate_run(bptt, task, models, batches=1, full=True)
    assert set(result["diagnostics"]) == {"rnn_effective_rank", "rnn_pairwise_distance"}
    assert all(e["teacher"] is None for e in result["generalisation"].values())


def test_evaluate_run_refuses_a_length_the_task_refuses(tiny_config):
    config = tiny_config(method="bptt")
    task, models = build(config)
    with pytest.raises(UserError):
        evaluate_run(config, task, models, length=1)


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
    return Models(tiny_model(), task.vocab_size, task.num_classes)


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
