"""The horizon term of SMT (K-step rollouts from teacher memories), against obvious references:

- K = 1 from every start, nothing detached, is exactly the one-step dynamics term;
- the rollout equals a per-start loop of K cell steps, and is one batch per step (K calls, not T);
- no gradient path crosses more than K cell applications (a spy that tracks depth through autograd);
- its cost at fixed S and K does not grow with T; starts include the empty prefix;
- labels detached (default): no gradient from the horizon reaches the teacher; joint: it does;
- the horizon's readout term equals the readout's cross-entropy on a per-start loop of K steps, and
  trains the cell and the readout through at most K applications, never the teacher.
"""

from __future__ import annotations

import pytest
import torch

from conftest import CELL_NAMES, TIGHT, DepthSpy, all_zero, backward, make_batch, make_models, only
from smtrnn.config import RunConfig
from smtrnn.methods import SMTConfig, smt_loss
from smtrnn.methods.common import masked_cross_entropy, memory_spread, relative_memory_error
from smtrnn.methods.smt import horizon_length, horizon_starts, rolled_readout, rollout, rollout_error
from smtrnn.run import depths


def horizon(k, **extra) -> SMTConfig:
    """Only the horizon term, K steps, no warm-up ramp."""
    return only(c_horizon=1.0, horizon=k, horizon_grow=0, teacher_delay=0, **extra)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_one_step_from_every_start_is_the_dynamics_term(cell):
    models = make_models(cell)
    batch = make_batch(batch=3, length=6)
    x = batch["x"]
    memories = models.teacher.encode(x)
    spread = memory_spread(memories[:, 1:])
    starts = torch.arange(6).expand(3, 6)
    rolled = rollout_error(models.rnn.cell, memories, x, starts, 1, spread)
    one_step = relative_memory_error(models.rnn.cell.step(memories[:, :-1], x), memories[:, 1:], spread)
    torch.testing.assert_close(rolled, one_step, **TIGHT)
    # the same gradient too, into the cell and (through source and label) into the teacher
    gradient = lambda loss: torch.autograd.grad(
        loss, list(models.parameters()), retain_graph=True, allow_unused=True, materialize_grads=True
    )
    torch.testing.assert_close(gradient(rolled), gradient(one_step), **TIGHT)


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm", "transformer"])
def test_rollout_error_equals_a_loop_per_start(cell):
    models = make_models(cell)
    x = make_batch(batch=2, length=9)["x"]
    memories = models.teacher.encode(x).detach()
    spread = memory_spread(memories[:, 1:])
    starts = torch.tensor([[0, 3, 5], [2, 2, 4]])
    k, decay = 4, 0.5
    got = rollout_error(models.rnn.cell, memories, x, starts, k, spread, decay=decay)
    total, weights = 0.0, [decay**i for i in range(k)]
    for step in range(k):
        errors = []
        for b in range(2):
            for s in starts[b].tolist():
                memory = memories[b, s]
                for i in range(step + 1):
                    memory = models.rnn.cell.step(memory, x[b, s + i])
                errors.append((memory - memories[b, s + step + 1]).pow(2).mean())
        total = total + weights[step] * torch.stack(errors).mean() / spread
    torch.testing.assert_close(got, total / sum(weights), **TIGHT)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("burnin", [0, 2])
def test_no_gradient_path_crosses_more_than_k_cell_applications(k, burnin):
    models = make_models("tanh")
    spy = DepthSpy(models.rnn.cell)
    loss, metrics = smt_loss(
        models,
        make_batch(batch=3, length=12),
        SMTConfig(horizon=k, horizon_grow=0, horizon_burnin=burnin, dyn_warmup=0),
    )
    loss.backward()
    assert max(spy.depths) == k  # the one-step term is depth 1; the horizon reaches exactly K
    # burn-in steps run without gradient, then K steps with it, one batched call per step
    horizon_calls = spy.depths[1:]
    assert horizon_calls == ([0] * burnin + list(range(1, k + 1)) if k > 1 or burnin else [])
    assert torch.isfinite(metrics["horizon"])


def test_horizon_cost_does_not_grow_with_the_sequence_length():
    rows = {}
    for length in (16, 64):
        models = make_models("tanh")
        spy = DepthSpy(models.rnn.cell)
        smt_loss(models, make_batch(batch=2, length=length), SMTConfig(horizon=4, horizon_grow=0, horizon_starts=3))
        rows[length] = spy.rows
    # one call for the B*T one-step pairs, then K calls of B*S rows each, whatever T is
    assert rows[16] == [2 * 16] + [2 * 3] * 4
    assert rows[64] == [2 * 64] + [2 * 3] * 4


def test_starts_include_the_empty_prefix_and_stay_inside_the_sequence():
    torch.manual_seed(0)
    starts = horizon_starts(50, 20, 6, 8, "cpu")
    assert starts.shape == (50, 8) and torch.equal(starts[:, 0], torch.zeros(50, dtype=torch.long))
    assert starts.min() >= 0 and starts.max() <= 20 - 6 and len(starts[:, 1:].unique()) == 15


def test_horizon_grows_linearly_from_one():
    config = SMTConfig(horizon=9, horizon_grow=80)
    assert [horizon_length(config, step) for step in (0, 9, 10, 40, 79, 80, 5000)] == [1, 1, 2, 5, 8, 9, 9]
    assert (
        horizon_length(SMTConfig(horizon=9, horizon_grow=0), 0) == 9
        and horizon_length(SMTConfig(horizon=1, horizon_grow=5), 3) == 1
    )


@pytest.mark.parametrize("detach", [True, False])
def test_horizon_reaches_the_teacher_only_through_joint_labels(detach):
    models = make_models("tanh")
    loss, _ = smt_loss(models, make_batch(batch=3, length=10), horizon(4, horizon_detach=detach))
    gradients = backward(models, loss)
    assert not all_zero({n: g for n, g in gradients.items() if n.startswith("rnn.cell.")})
    assert all_zero({n: g for n, g in gradients.items() if n.startswith("teacher.")}) == detach
    assert all_zero({n: g for n, g in gradients.items() if n.startswith("rnn.readout.")})


def test_horizon_longer_than_the_sequence_is_cut_to_it():
    models = make_models("tanh")
    spy = DepthSpy(models.rnn.cell)
    smt_loss(models, make_batch(batch=2, length=5), SMTConfig(horizon=16, horizon_grow=0, horizon_burnin=3))
    assert max(spy.depths) == 5 and spy.depths.count(0) == 0  # K = T leaves no room for a burn-in


def test_reported_gradient_depth_is_the_horizon():
    config = RunConfig(length=64, method="smt+dmt")
    config.smt.horizon = 8
    assert depths(config)["sequential_depth"] == 8 and depths(config)["forward_depth"]["smt"] == 8
    config.smt.horizon = 1
    assert depths(config)["sequential_depth"] == 1
    config.method, config.smt.horizon = "bptt", 8
    assert depths(config)["sequential_depth"] == 64


@pytest.mark.parametrize(
    "step, pull, reaches_teacher", [(0, True, False), (9, True, False), (10, True, True), (1000, False, False)]
)
def test_dynamics_train_only_the_cell_during_the_teacher_delay(step, pull, reaches_teacher):
    """And never, with the pull off (``teacher_pull=False``), whatever the step."""
    models = make_models("tanh")
    batch = make_batch(batch=3, length=8)
    config = only(c_dyn=1.0, c_horizon=1.0, horizon=3, horizon_grow=0, horizon_detach=False, teacher_delay=10)
    config.teacher_pull = pull
    loss, _ = smt_loss(models, batch, config, step=step)
    gradients = backward(models, loss)
    assert not all_zero({n: g for n, g in gradients.items() if n.startswith("rnn.cell.")})
    assert all_zero({n: g for n, g in gradients.items() if n.startswith("teacher.")}) != reaches_teacher


def test_change_weighted_starts_follow_the_teachers_writes():
    """horizon_starts_at="changes": starts land mostly right after the memory moved, never past T - K."""
    memories = torch.zeros(200, 41, 3)
    memories[:, 10:] = 1.0  # one write: m*_10 differs from m*_9, nothing else moves
    starts = horizon_starts(200, 40, 8, 6, "cpu", memories)
    assert torch.equal(starts[:, 0], torch.zeros(200, dtype=torch.long)) and starts.max() <= 40 - 8
    others = starts[:, 1:].flatten()
    assert (others == 10).float().mean() > 0.4  # uniform would give 1 / 33
    assert (others != 10).any()  # the mean change keeps every position possible
    config = SMTConfig(horizon=4, horizon_grow=0, horizon_starts_at="changes", dyn_warmup=0)
    loss, _ = smt_loss(make_models("tanh"), make_batch(batch=3, length=10), config)
    assert torch.isfinite(loss)


def test_the_length_curriculum_grows_smt_sequences_from_a_quarter_of_t(tmp_path):
    from conftest import make_tiny_config
    from smtrnn.methods.smt import sequence_length
    from smtrnn.run import run

    config = SMTConfig(length_grow=100)
    assert [sequence_length(config, 64, step) for step in (0, 50, 99, 100, 10**6)] == [16, 40, 63, 64, 64]
    assert sequence_length(config, 8, 0, shortest=4) == 4 and sequence_length(SMTConfig(length_grow=0), 64, 0) == 64
    # the first length is a quarter of T only up to length_start: T=1,024 starts at 128, not 256
    assert [sequence_length(config, 1024, step) for step in (0, 50, 100)] == [128, 576, 1024]
    assert sequence_length(SMTConfig(length_grow=100, length_start=0), 1024, 0) == 256
    assert sequence_length(config, 512, 0) == 128  # the cap does not bind up to T=512
    seen = []
    run_config = make_tiny_config(method="smt+dmt", steps=4, dmt_steps=2)
    run_config.length, run_config.smt.length_grow = 16, 4
    run(run_config, tmp_path, progress=False, sample_hook=lambda batch: seen.append(batch["x"].shape[1]) or batch)
    assert seen == [4, 7, 10, 13, 16, 16]  # SMT's four steps grow; DMT's two see the whole length


def test_smt_max_length_caps_smts_sequences_and_its_curriculum_not_dmts(tmp_path):
    from conftest import make_tiny_config
    from smtrnn.methods.smt import sequence_length
    from smtrnn.run import run

    assert sequence_length(SMTConfig(length_grow=0, max_length=16), 64, 0) == 16
    assert sequence_length(SMTConfig(length_grow=0, max_length=16), 8, 0) == 8  # T shorter than the cap
    # the curriculum grows from a quarter of the cap to the cap
    assert [sequence_length(SMTConfig(length_grow=100, max_length=16), 64, s) for s in (0, 50, 100)] == [4, 10, 16]
    assert sequence_length(SMTConfig(length_grow=0, max_length=2), 64, 0, shortest=4) == 4
    seen = []
    run_config = make_tiny_config(method="smt+dmt", steps=3, dmt_steps=2)
    run_config.length, run_config.smt.length_grow, run_config.smt.max_length = 16, 0, 6
    run_config.model.future = 1
    run(run_config, tmp_path, progress=False, sample_hook=lambda batch: seen.append(batch["x"].shape[1]) or batch)
    assert seen == [6, 6, 6, 16, 16]


@pytest.mark.parametrize("method", ["smt+dmt", "bptt"])
def test_train_length_trains_every_phase_short_as_a_short_run_does_and_evaluates_at_T(method, tmp_path):
    """--train-length 6 at --length 16: every phase samples sequences of 6 tokens, and the weights are
    bitwise those of the same run at --length 6 (same batches, same steps); the scores are at T=16."""
    from safetensors.torch import load_file

    from conftest import make_tiny_config
    from smtrnn.checkpoint import latest_checkpoint
    from smtrnn.run import run

    runs = {}
    for name, length, train_length in (("short", 6, 0), ("long", 16, 6)):
        config = make_tiny_config(method=method, steps=3, dmt_steps=2)
        config.length, config.train_length, config.smt.length_grow, config.model.future = length, train_length, 0, 2
        seen: list[torch.Tensor] = []
        result = run(
            config, tmp_path / name, progress=False, sample_hook=lambda batch: seen.append(batch["x"]) or batch
        )
        runs[name] = (config, seen, result)
    (short, short_seen, short_result), (long, long_seen, long_result) = runs["short"], runs["long"]
    assert [x.shape[1] for x in long_seen] == [6] * len(short_seen)
    assert all(torch.equal(a, b) for a, b in zip(short_seen, long_seen, strict=True))
    weights = [load_file(latest_checkpoint(tmp_path / name) / "model.safetensors") for name in ("short", "long")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert (short_result["length"], long_result["length"]) == (6, 16)
    assert depths(long) == depths(short)  # the gradient path is the training sequences'


@pytest.mark.parametrize("cell", ["tanh", "gru", "transformer"])
def test_horizon_readout_equals_the_readout_on_a_loop_per_start(cell):
    models = make_models(cell)
    batch = make_batch(batch=2, length=9)
    x, y = batch["x"], batch["y"]
    memories = models.teacher.encode(x).detach()
    starts = torch.tensor([[0, 3, 5], [2, 2, 4]])
    index, rolled, _ = rollout(models.rnn.cell, memories, x, starts, 4)
    got, _ = rolled_readout(models.rnn, rolled, y, index)
    logits, labels = [], []
    for b in range(2):
        for s in starts[b].tolist():
            memory = memories[b, s]
            for i in range(4):
                memory = models.rnn.cell.step(memory, x[b, s + i])
                logits.append(models.rnn.logits(memory))
                labels.append(y[b, s + i])
    expected, _ = masked_cross_entropy(torch.stack(logits), torch.stack(labels))
    torch.testing.assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("k", [1, 3])
def test_horizon_readout_trains_cell_and_readout_through_k_steps_never_the_teacher(k):
    models = make_models("tanh")
    spy = DepthSpy(models.rnn.cell)
    config = only(c_horizon_readout=1.0, horizon=k, horizon_grow=0)
    loss, _ = smt_loss(models, make_batch(batch=3, length=10), config)
    gradients = backward(models, loss)
    assert not all_zero({n: g for n, g in gradients.items() if n.startswith("rnn.cell.")}) == (k > 1)
    assert not all_zero({n: g for n, g in gradients.items() if n.startswith("rnn.readout.")}) == (k > 1)
    assert all_zero({n: g for n, g in gradients.items() if n.startswith("teacher.")})
    assert max(spy.depths) == k
