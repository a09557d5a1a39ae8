"""Windowed SMT for crops of a long stream (docs/method.md section 3, windowed mode) and DMT over such crops (docs/method.md section 5).

With context Tc and future Tf, a crop x_1..x_L (L >= Tc + Tf - 1) trains the teacher's encoder, the
dynamics and the readout on x_1..x_Tc only; the decoder's true futures of m*_0..m*_Tc reach up to
x_{Tc+Tf-1}. So tokens from index Tc + Tf - 1 (0-based) on change nothing, and tokens in
[Tc, Tc + Tf - 1) change the decoder loss only.
"""

from __future__ import annotations

import pytest
import torch

import smtrnn.methods.table as phases_module
from conftest import TIGHT, TINY, VOCAB, StepSpy, assert_user_error, backward, make_batch, make_models
from smtrnn.cli import main
from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.methods import DMTConfig, SMTConfig, dmt_loss, smt_loss
from smtrnn.methods.common import masked_cross_entropy, memory_spread, relative_memory_error
from smtrnn.run import run

CONTEXT, FUTURE = 5, 3
NEEDED = CONTEXT + FUTURE - 1  # tokens of a crop that a windowed loss can see
WINDOWED = SMTConfig(context=CONTEXT, decoder_positions=3, dyn_warmup=0)


def windowed_loss(models, batch, config=WINDOWED, seed=0):
    """Loss, metrics and gradients, the positions drawn from the same seed every time."""
    torch.manual_seed(seed)
    loss, metrics = smt_loss(models, batch, config)
    return loss.detach(), metrics, backward(models, loss)


def changed(batch, start, stop, seed=7):
    """The batch with new tokens and labels at indices [start, stop)."""
    generator = torch.Generator().manual_seed(seed)
    x, y = batch["x"].clone(), batch["y"].clone()
    x[:, start:stop] = (
        x[:, start:stop] + 1 + torch.randint(0, VOCAB - 1, x[:, start:stop].shape, generator=generator)
    ) % VOCAB
    y[:, start:stop] = (y[:, start:stop] + 2) % 5  # labels present everywhere in this window, all new
    return {"x": x, "y": y}


def assert_same(left, right, names):
    for name in names:
        assert torch.equal(left[name], right[name]), name


def test_context_zero_is_all_prefix_and_a_crop_of_exactly_tc_tokens_equals_it():
    """context=0 is the default and reads every prefix; a crop of exactly Tc tokens under context Tc
    is the same loss bit for bit (futures past the crop's end are padding in both)."""
    assert SMTConfig().context == 0
    models = make_models("tanh", future=FUTURE)
    batch = make_batch(batch=3, length=CONTEXT)
    all_prefix = windowed_loss(models, batch, SMTConfig(decoder_positions=3, dyn_warmup=0))
    exact = windowed_loss(models, batch, WINDOWED)
    assert torch.equal(all_prefix[0], exact[0])
    assert_same(all_prefix[1], exact[1], all_prefix[1])
    assert_same(all_prefix[2], exact[2], all_prefix[2])


@pytest.mark.parametrize("cell", ["tanh", "transformer"])
def test_tokens_past_context_plus_future_change_nothing(cell):
    models = make_models(cell, future=FUTURE)
    batch = make_batch(batch=3, length=NEEDED + 4)
    loss, metrics, gradients = windowed_loss(models, batch)
    other_loss, other_metrics, other_gradients = windowed_loss(models, changed(batch, NEEDED, NEEDED + 4))
    assert torch.equal(loss, other_loss)
    assert_same(metrics, other_metrics, metrics)
    assert_same(gradients, other_gradients, gradients)
    # the check can fail: one token earlier is inside the decoder's reach
    moved = windowed_loss(models, changed(batch, NEEDED - 1, NEEDED))[1]
    assert not torch.equal(moved["pred"], metrics["pred"])


def test_tokens_between_context_and_its_futures_change_only_the_decoder_loss():
    models = make_models("tanh", future=FUTURE)
    batch = make_batch(batch=3, length=NEEDED)
    loss, metrics, gradients = windowed_loss(models, batch)
    other_loss, other_metrics, other_gradients = windowed_loss(models, changed(batch, CONTEXT, NEEDED))
    assert not torch.equal(metrics["pred"], other_metrics["pred"])
    assert_same(metrics, other_metrics, ["dyn", "unif", "readout", "readout_acc", "one_step_acc"])
    # the RNN learns only from the first Tc tokens: its gradients are the same bit for bit
    assert_same(gradients, other_gradients, [name for name in gradients if name.startswith("rnn.")])
    assert not torch.equal(gradients["teacher.head.weight"], other_gradients["teacher.head.weight"])


def test_the_encoder_sees_exactly_context_tokens_and_the_cell_runs_once():
    models = make_models("gru", future=FUTURE)
    batch = make_batch(batch=2, length=NEEDED + 2)
    encoded, encode = [], models.teacher.encode
    models.teacher.encode = lambda x: encoded.append(x.clone()) or encode(x)
    spy = StepSpy(models.rnn.cell)
    loss, _ = smt_loss(models, batch, WINDOWED)
    loss.backward()
    assert len(encoded) == 1 and torch.equal(encoded[0], batch["x"][:, :CONTEXT])
    assert spy.calls == 1  # all Tc transitions in one batched application
    memory, token = spy.inputs[0]
    assert memory.shape == (2, CONTEXT, models.config.memory_size) and torch.equal(token, batch["x"][:, :CONTEXT])


def test_decoder_positions_are_drawn_among_the_context_memories(monkeypatch):
    """Sampled among m*_0..m*_Tc (the last one included), each window cut from the whole crop."""
    import smtrnn.methods.smt as smt_module

    drawn, choose = [], smt_module.choose_positions
    monkeypatch.setattr(
        smt_module,
        "choose_positions",
        lambda targets, count: drawn.append((targets.shape, choose(targets, count))) or drawn[-1][1],
    )
    models = make_models("tanh", future=FUTURE)
    batch = make_batch(batch=2, length=NEEDED + 3)
    for seed in range(8):
        windowed_loss(models, batch, seed=seed)
    assert {shape for shape, _ in drawn} == {(2, CONTEXT + 1, FUTURE)}
    indices = torch.cat([index.reshape(-1) for _, index in drawn])
    assert indices.min() >= 0 and indices.max() == CONTEXT


def test_validation_names_the_numbers():
    config = RunConfig(length=NEEDED - 1, smt=SMTConfig(context=CONTEXT))
    config.model.future = FUTURE
    with pytest.raises(UserError, match=f"context {CONTEXT}.*future {FUTURE}.*>= {NEEDED}.*got {NEEDED - 1}"):
        config.validate()
    config.length = NEEDED
    config.validate()
    with pytest.raises(UserError, match="context"):
        RunConfig(smt=SMTConfig(context=-1)).validate()


def test_cli_has_the_context_option_and_refuses_a_short_crop(tmp_path, capsys):
    code = main(["train", *TINY, "--smt-context", "8", "--out", str(tmp_path / "run")])  # TINY: length 8, future 2
    assert_user_error(code, capsys, "context 8", ">= 9", "got 8")


# ================================================================================================
# DMT over a crop: a rollout of Td steps from a teacher memory, every k-th memory supervised


def test_dmt_rollout_from_a_teacher_memory_matches_a_reference():
    models = make_models("tanh")
    batch = make_batch(batch=2, length=10)
    x, y = batch["x"], batch["y"]
    config = DMTConfig(start="teacher", rollout=4, every=2, c_readout=0.5)
    spy = StepSpy(models.rnn.cell)
    loss, metrics = dmt_loss(models, batch, config)
    models.rnn.cell.step = spy.original
    expert = models.teacher.encode(x).detach()
    begin = next(s for s in range(7) if torch.equal(spy.inputs[0][0], expert[:, s]))
    memory, rollout, errors = expert[:, begin], [], []
    spread = memory_spread(expert[:, 1:])
    for offset in range(4):
        memory = models.rnn.cell.step(memory, x[:, begin + offset])
        rollout.append(memory)
        if offset % 2 == 1:  # m^_{s+2}, m^_{s+4}: every second memory
            errors.append(relative_memory_error(memory, expert[:, begin + offset + 1], spread))
    dyn = sum(errors) / len(errors)  # the mean over the supervised memories, nothing else
    readout = masked_cross_entropy(models.rnn.logits(torch.stack(rollout, 1)), y[:, begin : begin + 4])[0]
    torch.testing.assert_close(metrics["dyn"], dyn.detach(), **TIGHT)
    torch.testing.assert_close(loss.detach(), (dyn + 0.5 * readout).detach(), **TIGHT)


def test_dmt_without_the_pull_encodes_only_the_prefix_its_rollout_reaches(monkeypatch):
    models = make_models("tanh")
    batch = make_batch(batch=2, length=10)
    config = DMTConfig(c_dyn=0.0, rollout=4, truncate=4, readout_grad=True)
    seen, encode = [], models.teacher.encode
    monkeypatch.setattr(models.teacher, "encode", lambda x: seen.append(x.shape[1]) or encode(x))
    loss, _ = dmt_loss(models, batch, config)
    other = {**batch, "x": batch["x"].clone()}
    other["x"][:, 4:] = (other["x"][:, 4:] + 1) % VOCAB  # other tokens past the rollout: the same loss
    torch.testing.assert_close(dmt_loss(models, other, config)[0], loss, **TIGHT)
    dmt_loss(models, batch, DMTConfig(rollout=4))  # the pull is relative to the spread of all T memories
    assert seen == [4, 4, 10]


def test_smt_then_dmt_rolls_out_within_the_teacher_context(tmp_path, monkeypatch):
    """A windowed teacher never encoded more than Tc tokens: DMT's crops are cut to them."""
    seen = []
    monkeypatch.setattr(
        phases_module,
        "dmt_loss",
        lambda models, batch, config, step: seen.append(batch["x"].shape) or dmt_loss(models, batch, config, step),
    )
    config = RunConfig(
        task="parity",
        length=NEEDED + 1,
        method="smt+dmt",
        eval_batches=1,
        smt=SMTConfig(context=CONTEXT),
        dmt=DMTConfig(start="teacher", rollout=3),
    )
    config.model = make_models(future=FUTURE).config
    config.train.steps = config.dmt_train.steps = 1
    config.train.batch_size = config.dmt_train.batch_size = 2
    result = run(config, tmp_path / "run", progress=False)
    assert seen == [(2, CONTEXT)]
    assert result["forward_depth"] == {"smt": min(config.smt.horizon, CONTEXT), "dmt": 3}  # the horizon within Tc
