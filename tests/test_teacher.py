"""The teacher: encode writes the memory of every prefix and is exactly causal; decode predicts the
future from a memory and the true future inputs only, causally. Float64, tiny widths."""

from __future__ import annotations

import inspect

import pytest
import torch

from smtrnn.cells import make_cell
from smtrnn.teacher import POSITIONS, Teacher, TeacherConfig, _causal, _layer, alibi, rotate

VOCAB, CLASSES = 6, 5
EXACT = dict(rtol=0, atol=1e-12)
# (memory space, memory tokens, memory size): the three kinds of space a cell can declare
SPACES = [("tanh", 1, 8), ("rms", 2, 8), ("rms", 1, 6), ("lstm", 1, 8)]


def teacher_for(
    space: str, tokens: int, memory_size: int, future: int = 4, seed: int = 0, positions: str = "none"
) -> Teacher:
    torch.manual_seed(seed)
    config = TeacherConfig(width=16, layers=2, decoder_layers=2, heads=2, future=future, positions=positions)
    return Teacher(VOCAB, CLASSES, memory_size, space, tokens, config).double()


def tokens(batch, length, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def in_space(memory, space, tokens_, memory_size):
    if space == "tanh":
        return bool(memory.abs().max() < 1)
    if space == "lstm":
        return bool(memory[..., : memory_size // 2].abs().max() < 1)
    rms = memory.reshape(*memory.shape[:-1], tokens_, -1).pow(2).mean(-1).sqrt()
    # rms_normalize has an epsilon: the RMS is 1 / sqrt(1 + eps / mean square), just under 1
    return bool(rms.max() <= 1 + 1e-9 and rms.min() > 1 - 1e-3)


@pytest.fixture(params=["train", "eval"])
def mode(request):
    """Both the autograd path and the inference fast path must be causal."""
    return request.param


def _encode(teacher, x, mode):
    if mode == "train":
        teacher.train()
        return teacher.encode(x)
    teacher.eval()
    with torch.no_grad():
        return teacher.encode(x)


@pytest.mark.parametrize("space, memory_tokens, memory_size", SPACES)
def test_encode_shape_space_and_empty_prefix(space, memory_tokens, memory_size, mode):
    teacher = teacher_for(space, memory_tokens, memory_size)
    x = tokens(5, 9)
    memories = _encode(teacher, x, mode)
    assert memories.shape == (5, 10, memory_size)
    assert in_space(memories, space, memory_tokens, memory_size)
    # m*_0 is the memory of no input: the same for every sequence, and for every length
    torch.testing.assert_close(memories[:, 0], memories[:1, 0].expand(5, -1), **EXACT)
    other = _encode(teacher, tokens(2, 3, seed=7), mode)
    torch.testing.assert_close(other[:, 0], memories[:2, 0], rtol=1e-10, atol=1e-10)
    # memories after some input are not all alike
    assert not torch.allclose(memories[:, -1], memories[:1, -1].expand(5, -1))


@pytest.mark.parametrize("space, memory_tokens, memory_size", SPACES[:2])
@pytest.mark.parametrize("position", [0, 3, 7])
@pytest.mark.parametrize("codes", POSITIONS)
def test_encode_is_causal(space, memory_tokens, memory_size, position, codes, mode):
    """memories[:, t] has seen exactly x[:, :t]: changing x[:, s] leaves memories[:, :s+1] bit for
    bit and changes every later memory (with every position scheme)."""
    teacher = teacher_for(space, memory_tokens, memory_size, positions=codes)
    x = tokens(4, 8)
    changed = x.clone()
    changed[:, position] = (changed[:, position] + 1 + torch.arange(4) % (VOCAB - 1)) % VOCAB
    assert (changed[:, position] != x[:, position]).all()
    before, after = _encode(teacher, x, mode), _encode(teacher, changed, mode)
    torch.testing.assert_close(after[:, : position + 1], before[:, : position + 1], **EXACT)
    difference = (after[:, position + 1 :] - before[:, position + 1 :]).abs().amax(-1)  # [B, later]
    assert (difference > 1e-6).all(), difference


def test_encode_rows_are_independent():
    teacher = teacher_for("tanh", 1, 8)
    x = tokens(4, 7)
    together = teacher.encode(x)
    for b in range(4):
        torch.testing.assert_close(teacher.encode(x[b : b + 1])[0], together[b], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("codes", POSITIONS)
def test_encode_memory_of_a_prefix_does_not_depend_on_the_total_length(codes):
    teacher = teacher_for("rms", 2, 8, positions=codes)
    x = tokens(3, 10)
    long, short = teacher.encode(x), teacher.encode(x[:, :6])
    torch.testing.assert_close(long[:, :7], short, rtol=1e-10, atol=1e-10)


def test_encode_memories_match_what_a_cell_can_output():
    """The teacher's memory head maps into the space the cell declares, for every cell."""
    for name, options in [("tanh", {}), ("gru", {}), ("lstm", {}), ("mlp", {}), ("transformer", {"memory_tokens": 2})]:
        cell = make_cell(name, VOCAB, 8, **options)
        teacher = Teacher(
            VOCAB, CLASSES, 8, cell.memory_space, cell.memory_tokens, TeacherConfig(16, 1, 1, 2, 2, "none")
        )
        memories = teacher.encode(tokens(3, 5))
        assert in_space(memories, cell.memory_space, cell.memory_tokens, 8), name
        assert in_space(cell.step(memories[:, :-1], tokens(3, 5)), cell.memory_space, cell.memory_tokens, 8), name


def test_inference_path_equals_the_training_path():
    """eval() + no_grad may take PyTorch's fused Transformer kernels: same memories and logits."""
    teacher = teacher_for("rms", 2, 8).float()
    x = tokens(3, 7)
    memories = teacher.encode(x)
    logits = teacher.decode(memories[:, 2], x[:, 2:5])
    teacher.eval()
    with torch.no_grad():
        fast_memories = teacher.encode(x)
        fast_logits = teacher.decode(fast_memories[:, 2], x[:, 2:5])
    torch.testing.assert_close(fast_memories, memories.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_logits, logits.detach(), rtol=1e-5, atol=1e-5)
    cell = make_cell("transformer", VOCAB, 8, memory_tokens=2, heads=2)
    step = cell.step(memories[:, 3].detach(), x[:, 3])
    cell.eval()
    with torch.no_grad():
        torch.testing.assert_close(cell.step(memories[:, 3].detach(), x[:, 3]), step.detach(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# decode


def test_decode_takes_only_a_memory_and_the_future():
    assert list(inspect.signature(Teacher.decode).parameters) == ["self", "memory", "future"]


@pytest.mark.parametrize("space, memory_tokens, memory_size", SPACES)
@pytest.mark.parametrize("future_length", [0, 1, 3])
def test_decode_shape(space, memory_tokens, memory_size, future_length):
    teacher = teacher_for(space, memory_tokens, memory_size)
    memory = teacher.encode(tokens(6, 5))[:, 2]
    logits = teacher.decode(memory, tokens(6, future_length, seed=3))
    assert logits.shape == (6, future_length + 1, CLASSES)


@pytest.mark.parametrize("space, memory_tokens, memory_size", SPACES[:2])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_decode_is_causal_in_the_future(space, memory_tokens, memory_size, k, mode):
    """logits[:, j] depends on the memory and future[:, :j] only: changing future[:, k:] leaves
    logits[:, :k+1] unchanged and changes logits[:, k+1]."""
    teacher = teacher_for(space, memory_tokens, memory_size)
    teacher.train() if mode == "train" else teacher.eval()
    with torch.set_grad_enabled(mode == "train"):
        memory = teacher.encode(tokens(5, 4))[:, -1]
        future = tokens(5, 3, seed=4)
        changed = future.clone()
        changed[:, k:] = (changed[:, k:] + 1) % VOCAB
        before, after = teacher.decode(memory, future), teacher.decode(memory, changed)
    torch.testing.assert_close(after[:, : k + 1], before[:, : k + 1], **EXACT)
    assert ((after[:, k + 1] - before[:, k + 1]).abs().amax(-1) > 1e-8).all()


@pytest.mark.parametrize("space, memory_tokens, memory_size", [("rms", 2, 8), ("rms", 4, 8), ("tanh", 1, 8)])
def test_every_decoder_prediction_sees_the_whole_memory(space, memory_tokens, memory_size):
    """Even the first prediction (y_t from m*_t alone) reads every memory token."""
    teacher = teacher_for(space, memory_tokens, memory_size)
    memory = teacher.encode(tokens(4, 5))[:, -1]
    future = tokens(4, 2, seed=5)
    base = teacher.decode(memory, future)
    width = memory_size // memory_tokens
    for chunk in range(memory_tokens):
        changed = memory.clone()
        changed[:, chunk * width : (chunk + 1) * width] *= -1
        moved = (teacher.decode(changed, future) - base).abs().amax(-1)  # [N, F+1]
        assert (moved > 1e-8).all(), f"memory token {chunk} does not reach every prediction"


def test_decode_rows_are_independent():
    teacher = teacher_for("rms", 2, 8)
    memory = teacher.encode(tokens(4, 5))[:, 3]
    future = tokens(4, 3, seed=6)
    together = teacher.decode(memory, future)
    for n in range(4):
        torch.testing.assert_close(
            teacher.decode(memory[n : n + 1], future[n : n + 1])[0], together[n], rtol=1e-10, atol=1e-10
        )


def test_decode_gradient_reaches_the_memory():
    teacher = teacher_for("tanh", 1, 8)
    memory = teacher.encode(tokens(3, 4))[:, -1].detach().requires_grad_(True)
    teacher.decode(memory, tokens(3, 2))[:, 0].sum().backward()
    assert memory.grad is not None and memory.grad.abs().sum() > 0


def test_the_teacher_method_trains_the_teacher_alone_and_scores_it_as_it_goes(tmp_path):
    """--method teacher: the predictive loss only; the RNN does not move; held-out teacher accuracy
    is logged with every periodic evaluation."""
    from conftest import make_tiny_config
    from smtrnn.checkpoint import latest_checkpoint
    from smtrnn.methods import depths
    from smtrnn.metrics import read
    from smtrnn.run import build, load_run, run

    config = make_tiny_config(method="teacher", steps=4)
    config.train.eval_every = 2
    _, before = build(config)
    result = run(config, tmp_path, progress=False)
    _, _, after = load_run(tmp_path)
    assert latest_checkpoint(tmp_path).name.startswith("teacher-")
    for name, value in before.rnn.state_dict().items():
        assert torch.equal(value, after.rnn.state_dict()[name]), name
    assert any(not torch.equal(v, after.teacher.state_dict()[k]) for k, v in before.teacher.state_dict().items())
    evaluations = [record for record in read(tmp_path) if "eval_teacher_accuracy" in record]
    assert [record["step"] for record in evaluations] == [2, 4]
    assert result["teacher_accuracy"] is not None and depths(config)["sequential_depth"] == 0


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_encoders_own_layer_forward_equals_torchs(mode):
    """The forward that the relative schemes go through, with no scheme, is nn.TransformerEncoderLayer's
    own causal forward (training and inference paths alike)."""
    teacher = teacher_for("tanh", 1, 8).train(mode == "train")
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    layer = teacher.encoder.layers[0]
    with torch.set_grad_enabled(mode == "train"):
        ours = _layer(layer, hidden, "none")
        theirs = layer(hidden, src_mask=_causal(7, hidden.device), is_causal=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_rotary_scores_depend_on_the_distance_only():
    generator = torch.Generator().manual_seed(4)
    query, key = (
        torch.randn(1, 8, dtype=torch.float64, generator=generator),
        torch.randn(1, 8, dtype=torch.float64, generator=generator),
    )
    score = lambda at_query, at_key: (rotate(query, at_query) * rotate(key, at_key)).sum()
    for shift in (1, 5, 100):
        torch.testing.assert_close(score(9 + shift, 4 + shift), score(9, 4), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(score(9, 4), score(9, 6))
    torch.testing.assert_close(rotate(query, 0), query)  # position 0 is not turned
    torch.testing.assert_close(rotate(query, 3).norm(), query.norm())  # a rotation keeps the length


def test_alibi_penalises_the_distance_and_masks_the_future():
    bias = alibi(4, 5, 5)
    slopes = torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])
    for i in range(5):
        for j in range(5):
            if j > i:
                assert (bias[:, i, j] == float("-inf")).all()
            else:
                torch.testing.assert_close(bias[:, i, j], -slopes * (i - j))
    # the newest query of a stream is the last row of the full bias
    torch.testing.assert_close(alibi(4, 1, 5, start=4), bias[:, 4:5])


@pytest.mark.parametrize("codes", ["rotary", "alibi"])
def test_relative_schemes_train_the_encoder(codes):
    """Their forward is the library's own: every encoder weight still gets a gradient."""
    teacher = teacher_for("tanh", 1, 8, positions=codes)
    teacher.encode(tokens(2, 6)).pow(2).sum().backward()
    for name, parameter in teacher.encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
