"""Cells: one interface, five cells. The batched ``step`` equals the row-by-row step, the fused
sequential path equals the step loop in values and gradients, and every cell stays in its memory
space. Float64 throughout where values are compared, so tolerances can be tight."""

from __future__ import annotations

import pytest
import torch

from smtrnn.cells import CELLS, make_cell, project_memory, rms_normalize
from smtrnn.errors import UserError

NAMES = ["tanh", "mlp", "gru", "lstm", "transformer"]
FUSED = {"tanh": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
VOCAB = 7
TIGHT = dict(rtol=1e-9, atol=1e-10)


def build(name: str, memory_size: int = 8, seed: int = 0, **options):
    torch.manual_seed(seed)
    options.setdefault("embed_dim", 5)
    if name == "transformer":
        options = {"memory_tokens": 2, "heads": 2, "layers": 2, **options}
        options.pop("embed_dim")
    return make_cell(name, VOCAB, memory_size, **options).double()


def random_memory(cell, *lead, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return cell.project(torch.randn(*lead, cell.memory_size, generator=generator, dtype=torch.float64))


def random_tokens(*shape, seed=2):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def assert_in_space(cell, memory):
    """The memory lies in the set of memories ``cell`` can output."""
    space = cell.memory_space
    if space == "tanh":
        assert memory.abs().max() < 1
    elif space == "rms":
        chunks = memory.reshape(*memory.shape[:-1], cell.memory_tokens, -1)
        rms = chunks.pow(2).mean(-1).sqrt()
        # rms_normalize has an epsilon: the RMS is 1 / sqrt(1 + eps / mean square), just under 1
        assert rms.max() <= 1 + 1e-6 and rms.min() > 1 - 1e-3, rms
    elif space == "lstm":
        h = memory[..., : cell.memory_size // 2]
        assert h.abs().max() < 1
    else:
        raise AssertionError(f"unexpected memory space {space!r}")


def test_registry_has_the_five_cells():
    assert set(CELLS) == set(NAMES)
    expected_space = {"tanh": "tanh", "gru": "tanh", "lstm": "lstm", "mlp": "rms", "transformer": "rms"}
    for name in NAMES:
        assert build(name).memory_space == expected_space[name]


# ------------------------------------------------------------------------------------------------
# step: any leading batch shape, equal to applying it row by row


@pytest.mark.parametrize("name", NAMES)
def test_step_batch_shapes_equal_row_by_row(name):
    cell = build(name)
    B, T, M = 3, 4, cell.memory_size
    memory2, tokens1 = random_memory(cell, B), random_tokens(B)
    memory3, tokens2 = random_memory(cell, B, T, seed=5), random_tokens(B, T, seed=6)

    out2 = cell.step(memory2, tokens1)
    out3 = cell.step(memory3, tokens2)
    assert out2.shape == (B, M) and out3.shape == (B, T, M)
    for b in range(B):
        single = cell.step(memory2[b : b + 1], tokens1[b : b + 1])[0]
        torch.testing.assert_close(out2[b], single, **TIGHT)
        for t in range(T):
            single = cell.step(memory3[b, t][None], tokens2[b, t][None])[0]
            torch.testing.assert_close(out3[b, t], single, **TIGHT)
    # the same pairs flattened to one batch dimension give the same result
    flat = cell.step(memory3.reshape(B * T, M), tokens2.reshape(B * T)).reshape(B, T, M)
    torch.testing.assert_close(out3, flat, **TIGHT)
    # the step really depends on both the memory and the token
    assert not torch.allclose(cell.step(memory2, tokens1), cell.step(memory2.flip(0), tokens1))
    assert not torch.allclose(cell.step(memory2, tokens1), cell.step(memory2, (tokens1 + 1) % VOCAB))


@pytest.mark.parametrize("name", NAMES)
def test_initial_memory_broadcasts(name):
    cell = build(name)
    tokens = random_tokens(3)
    shared = cell.initial_memory(3)
    assert shared.shape == (3, cell.memory_size)
    assert cell.initial_memory((2, 3)).shape == (2, 3, cell.memory_size)
    torch.testing.assert_close(cell.step(shared, tokens), cell.step(cell.initial_memory(3).clone(), tokens), **TIGHT)
    assert_in_space(cell, cell.initial.detach())


# ------------------------------------------------------------------------------------------------
# forward (fused where PyTorch has a kernel) == step-by-step rollout, values and gradients


def _parameters(cell):
    return [(n, p) for n, p in cell.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("given_memory", [False, True], ids=["from_initial", "from_given"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_rollout_values_and_gradients(name, given_memory):
    cell = build(name)
    if name in FUSED:  # the fused path is really the PyTorch kernel
        assert any(isinstance(module, FUSED[name]) for module in cell.modules())
    B, T = 3, 6
    tokens = random_tokens(B, T)
    start = random_memory(cell, B, seed=9).requires_grad_(True) if given_memory else None
    generator = torch.Generator().manual_seed(4)
    out_weight = torch.randn(B, T, cell.output_size, generator=generator, dtype=torch.float64)
    last_weight = torch.randn(B, cell.memory_size, generator=generator, dtype=torch.float64)

    def run(path):
        cell.zero_grad(set_to_none=True)
        if start is not None:
            start.grad = None
        if path == "forward":
            outputs, last = cell(tokens, start)
        else:
            memories = cell.rollout(tokens, start)
            outputs, last = cell.output(memories), memories[:, -1]
        ((outputs * out_weight).sum() + (last * last_weight).sum()).backward()
        grads = {n: p.grad.clone() for n, p in _parameters(cell) if p.grad is not None}
        return outputs.detach(), last.detach(), grads, (start.grad.clone() if start is not None else None)

    out_f, last_f, grads_f, start_f = run("forward")
    out_r, last_r, grads_r, start_r = run("rollout")
    assert out_f.shape == (B, T, cell.output_size)
    assert last_f.shape == (B, cell.memory_size)  # the FULL memory (LSTM: [h, c])
    torch.testing.assert_close(out_f, out_r, **TIGHT)
    torch.testing.assert_close(last_f, last_r, **TIGHT)
    assert set(grads_f) == set(grads_r)
    expected = {n for n, _ in _parameters(cell)} - ({"initial"} if given_memory else set())
    assert expected <= set(grads_r), f"no gradient for {expected - set(grads_r)}"
    for key in grads_r:
        torch.testing.assert_close(grads_f[key], grads_r[key], **TIGHT, msg=lambda m, key=key: f"{key}: {m}")
    if given_memory:
        torch.testing.assert_close(start_f, start_r, **TIGHT)


@pytest.mark.parametrize("name", NAMES)
def test_rollout_is_the_step_loop_and_chains_across_calls(name):
    cell = build(name)
    tokens = random_tokens(2, 5)
    memories = cell.rollout(tokens)
    memory = cell.initial_memory(2)
    for t in range(5):
        memory = cell.step(memory, tokens[:, t])
        torch.testing.assert_close(memories[:, t], memory, **TIGHT)
    # running in two pieces, carrying the last memory, equals one run
    whole, whole_last = cell(tokens)
    first, middle = cell(tokens[:, :2])
    second, last = cell(tokens[:, 2:], middle)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, **TIGHT)
    torch.testing.assert_close(last, whole_last, **TIGHT)


# ------------------------------------------------------------------------------------------------
# memory spaces


@pytest.mark.parametrize("name", NAMES)
def test_project_and_step_stay_in_memory_space(name):
    cell = build(name)
    raw = 1.5 * torch.randn(64, cell.memory_size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    projected = cell.project(raw)
    assert projected.shape == raw.shape
    assert_in_space(cell, projected)
    # a step from any point of the space lands in the space, and so does a whole rollout
    out = cell.step(projected, random_tokens(64))
    assert_in_space(cell, out)
    memories = cell.rollout(random_tokens(8, 12))
    assert_in_space(cell, memories)


def test_project_memory_spaces_directly():
    raw = torch.randn(10, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    tanh = project_memory(raw, "tanh")
    assert tanh.abs().max() < 1
    torch.testing.assert_close(tanh, torch.tanh(raw))
    rms = project_memory(raw, "rms", tokens=3)
    chunk_rms = rms.reshape(10, 3, 4).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(chunk_rms, torch.ones_like(chunk_rms), rtol=0, atol=1e-4)
    # each chunk is scaled separately: the direction within a chunk is kept
    ratio = rms.reshape(10, 3, 4) / raw.reshape(10, 3, 4)
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))
    lstm = project_memory(raw, "lstm")
    assert lstm[:, :6].abs().max() < 1
    torch.testing.assert_close(lstm[:, 6:], raw[:, 6:])  # c is unbounded: left as is
    torch.testing.assert_close(
        rms_normalize(raw, 1).pow(2).mean(-1), torch.ones(10, dtype=torch.float64), atol=1e-4, rtol=0
    )
    with pytest.raises(ValueError):
        project_memory(raw, "no-such-space")


# ------------------------------------------------------------------------------------------------
# memory size is a parameter; invalid sizes are user errors


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("memory_size", [4, 12])
def test_memory_size_sets_every_shape(name, memory_size):
    cell = build(name, memory_size=memory_size)
    assert cell.memory_size == memory_size
    assert cell.initial.shape == (memory_size,)
    output_size = memory_size // 2 if name == "lstm" else memory_size
    assert cell.output_size == output_size
    tokens = random_tokens(2, 3)
    outputs, last = cell(tokens)
    assert outputs.shape == (2, 3, output_size) and last.shape == (2, memory_size)
    assert cell.step(random_memory(cell, 2, 3), tokens).shape == (2, 3, memory_size)
    assert cell.rollout(tokens).shape == (2, 3, memory_size)


@pytest.mark.parametrize(
    "name, memory_size, options",
    [
        ("transformer", 10, {"memory_tokens": 4}),  # 10 is not divisible by 4 tokens
        ("transformer", 12, {"memory_tokens": 4, "heads": 2}),  # token width 3 not divisible by 2 heads
        ("lstm", 7, {}),  # [h, c] needs an even size
        ("tanh", 0, {}),
        ("gru", -3, {}),
    ],
)
def test_invalid_sizes_are_user_errors(name, memory_size, options):
    with pytest.raises(UserError):
        make_cell(name, VOCAB, memory_size, **options)


def test_unknown_cell_is_a_user_error():
    with pytest.raises(UserError, match="unknown cell"):
        make_cell("elman", VOCAB, 8)


def test_the_mlp_cells_depth_adds_hidden_layers_and_one_layer_is_the_papers_cell():
    from smtrnn.models import ModelConfig, build_rnn

    torch.manual_seed(0)
    shallow, deep = make_cell("mlp", 10, 16, embed_dim=4), make_cell("mlp", 10, 16, embed_dim=4, layers=3)
    linear = lambda cell: [module for module in cell.mlp if isinstance(module, torch.nn.Linear)]
    assert len(linear(shallow)) == 2 and len(linear(deep)) == 4  # input, 2 more hidden, output
    # one hidden layer keeps the parameter names checkpoints written before the option hold
    assert {"mlp.0.weight", "mlp.2.weight"} <= set(shallow.state_dict())
    memory = deep.step(deep.initial_memory(3), torch.tensor([1, 2, 3]))
    assert memory.shape == (3, 16) and torch.isfinite(memory).all()
    rnn = build_rnn(ModelConfig(cell="mlp", memory_size=16, mlp_layers=2), 10, 10)
    assert len(linear(rnn.cell)) == 3
