"""A memory on a grid (--memory-levels L): rounding with a straight-through gradient, teacher memories on
the grid, the cell rounding while it trains (and at run time only when asked), and the contract that
makes it worth having: a rollout whose every one-step error is below half a level never leaves the
teacher's trajectory."""

from __future__ import annotations

import pytest
import torch

from conftest import CLASSES, VOCAB, make_batch
from smtrnn.cells import CELLS, Cell, make_cell, on_grid, round_to_grid
from smtrnn.errors import UserError
from smtrnn.methods import SMTConfig, smt_loss
from smtrnn.models import ModelConfig, Models, tiny_model

GRID5 = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])


def on_the_grid(values: torch.Tensor, grid: torch.Tensor = GRID5) -> bool:
    return bool((values.unsqueeze(-1) - grid).abs().min(-1).values.max() < 1e-6)


def test_rounding_hits_the_grid_and_passes_the_gradient_straight_through():
    values = torch.linspace(-1.3, 1.3, 101, requires_grad=True)
    rounded = round_to_grid(values, 5)
    assert on_the_grid(rounded) and rounded.min() == -1 and rounded.max() == 1
    assert torch.equal(round_to_grid(rounded.detach(), 5), rounded.detach())  # idempotent
    (rounded * torch.arange(101.0)).sum().backward()
    assert torch.equal(values.grad, torch.arange(101.0))  # the identity's gradient
    assert on_the_grid(round_to_grid(torch.rand(50) * 2 - 1, 3), torch.tensor([-1.0, 0.0, 1.0]))


@pytest.mark.parametrize("cell", ["tanh", "gru", "mlp", "transformer"])
def test_teacher_memories_and_training_steps_lie_on_the_grid(cell):
    torch.manual_seed(0)
    models = Models(tiny_model(cell, memory_levels=5), VOCAB, CLASSES)
    x = make_batch(batch=3, length=7)["x"]
    memories = models.teacher.encode(x)  # the empty prefix m*_0 too
    stepped = models.rnn.cell.step(memories[:, :-1], x)
    for memory in (memories, stepped):
        if models.rnn.cell.memory_space == "tanh":
            assert on_the_grid(memory)
        else:  # rms: a grid point g scaled to unit RMS per memory token, so m / max|m| = g / max|g| is on the grid
            tokens = memory.reshape(*memory.shape[:-1], models.rnn.cell.memory_tokens, -1)
            assert on_the_grid(tokens / tokens.abs().amax(-1, keepdim=True).clamp(min=1e-9))


@pytest.mark.parametrize("cell", ["tanh", "gru"])
def test_the_cell_rounds_while_training_and_at_run_time_only_when_asked(cell):
    torch.manual_seed(0)
    rnn = Models(tiny_model(cell, memory_levels=5, round_at_run_time=False), VOCAB, CLASSES).rnn
    x = make_batch(batch=2, length=9)["x"]
    rnn.train()
    assert on_the_grid(rnn.cell.rollout(x))
    rnn.eval()
    plain = rnn.cell.rollout(x)
    assert not on_the_grid(plain)
    fused, _ = rnn.cell(x)  # the fused kernel is the plain step loop
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    rnn.cell.round_at_run_time = True
    rounded, last = rnn.cell(x)  # now the step loop, rounding: the kernel cannot
    assert on_the_grid(rounded) and torch.equal(rounded, rnn.cell.rollout(x)) and torch.equal(last, rounded[:, -1])


class Replay(Cell):
    """A cell that, at step t (its token), writes the teacher's next memory plus an error of at most
    ``error`` per unit: the one-step error a trained cell makes, without any learning."""

    memory_space = "tanh"

    def __init__(self, trajectory: torch.Tensor, error: float, levels: int):
        super().__init__(vocab_size=trajectory.shape[1], memory_size=trajectory.shape[-1], embed_dim=1)
        self.trajectory, self.error, self.levels = trajectory, error, levels
        self.noise = torch.Generator().manual_seed(0)

    def update(self, memory, token):
        target = self.trajectory[torch.arange(len(token)), token + 1]
        noise = (torch.rand(target.shape, generator=self.noise) * 2 - 1) * self.error
        return (target + noise).clamp(-1, 1)


@pytest.mark.parametrize("levels", [3, 5, 9])
def test_a_rollout_with_one_step_errors_below_half_a_level_stays_on_the_teachers_trajectory(levels):
    half_level = 1 / (levels - 1)
    grid = torch.linspace(-1, 1, levels)
    trajectory = grid[torch.randint(0, levels, (4, 301, 6), generator=torch.Generator().manual_seed(1))]
    steps = torch.arange(300).expand(4, 300)  # token t: "write the teacher's memory of step t + 1"
    cell = Replay(trajectory, 0.95 * half_level, levels).eval()
    cell.round_at_run_time = True
    assert torch.equal(cell.rollout(steps, trajectory[:, 0]), trajectory[:, 1:])  # exact, all 300 steps
    cell.round_at_run_time = False
    assert not torch.equal(cell.rollout(steps, trajectory[:, 0]), trajectory[:, 1:])
    cell.error, cell.round_at_run_time = 1.5 * half_level, True  # past half a level the rounding can miss
    assert not torch.equal(cell.rollout(steps, trajectory[:, 0]), trajectory[:, 1:])


def test_smt_with_a_grid_trains_and_its_loss_has_gradients():
    torch.manual_seed(0)
    models = Models(tiny_model("tanh", memory_levels=5), VOCAB, CLASSES)
    loss, metrics = smt_loss(models, make_batch(batch=3, length=8), SMTConfig(horizon=3, horizon_grow=0, dyn_warmup=0))
    loss.backward()
    assert torch.isfinite(loss) and models.rnn.cell.rnn.weight_hh_l0.grad.abs().sum() > 0
    assert models.teacher.memory_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"memory_levels": 1}, "at least 2"),
        ({"memory_levels": -3}, "at least 2"),
    ],
)
def test_bad_grid_settings_are_refused(changes, fragment):
    with pytest.raises(UserError, match=fragment):
        ModelConfig(**changes).validate()


def test_on_grid_refuses_an_unbounded_space():
    with pytest.raises(UserError, match="bounded"):
        on_grid(torch.zeros(4), "lstm", 5)
    assert set(CELLS) >= {"tanh", "gru", "mlp", "transformer"} and make_cell("tanh", VOCAB, 4).levels == 0


def test_dmt_on_a_grid_rolls_out_rounded_memories_and_pulls_the_update_before_rounding():
    from conftest import StepSpy
    from smtrnn.methods import DMTConfig, dmt_loss
    from smtrnn.methods.common import memory_spread, relative_memory_error

    torch.manual_seed(0)
    models = Models(tiny_model("tanh", memory_levels=5), VOCAB, CLASSES)
    batch = make_batch(batch=3, length=6)
    updates = []
    spy = StepSpy(models.rnn.cell)
    spy.raw = lambda memory, token, raw=spy.raw: updates.append(raw(memory, token)) or updates[-1]
    _, metrics = dmt_loss(models, batch, DMTConfig(every=1))
    assert all(on_the_grid(step) for step in spy.outputs)  # the rollout carries rounded memories
    expert = models.teacher.encode(batch["x"]).detach()
    spread = memory_spread(expert[:, 1:])
    pulls = [relative_memory_error(update, expert[:, t + 1], spread) for t, (_, update) in enumerate(updates)]
    start = relative_memory_error(models.rnn.cell.initial, expert[0, 0], spread)
    torch.testing.assert_close(metrics["dyn"], (start + sum(pulls)) / (len(pulls) + 1))
    assert not torch.equal(updates[0][0], updates[0][1])  # the update itself is off the grid


@pytest.mark.parametrize("grid_error", ["rounded", "update"])
def test_smt_compares_the_rounded_memory_or_the_update_as_asked(grid_error):
    """With no teacher delay and one step: the dynamics term is the error of the rounded memory or of
    the update before rounding, whichever --smt-grid-error names."""
    from conftest import only
    from smtrnn.methods.common import memory_spread, relative_memory_error

    torch.manual_seed(0)
    models = Models(tiny_model("tanh", memory_levels=5), VOCAB, CLASSES)
    batch = make_batch(batch=3, length=6)
    _, metrics = smt_loss(models, batch, only(c_dyn=1.0, horizon=1, grid_error=grid_error))
    memories = models.teacher.encode(batch["x"]).detach()
    stepped, update = models.rnn.cell.step_with_update(memories[:, :-1], batch["x"])
    spread = memory_spread(memories[:, 1:])
    compared = update if grid_error == "update" else stepped
    start = relative_memory_error(models.rnn.cell.initial, memories[0, 0], spread)
    expected = (relative_memory_error(compared, memories[:, 1:], spread) * 6 + start) / 7
    torch.testing.assert_close(metrics["dyn"], expected.detach())


def test_the_lstm_cell_is_continuous_and_the_grid_options_say_so(tmp_path, capsys):
    from conftest import assert_user_error, tiny_args
    from smtrnn.cli import main

    assert ModelConfig(cell="lstm").grid_levels() == 0 and ModelConfig(cell="gru").grid_levels() == 5
    assert Models(tiny_model("lstm"), VOCAB, CLASSES).rnn.cell.levels == 0
    out = str(tmp_path / "run")
    code = main(["train", *tiny_args(), "--cell", "lstm", "--memory-levels", "5", "--out", out])
    assert_user_error(code, capsys, "--memory-levels is not read by the lstm cell")
    code = main(["train", *tiny_args(), "--memory-levels", "0", "--round-at-run-time", "--out", out])
    assert_user_error(code, capsys, "--round-at-run-time needs a memory on a grid")
