"""The three methods as pure loss functions, checked against slow, obvious references:

- SMT: one batched cell application per loss call, equal to the per-position loop; the dynamics
  gradient is the sum of independent one-step gradients; where gradients may and may not flow.
- DMT: frozen teacher; with truncate=1 the gradient crosses exactly one cell application.
- BPTT: full and truncated, against a manual step loop (values and gradients, float64).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import (
    CELL_NAMES,
    CLASSES,
    TIGHT,
    VOCAB,
    DepthSpy,
    StepSpy,
    all_zero,
    backward,
    make_batch,
    make_models,
    only,
)
from smtrnn.evaluate import first_prediction_logits
from smtrnn.methods import BPTTConfig, DMTConfig, SMTConfig, bptt_loss, dmt_loss, smt_loss
from smtrnn.methods.common import masked_cross_entropy, uniformity
from smtrnn.methods.smt import future_windows
from smtrnn.tasks.base import IGNORE


def assert_grads_close(left: dict, right: dict, **tolerance):
    assert set(left) == set(right)
    for name in left:
        torch.testing.assert_close(left[name], right[name], **(tolerance or TIGHT), msg=lambda m, n=name: f"{n}: {m}")


def forbid(cell, *names):
    def refuse(*_, **__):
        raise AssertionError("this method must not be used here")

    for name in names:
        setattr(cell, name, refuse)


# ================================================================================================
# common pieces


def test_masked_cross_entropy_ignores_unlabelled_positions():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, CLASSES, generator=generator, dtype=torch.float64)
    targets = torch.tensor([[0, IGNORE, 3, IGNORE, 1], [IGNORE, 2, IGNORE, IGNORE, 4]])
    loss, accuracy = masked_cross_entropy(logits, targets)
    labelled = targets != IGNORE
    expected = F.cross_entropy(logits[labelled], targets[labelled])
    torch.testing.assert_close(loss, expected, **TIGHT)
    correct = (logits[labelled].argmax(-1) == targets[labelled]).double().mean()
    torch.testing.assert_close(accuracy.double(), correct)
    # anything at unlabelled positions changes neither the loss nor the accuracy
    scrambled = logits.clone()
    scrambled[~labelled] = 100 * torch.randn(int((~labelled).sum()), CLASSES, dtype=torch.float64)
    torch.testing.assert_close(masked_cross_entropy(scrambled, targets)[0], loss, **TIGHT)
    assert masked_cross_entropy(scrambled, targets)[1] == accuracy
    # and receives no gradient
    leaf = logits.clone().requires_grad_(True)
    masked_cross_entropy(leaf, targets)[0].backward()
    assert leaf.grad[~labelled].abs().max() == 0 and leaf.grad[labelled].abs().max() > 0


def test_masked_cross_entropy_weights_and_empty_labels():
    logits = torch.randn(3, 4, CLASSES, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, CLASSES, (3, 4), generator=torch.Generator().manual_seed(2))
    targets[0, 1] = IGNORE
    weights = torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=torch.float64).expand(3, 4)
    loss, _ = masked_cross_entropy(logits, targets, weights)
    each = F.cross_entropy(logits.reshape(-1, CLASSES), targets.reshape(-1).clamp(min=0), reduction="none").reshape(
        3, 4
    )
    mask = (targets != IGNORE).double() * weights
    torch.testing.assert_close(loss, (each * mask).sum() / mask.sum(), **TIGHT)
    # nothing labelled: zero loss, still differentiable
    leaf = logits.clone().requires_grad_(True)
    empty, accuracy = masked_cross_entropy(leaf, torch.full_like(targets, IGNORE))
    assert empty.item() == 0 and accuracy.item() == 0
    empty.backward()
    assert leaf.grad.abs().max() == 0


def test_uniformity_prefers_spread_out_memories():
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(64, 8, generator=generator, dtype=torch.float64)
    collapsed = torch.ones(64, 8, dtype=torch.float64) + 1e-3 * torch.randn(
        64, 8, generator=generator, dtype=torch.float64
    )
    assert uniformity(spread, 1) < uniformity(collapsed, 1) - 1.0
    torch.testing.assert_close(
        uniformity(collapsed * 0 + 1, 1), torch.tensor(0.0, dtype=torch.float64), atol=1e-9, rtol=0
    )
    # the value against a direct O(N^2) loop
    units = F.normalize(spread[:10], dim=-1)
    terms = [math.exp(-2 * (units[a] - units[b]).pow(2).sum().item()) for a in range(10) for b in range(10) if a != b]
    assert uniformity(spread[:10], 1).item() == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-9)
    # per memory token: two tokens that always point the same way within a memory count as spread
    # out across memories when the memories differ
    assert uniformity(spread, 2) < uniformity(collapsed, 2) - 1.0
    # scale does not matter (unit-normalised)
    torch.testing.assert_close(uniformity(spread[:20], 1), uniformity(7 * spread[:20], 1), **TIGHT)


# ================================================================================================
# SMT


def slow_future_windows(x, y, future):
    B, T = x.shape
    steps = future - 1
    inputs = torch.zeros(B, T + 1, steps, dtype=torch.long)
    targets = torch.full((B, T + 1, steps + 1), IGNORE, dtype=torch.long)
    for b in range(B):
        for t in range(T + 1):  # memory index t has seen x_1..x_t (1-based)
            for k in range(steps):  # input x_{t+1+k} (1-based) = x[t+k] (0-based)
                if t + k < T:
                    inputs[b, t, k] = x[b, t + k]
            for k in range(steps + 1):  # target y_{t+k} (1-based) = y[t+k-1] (0-based), none for t+k=0
                if 1 <= t + k <= T:
                    targets[b, t, k] = y[b, t + k - 1]
    return inputs, targets


@pytest.mark.parametrize("future", [1, 2, 4, 9])
def test_future_windows_against_slow_reference(future):
    batch = make_batch(batch=2, length=7, seed=future)
    inputs, targets = future_windows(batch["x"], batch["y"], future)
    slow_inputs, slow_targets = slow_future_windows(batch["x"], batch["y"], future)
    assert inputs.shape == (2, 8, future - 1) and targets.shape == (2, 8, future)
    assert torch.equal(targets, slow_targets)
    # inputs past the end of the sequence are padding: only those that predict a real label matter
    for k in range(future - 1):
        real = slow_targets[:, :, k + 1] != IGNORE
        assert torch.equal(inputs[:, :, k][real], slow_inputs[:, :, k][real])
    valid = torch.arange(8)[:, None] + torch.arange(future - 1)[None] < 7
    assert torch.equal(inputs[:, valid], slow_inputs[:, valid])


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_smt_applies_the_cell_exactly_once(cell):
    models = make_models(cell)
    spy = StepSpy(models.rnn.cell)
    forbid(models.rnn.cell, "forward", "rollout")
    batch = make_batch(batch=3, length=6)
    loss, metrics = smt_loss(models, batch, SMTConfig(horizon=1))  # the paper's loss; the horizon: test_horizon.py
    assert spy.calls == 1
    loss.backward()
    assert spy.calls == 1  # backward does not step again
    memory, token = spy.inputs[0]
    assert memory.shape == (3, 6, models.config.memory_size) and torch.equal(token, batch["x"])
    assert torch.isfinite(loss)
    assert {"pred", "dyn", "unif", "readout"} <= set(metrics)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_smt_batched_step_equals_the_sequential_loop(cell):
    """The single batched application computes f(m*_t, x_{t+1}) for every t, as a loop would."""
    models = make_models(cell)
    batch = make_batch(batch=3, length=5)
    spy = StepSpy(models.rnn.cell)
    smt_loss(models, batch, SMTConfig(horizon=1))
    batched = spy.outputs[0]
    memories = models.teacher.encode(batch["x"]).detach()
    # the inputs were the teacher memories m*_0..m*_{T-1}, paired with x_1..x_T
    torch.testing.assert_close(spy.inputs[0][0], memories[:, :-1], **TIGHT)
    for t in range(5):
        one = spy.original(memories[:, t], batch["x"][:, t])
        torch.testing.assert_close(batched[:, t], one.detach(), **TIGHT)


def flat_gradient(gradients: dict, names) -> torch.Tensor:
    return torch.cat([gradients[name].reshape(-1) for name in names])


@pytest.mark.parametrize("cell", ["tanh", "lstm", "transformer"])
def test_smt_dynamics_gradient_is_the_sum_of_independent_one_step_gradients(cell):
    """With the target detached, the cell's gradient from the dynamics term is (a positive multiple,
    the loss's normalisation, of) the sum over transitions of the gradient of
    ||f(m*_t, x_{t+1}) - m*_{t+1}||^2, each from its own single step on constant teacher memories:
    no gradient path through more than one cell application, no coupling between positions."""
    models = make_models(cell)
    batch = make_batch(batch=2, length=4)
    x = batch["x"]
    loss, metrics = smt_loss(models, batch, only(c_dyn=1.0, detach_target=True))
    got = backward(models, loss)

    cell_module = models.rnn.cell
    memories = models.teacher.encode(x).detach()  # the teacher's memories: constants for the cell
    names = [n for n, p in cell_module.named_parameters() if n != "initial"]  # initial: the m_0 term
    reference = {n: torch.zeros_like(p) for n, p in cell_module.named_parameters()}
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            models.zero_grad(set_to_none=True)
            # one independent cell application per transition (m*_t, x_{t+1}) -> m*_{t+1}
            step = cell_module.step(memories[b, t][None], x[b, t][None])[0]
            (step - memories[b, t + 1]).pow(2).sum().backward()
            for name, p in cell_module.named_parameters():
                if p.grad is not None:
                    reference[name] += p.grad
    smt_grad = flat_gradient({n[len("rnn.cell.") :]: g for n, g in got.items() if n.startswith("rnn.cell.")}, names)
    reference_grad = flat_gradient(reference, names)
    assert reference_grad.abs().max() > 0
    scale = (smt_grad @ reference_grad) / (reference_grad @ reference_grad)
    assert scale > 0
    torch.testing.assert_close(smt_grad, scale * reference_grad, rtol=1e-8, atol=1e-12)
    # and a genuinely different gradient is told apart by this check: through two steps
    models.zero_grad(set_to_none=True)
    two = cell_module.step(cell_module.step(memories[:, :-2], x[:, :-1]), x[:, 1:])
    (two - memories[:, 2:]).pow(2).sum().backward()
    deep = flat_gradient({n: p.grad for n, p in cell_module.named_parameters() if n != "initial"}, names)
    assert not torch.allclose(
        deep, (deep @ reference_grad) / (reference_grad @ reference_grad) * reference_grad, rtol=1e-3, atol=1e-9
    )

    # with the target detached and the teacher input part of the graph, the dynamics loss still
    # shapes the teacher through m*_t; the readout receives nothing from it
    assert not all_zero({n: g for n, g in got.items() if n.startswith("teacher.")})
    assert all_zero({n: g for n, g in got.items() if n.startswith("rnn.readout.")})
    torch.testing.assert_close(loss.detach(), metrics["dyn"], **TIGHT)


@pytest.mark.parametrize("detach_target", [False, True])
def test_smt_dynamics_gradient_through_the_target_only_when_not_detached(detach_target):
    """Cut the path through the input m*_t (the cell sees a detached memory): what reaches the
    teacher then can only come through the label m*_{t+1}."""
    models = make_models("tanh")
    StepSpy(models.rnn.cell, transform=lambda memory: memory.detach())
    loss, _ = smt_loss(models, make_batch(), only(c_dyn=1.0, detach_target=detach_target))
    teacher_grads = {n: g for n, g in backward(models, loss).items() if n.startswith("teacher.")}
    assert all_zero(teacher_grads) == detach_target


@pytest.mark.parametrize("cell", ["tanh", "transformer"])
def test_smt_readout_is_trained_on_detached_memories(cell):
    models = make_models(cell)
    loss, metrics = smt_loss(models, make_batch(), only(c_readout=1.0))
    got = backward(models, loss)
    assert all_zero({n: g for n, g in got.items() if not n.startswith("rnn.readout.")})
    assert not all_zero({n: g for n, g in got.items() if n.startswith("rnn.readout.")})
    torch.testing.assert_close(loss.detach(), metrics["readout"], **TIGHT)


@pytest.mark.parametrize("step, reaches_teacher", [(0, False), (20, True)])
def test_smt_readout_grad_trains_the_cell_through_one_step_only(step, reaches_teacher):
    """readout_grad: the one-step readout term also trains the cell (one application), and reaches the
    teacher only once the dynamics may move it; the loss value is unchanged."""
    models = make_models("tanh")
    batch = make_batch()
    config = only(c_readout=1.0, readout_grad=True, teacher_delay=10)
    loss, _ = smt_loss(models, batch, config, step=step)
    torch.testing.assert_close(loss, smt_loss(models, batch, only(c_readout=1.0), step=step)[0], **TIGHT)
    got = backward(models, loss)
    assert not all_zero({n: g for n, g in got.items() if n.startswith("rnn.cell.")})
    assert all_zero({n: g for n, g in got.items() if n.startswith("teacher.")}) != reaches_teacher


def test_smt_readout_loss_value():
    """readout = mean of CE on teacher memories m*_t and on one step f(m*_{t-1}, x_t)."""
    models = make_models("lstm")
    batch = make_batch()
    loss, _ = smt_loss(models, batch, only(c_readout=1.0))
    memories = models.teacher.encode(batch["x"])
    on_teacher = masked_cross_entropy(models.rnn.logits(memories[:, 1:]), batch["y"])[0]
    on_step = masked_cross_entropy(models.rnn.logits(models.rnn.cell.step(memories[:, :-1], batch["x"])), batch["y"])[0]
    torch.testing.assert_close(loss, 0.5 * (on_teacher + on_step), **TIGHT)


@pytest.mark.parametrize("future", [3, 1])  # Tf=1: the decoder reads y_t from the memory alone, no inputs
def test_smt_predictive_loss_trains_only_the_teacher_and_matches_a_reference(future):
    models = make_models("tanh", future=future)
    batch = make_batch(batch=2, length=5)
    loss, metrics = smt_loss(models, batch, only(c_pred=1.0, gamma=0.5))
    got = backward(models, loss)
    assert all_zero({n: g for n, g in got.items() if n.startswith("rnn.")})
    assert not all_zero({n: g for n, g in got.items() if n.startswith("teacher.")})
    # reference: decode each memory index separately, gamma-weighted mean over labelled targets
    memories = models.teacher.encode(batch["x"])
    inputs, targets = slow_future_windows(batch["x"], batch["y"], future)
    numerator = denominator = 0.0
    for b in range(2):
        for t in range(6):
            logits = models.teacher.decode(memories[b, t][None], inputs[b, t][None])[0]
            for k in range(future):
                if targets[b, t, k] != IGNORE:
                    numerator = numerator + 0.5**k * F.cross_entropy(logits[k], targets[b, t, k])
                    denominator += 0.5**k
    torch.testing.assert_close(metrics["pred"], (numerator / denominator).detach(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cell", ["tanh", "transformer"])
def test_smt_decoder_positions_pick_labelled_windows_consistently(cell):
    """With decoder_positions=2 and a label only at the last step (future 2), exactly the two windows
    holding it (memory indices T-1 and T) are decoded, with their own memories and inputs: the
    predictive loss equals the one over all positions."""
    models = make_models(cell, future=2)
    batch = make_batch(batch=3, length=6)
    batch["y"][:, :-1] = IGNORE
    batch["y"][:, -1] = torch.tensor([0, 3, 1])
    full = smt_loss(models, batch, only(c_pred=1.0))[1]["pred"]
    for seed in range(3):
        torch.manual_seed(seed)
        subset = smt_loss(models, batch, only(c_pred=1.0, decoder_positions=2))[1]["pred"]
        torch.testing.assert_close(subset, full, **TIGHT)
    # a subset that must leave out labelled windows gives another value (the check can fail)
    batch["y"][:, 2] = 4
    full = smt_loss(models, batch, only(c_pred=1.0))[1]["pred"]
    torch.manual_seed(0)
    assert not torch.allclose(smt_loss(models, batch, only(c_pred=1.0, decoder_positions=1))[1]["pred"], full)


def test_smt_uniformity_term_is_the_uniformity_of_the_teacher_memories():
    models = make_models("transformer")
    batch = make_batch(batch=2, length=5)
    loss, metrics = smt_loss(models, batch, only(c_unif=1.0))
    memories = models.teacher.encode(batch["x"])
    expected = uniformity(memories[:, 1:], models.rnn.cell.memory_tokens)
    torch.testing.assert_close(metrics["unif"], expected.detach(), **TIGHT)
    got = backward(models, loss)
    assert all_zero({n: g for n, g in got.items() if n.startswith("rnn.")})
    assert not all_zero({n: g for n, g in got.items() if n.startswith("teacher.")})


# ================================================================================================
# DMT


def test_dmt_teacher_receives_no_gradient():
    models = make_models("tanh")
    loss, _ = dmt_loss(models, make_batch(), DMTConfig())
    got = backward(models, loss)
    assert all_zero({n: g for n, g in got.items() if n.startswith("teacher.")})
    assert not all_zero({n: g for n, g in got.items() if n.startswith("rnn.cell.")})


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm", "mlp"])
def test_dmt_truncate_1_gradient_crosses_exactly_one_step(cell):
    """truncate=1 gives exactly the gradient of the same loss in which every cell application sees
    a detached memory (single steps from the detached rollout memories), and truncate=2 does not."""
    models = make_models(cell)
    batch = make_batch(batch=3, length=6)
    config = DMTConfig(c_dyn=2.0, c_readout=0.5, every=1, truncate=1)
    spy = StepSpy(models.rnn.cell)
    loss, metrics = dmt_loss(models, batch, config)
    got = backward(models, loss)
    # the rollout runs on the RNN's own memories, from m_0: the step inputs are its own outputs
    models.rnn.cell.step_with_update = spy.raw
    assert spy.calls == 6
    with torch.no_grad():
        rolled = models.rnn.cell.rollout(batch["x"])
    torch.testing.assert_close(torch.stack(spy.outputs, 1), rolled, **TIGHT)
    torch.testing.assert_close(spy.inputs[0][0], models.rnn.cell.initial_memory(3).detach(), **TIGHT)
    for t in range(1, 6):
        torch.testing.assert_close(spy.inputs[t][0], rolled[:, t - 1], **TIGHT)

    # reference: the same loss with every cell input detached (gradient depth one by construction)
    detached = StepSpy(models.rnn.cell, transform=lambda memory: memory.detach())
    reference_loss, reference_metrics = dmt_loss(models, batch, config)
    reference = backward(models, reference_loss)
    models.rnn.cell.step_with_update = detached.raw
    torch.testing.assert_close(loss.detach(), reference_loss.detach(), **TIGHT)
    torch.testing.assert_close(metrics["dyn"], reference_metrics["dyn"], **TIGHT)
    assert_grads_close(got, reference)
    assert not all_zero({n: g for n, g in got.items() if n.startswith("rnn.cell.")})

    # truncate=2: same values, but gradients that cross two steps, which the check above tells apart
    deeper, _ = dmt_loss(models, batch, DMTConfig(c_dyn=2.0, c_readout=0.5, every=1, truncate=2))
    deeper_grads = backward(models, deeper)
    torch.testing.assert_close(deeper.detach(), reference_loss.detach(), **TIGHT)
    assert not torch.allclose(
        deeper_grads["rnn.cell.embed.weight"], reference["rnn.cell.embed.weight"], rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize("every", [1, 4])
def test_dmt_readout_grad_trains_the_cell_through_one_step_with_the_same_loss(every):
    """readout_grad: the readout's term on the rollout reaches the cell, through one application per
    memory (each step's input is detached), and the loss value is unchanged; off, only the readout."""
    models = make_models("tanh")
    batch = make_batch(batch=3, length=8)
    plain, _ = dmt_loss(models, batch, DMTConfig(c_dyn=0.0, every=every))
    assert all_zero({n: g for n, g in backward(models, plain).items() if n.startswith("rnn.cell.")})
    spy = DepthSpy(models.rnn.cell)
    loss, _ = dmt_loss(models, batch, DMTConfig(c_dyn=0.0, every=every, readout_grad=True))
    torch.testing.assert_close(loss, plain, **TIGHT)
    got = backward(models, loss)
    assert not all_zero({n: g for n, g in got.items() if n.startswith("rnn.cell.")})
    assert all_zero({n: g for n, g in got.items() if n.startswith("teacher.")})
    assert spy.depths == [1] * 8  # every step under grad, none deeper than one application


@pytest.mark.parametrize("every", [1, 2, 3, 7])
def test_dmt_every_k_supervises_k_times_fewer_memories(every):
    models = make_models("gru")
    length = 12
    outputs = []

    class HookedSpy(StepSpy):
        def __call__(self, memory, token):
            out = super().__call__(memory, token)
            if out[0].requires_grad:
                out[0].retain_grad()
            outputs.append(out[0])
            return out

    spy = HookedSpy(models.rnn.cell)
    forbid(models.rnn.cell, "forward")
    loss, _ = dmt_loss(models, make_batch(length=length), DMTConfig(every=every, truncate=1, c_readout=0.0))
    assert spy.calls == length  # the rollout steps through every token, forward only where unsupervised
    assert spy.grad_calls == length // every
    loss.backward()
    # exactly the memories m^_t with t = k, 2k, ... receive a gradient from the dynamics loss
    supervised = [t for t, out in enumerate(outputs) if out.grad is not None and out.grad.abs().max() > 0]
    assert supervised == [t for t in range(length) if (t + 1) % every == 0]


def test_dmt_start_teacher_begins_from_a_teacher_memory():
    models = make_models("tanh")
    batch = make_batch(batch=2, length=10)
    expert = models.teacher.encode(batch["x"]).detach()
    begins = set()
    for seed in range(6):
        torch.manual_seed(seed)
        spy = StepSpy(models.rnn.cell)
        dmt_loss(models, batch, DMTConfig(start="teacher", rollout=4))
        models.rnn.cell.step_with_update = spy.raw
        assert spy.calls == 4
        first_memory, first_token = spy.inputs[0]
        matches = [s for s in range(0, 10 - 4 + 1) if torch.equal(first_memory, expert[:, s])]
        assert len(matches) == 1, "the rollout must start from a teacher memory m*_s"
        begin = matches[0]
        assert torch.equal(first_token, batch["x"][:, begin])  # m*_s is followed by x_{s+1}
        begins.add(begin)
    assert len(begins) > 1  # the start is drawn at random
    # the default starts from the RNN's own m_0
    spy = StepSpy(models.rnn.cell)
    dmt_loss(models, batch, DMTConfig())
    torch.testing.assert_close(spy.inputs[0][0], models.rnn.cell.initial_memory(2).detach(), rtol=0, atol=0)


def test_dmt_distill_is_the_kl_from_the_teachers_first_prediction_and_trains_only_the_rnn():
    """c_distill adds KL(teacher || RNN) over the labelled positions: the teacher's first decoder
    prediction from m*_t against the RNN's readout on its rollout memory after the same token."""
    models = make_models("gru")
    batch = make_batch(batch=3, length=8)
    batch["y"][0, 2] = IGNORE  # an unlabelled position is left out
    base, terms = dmt_loss(models, batch, DMTConfig())
    assert "distill" not in terms
    loss, terms = dmt_loss(models, batch, DMTConfig(c_distill=0.5))
    with torch.no_grad():
        expert = models.teacher.encode(batch["x"])
        teacher = first_prediction_logits(models.teacher, expert, batch["y"]).log_softmax(-1)
        rnn = models.rnn.logits(models.rnn.cell.rollout(batch["x"]))[batch["y"] != IGNORE].log_softmax(-1)
    reference = (teacher.exp() * (teacher - rnn)).sum(-1).mean()
    assert reference > 0
    torch.testing.assert_close(terms["distill"], reference, **TIGHT)
    torch.testing.assert_close(loss, base + 0.5 * reference, **TIGHT)
    # alone, the term trains the readout (and the cell only with readout_grad), never the teacher
    alone, _ = dmt_loss(models, batch, DMTConfig(c_dyn=0.0, c_readout=0.0, c_distill=1.0))
    got = backward(models, alone)
    assert all_zero({n: g for n, g in got.items() if n.startswith("teacher.")})
    assert all_zero({n: g for n, g in got.items() if n.startswith("rnn.cell.")})
    assert not all_zero({n: g for n, g in got.items() if n.startswith("rnn.readout")})
    alone, _ = dmt_loss(models, batch, DMTConfig(c_dyn=0.0, c_readout=0.0, c_distill=1.0, readout_grad=True))
    assert not all_zero({n: g for n, g in backward(models, alone).items() if n.startswith("rnn.cell.")})


# ================================================================================================
# BPTT


def manual_bptt(models, batch):
    rnn = models.rnn
    memory = rnn.cell.initial_memory(batch["x"].shape[0])
    logits = []
    for t in range(batch["x"].shape[1]):
        memory = rnn.cell.step(memory, batch["x"][:, t])
        logits.append(rnn.logits(memory))
    logits = torch.stack(logits, 1)
    labelled = batch["y"] != IGNORE
    return F.cross_entropy(logits[labelled], batch["y"][labelled])


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_bptt_equals_a_manual_step_loop(cell):
    models = make_models(cell)
    batch = make_batch(batch=3, length=7)
    loss, metrics = bptt_loss(models, batch, BPTTConfig(truncate=0))
    got = backward(models, loss)
    reference_loss = manual_bptt(models, batch)
    reference = backward(models, reference_loss)
    torch.testing.assert_close(loss.detach(), reference_loss.detach(), **TIGHT)
    assert_grads_close(got, reference)
    assert all_zero({n: g for n, g in got.items() if n.startswith("teacher.")})
    assert 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("cell", ["tanh", "lstm"])
@pytest.mark.parametrize("window", [7, 8, 100])
def test_truncated_bptt_with_a_long_window_is_full_bptt(cell, window):
    models = make_models(cell)
    batch = make_batch(batch=3, length=7)
    full = bptt_loss(models, batch, BPTTConfig(truncate=0))[0]
    full_grads = backward(models, full)
    truncated = bptt_loss(models, batch, BPTTConfig(truncate=window))[0]
    torch.testing.assert_close(truncated.detach(), full.detach(), **TIGHT)
    assert_grads_close(backward(models, truncated), full_grads)


@pytest.mark.parametrize("cell", ["tanh", "gru", "lstm", "transformer"])
def test_truncated_bptt_cuts_the_gradient_at_window_boundaries(cell):
    models = make_models(cell)
    length, window = 8, 3
    x = torch.randint(1, VOCAB, (2, length), generator=torch.Generator().manual_seed(0))
    x[:, 0] = 0  # token 0 appears only at the first position
    y = torch.full_like(x, IGNORE)
    y[:, -1] = torch.tensor([1, 2])  # one label, at the end, in the last window
    batch = {"x": x, "y": y}
    truncated = bptt_loss(models, batch, BPTTConfig(truncate=window))[0]
    full = bptt_loss(models, batch, BPTTConfig(truncate=0))[0]
    # same values (detaching does not change the forward pass) ...
    torch.testing.assert_close(truncated.detach(), full.detach(), **TIGHT)
    # ... but the early embedding gets nothing from the late label across a window boundary
    embedding = backward(models, truncated)["rnn.cell.embed.weight"]
    assert embedding[0].abs().max() == 0
    assert backward(models, full)["rnn.cell.embed.weight"][0].abs().max() > 0
    # while tokens inside the last window do get a gradient
    assert embedding[x[0, -1]].abs().max() > 0


def test_truncated_bptt_equals_a_manual_windowed_loop():
    models = make_models("gru")
    batch = make_batch(batch=2, length=8)
    loss = bptt_loss(models, batch, BPTTConfig(truncate=3))[0]
    got = backward(models, loss)
    rnn, x, y = models.rnn, batch["x"], batch["y"]
    memory, logits = rnn.cell.initial_memory(2), []
    for t in range(8):
        if t % 3 == 0 and t:
            memory = memory.detach()
        memory = rnn.cell.step(memory, x[:, t])
        logits.append(rnn.logits(memory))
    logits = torch.stack(logits, 1)
    labelled = y != IGNORE
    reference_loss = F.cross_entropy(logits[labelled], y[labelled])
    torch.testing.assert_close(loss.detach(), reference_loss.detach(), **TIGHT)
    assert_grads_close(got, backward(models, reference_loss))
