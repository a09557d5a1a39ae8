"""Generation (docs/method.md section 9): sampling from the RNN alone or primed by the teacher, text, image grids and
token ids; deterministic given a seed; O(1) state per token; user mistakes are one-line errors.

The fake tasks below stand in for the dataset tasks (same attributes: ``text``, ``image_shape``);
runs load them from this very file (``tests/test_sampling.py:FakeText``), as a user's task file.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest
import torch

from conftest import assert_user_error
from smtrnn import task_record
from smtrnn.cli import main
from smtrnn.config import RunConfig
from smtrnn.errors import UserError
from smtrnn.models import ModelConfig
from smtrnn.run import load_run, run
from smtrnn.sampling import (
    check_generation,
    continue_prompt,
    decode_text,
    generate,
    generate_tokens,
    image_grid,
    sample_images,
    sample_sequences,
    save_png,
)
from smtrnn.tasks import make_task
from smtrnn.tasks.base import Task, predicts_next_token
from smtrnn.tasks.synthetic import Retrieval

HERE = Path(__file__).resolve()


def _shifted(stream: torch.Tensor, length: int) -> dict:
    """x = the first ``length`` tokens of each row, y_t = x_{t+1}."""
    return {"x": stream[:, :length].clone(), "y": stream[:, 1 : length + 1].clone()}


class FakeText:
    """Byte text: crops of a repeated sentence."""

    text = True
    vocab_size = num_classes = 256
    sentence = "the cat sat on the mat. "

    def sample(self, batch_size, length, generator):
        repeated = torch.tensor(list((self.sentence * (length // len(self.sentence) + 2)).encode()))
        starts = torch.randint(0, len(self.sentence), (batch_size,), generator=generator)
        return _shifted(torch.stack([repeated[start : start + length + 1] for start in starts.tolist()]), length)


class FakeImages:
    """A stream of 4x4 images, each a white 2x2 square on black; crops start at an image boundary."""

    image_shape = (4, 4)
    vocab_size = num_classes = 256

    def sample(self, batch_size, length, generator):
        count = length // 16 + 1
        corner = torch.randint(0, 3, (batch_size, count, 2), generator=generator)
        rows, columns = torch.arange(4).view(4, 1), torch.arange(4).view(1, 4)
        inside = lambda axis, at: (axis >= at) & (axis < at + 2)
        images = torch.stack(
            [
                torch.stack([255 * (inside(rows, r) & inside(columns, c)).long() for r, c in row.tolist()])
                for row in corner
            ]
        )
        return _shifted(images.reshape(batch_size, -1), length)


class FakeCounter:
    """Token ids counting up modulo 5, y_t = x_{t+1}: neither text nor images."""

    vocab_size = num_classes = 5

    def sample(self, batch_size, length, generator):
        starts = torch.randint(0, 5, (batch_size, 1), generator=generator)
        return _shifted((starts + torch.arange(length + 1)) % 5, length)


def train_tiny(directory: Path, task: str, method: str = "smt") -> Path:
    model = ModelConfig(
        memory_size=8, embed_dim=4, readout_hidden=8, teacher_width=8, teacher_layers=1, teacher_heads=2, future=2
    )
    config = RunConfig(task=f"{HERE}:{task}", length=8, method=method, eval_batches=1, model=model)
    config.train.steps, config.train.batch_size = 2, 4
    run(config, directory, progress=False)
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    return {
        "text": train_tiny(root / "text", "FakeText"),
        "images": train_tiny(root / "images", "FakeImages"),
        "counter": train_tiny(root / "counter", "FakeCounter"),
        "bptt": train_tiny(root / "bptt", "FakeText", method="bptt"),
    }


@pytest.fixture(scope="module")
def text_run(runs):
    return load_run(runs["text"])


def spy_steps(cell) -> list:
    """Record the memory shape of every ``cell.step`` call; the sequence paths are forbidden."""
    shapes, step = [], cell.step
    cell.step = lambda memory, token: shapes.append(tuple(memory.shape)) or step(memory, token)

    def refuse(*_, **__):
        raise AssertionError("generation steps one token at a time")

    cell.forward = cell.rollout = refuse
    return shapes


def refuse_teacher(teacher):
    def refuse(*_, **__):
        raise AssertionError("rnn mode must not use the teacher")

    teacher.encode = teacher.encode_step = refuse


# ================================================================================================
# tokens


def test_generate_tokens_is_deterministic_given_a_seed(text_run):
    _, _, models = text_run
    prompt = torch.tensor([[116, 104], [99, 97]])
    draw = lambda seed, temperature=1.0: generate_tokens(
        models.rnn, prompt, 12, temperature, torch.Generator().manual_seed(seed)
    )
    first = draw(0)
    assert first.shape == (2, 12) and first.dtype == torch.long and 0 <= first.min() and first.max() < 256
    assert torch.equal(first, draw(0))
    assert not torch.equal(first, draw(1))
    assert torch.equal(draw(0, 0.0), draw(1, 0.0))  # temperature 0: greedy, no randomness


def test_rnn_mode_steps_once_per_token_on_a_fixed_size_memory(runs):
    _, _, models = load_run(runs["text"])
    refuse_teacher(models.teacher)
    shapes = spy_steps(models.rnn.cell)
    prompt = torch.tensor([[116, 104, 101]]).expand(3, -1)
    tokens = continue_prompt(models, prompt, 10, "rnn", 1.0, torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 10)
    assert len(shapes) == 3 + 10 - 1  # read the prompt, then one step per sampled token but the last
    assert set(shapes) == {(3, models.config.memory_size)}


def test_greedy_generation_equals_a_manual_loop(text_run):
    _, _, models = text_run
    prompt = torch.tensor([[116, 104, 101, 32]])
    tokens = generate_tokens(models.rnn, prompt, 6, temperature=0)
    with torch.no_grad():
        memory = models.rnn.cell.initial_memory(1)
        for token in prompt[0]:
            memory = models.rnn.cell.step(memory, token.view(1))
        expected = []
        for _ in range(6):
            expected.append(models.rnn.logits(memory).argmax(-1))
            memory = models.rnn.cell.step(memory, expected[-1])
    assert torch.equal(tokens, torch.stack(expected, 1))


def test_teacher_mode_continues_from_the_teachers_memory_of_the_whole_prompt(runs):
    _, _, models = load_run(runs["text"])
    prompt = torch.tensor([[116, 104, 101, 32, 99]])
    encoded, encode = [], models.teacher.encode
    models.teacher.encode = lambda x: encoded.append(x.clone()) or encode(x)
    shapes = spy_steps(models.rnn.cell)
    tokens = continue_prompt(models, prompt, 4, "teacher", 0.0)
    assert len(encoded) == 1 and torch.equal(encoded[0], prompt)
    assert len(shapes) == 3  # the RNN does not read the prompt again
    with torch.no_grad():
        first = models.rnn.logits(encode(prompt)[:, -1]).argmax(-1)
    assert tokens[0, 0] == first


@pytest.mark.parametrize("temperature", [-1.0, float("nan"), float("inf")])
def test_bad_temperature_and_empty_prompt_are_user_errors(text_run, temperature):
    _, _, models = text_run
    with pytest.raises(UserError, match="temperature"):
        generate_tokens(models.rnn, torch.tensor([[1]]), 3, temperature)
    with pytest.raises(UserError, match="prompt"):
        generate_tokens(models.rnn, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(UserError, match="prompt"):
        continue_prompt(models, torch.zeros(1, 0, dtype=torch.long), 3, "teacher")


# ================================================================================================
# text, ids, images


def test_text_samples_start_with_the_prompt(text_run):
    config, task, models = text_run
    samples = sample_sequences(models, list(b"the "), 20, count=3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 24) and torch.equal(samples[:, :4], torch.tensor([list(b"the ")] * 3))
    generated = generate(config, task, models, prompt="the ", steps=20, count=3, seed=0)
    assert generated.grid is None and generated.text.count("--- sample") == 3
    first_block = f"--- sample 1 ---\n{decode_text(samples[0].tolist())}\n--- sample 2 ---\n"
    assert generated.text.startswith(first_block)  # same seed, same samples
    assert decode_text([0xC3]) == "\ufffd"  # half a character: replaced, not an exception
    with pytest.raises(UserError, match="prompt"):
        generate(config, task, models, prompt="")


def test_token_id_tasks_take_and_print_ids(runs):
    config, task, models = load_run(runs["counter"])
    generated = generate(config, task, models, prompt="1 2 3", steps=5, temperature=0)
    ids = [int(word) for word in generated.text.split()]
    assert ids[:3] == [1, 2, 3] and len(ids) == 8 and all(0 <= i < 5 for i in ids)
    for prompt, message in (("1 x", "token ids"), ("1 9", "outside")):
        with pytest.raises(UserError, match=message):
            generate(config, task, models, prompt=prompt)
    classes_only = SimpleNamespace(task="retrieval", method="smt")
    with pytest.raises(UserError, match="next-token"):
        check_generation(classes_only, Retrieval(), "rnn")


@pytest.mark.parametrize("name", ["parity", "stack", "modular", "recency"])
def test_a_task_whose_labels_are_not_its_next_token_cannot_generate_however_many_classes(name):
    """Parity's two labels are its two tokens, and still no draw of a label is an input: only a task
    that says its labels are its next tokens (text, pixels, token streams) generates."""
    task = make_task(name)
    assert task.num_classes == task.vocab_size and not predicts_next_token(task)
    with pytest.raises(UserError, match="next input token"):
        check_generation(SimpleNamespace(task=name, method="smt"), task, "rnn")
    record = task_record.describe(name, task)
    assert record["next_token"] is False and task_record.RecordedTask(record, {}).next_token is False
    before_the_key = {key: value for key, value in record.items() if key != "next_token"}
    assert task_record.RecordedTask(before_the_key, {}).next_token is False  # its class says, no data read


def test_a_task_that_does_not_say_generates_where_its_classes_are_its_tokens():
    """A user's task class, Task or not, that leaves ``next_token`` unset keeps the rule it had."""

    class Words(Task):
        vocab_size = num_classes = 50

    class Labels(Task):
        vocab_size, num_classes = 50, 3

    assert predicts_next_token(Words()) and not predicts_next_token(Labels())
    assert predicts_next_token(SimpleNamespace(vocab_size=5, num_classes=5))
    record = {"task": "mine.py:Words", "vocab_size": 50, "num_classes": 50}  # a task.json from before
    assert task_record.RecordedTask(record, {}).next_token is True


def test_images_from_a_black_first_pixel_and_half_completions(runs):
    config, task, models = load_run(runs["images"])
    generator = lambda: torch.Generator().manual_seed(3)
    free = sample_images(models, task, 5, "rnn", 0, 1.0, generator())
    assert free.shape == (5, 1, 4, 4) and (free[:, 0, 0, 0] == 0).all()
    assert torch.equal(free, sample_images(models, task, 5, "rnn", 0, 1.0, generator()))
    for mode in ("rnn", "teacher"):
        pairs = sample_images(models, task, 5, mode, 2, 1.0, generator())
        originals, completions = pairs[:, 0], pairs[:, 1]
        assert pairs.shape == (5, 2, 4, 4)
        assert torch.equal(originals[:, :2], completions[:, :2])  # the given top rows
        assert (originals.reshape(5, -1).sum(-1) == 4 * 255).all()  # whole held-out images: one square each
    with pytest.raises(UserError, match="prime rows"):
        sample_images(models, task, 1, "rnn", 4)
    with pytest.raises(UserError, match="--prime-rows"):
        sample_images(models, task, 1, "teacher", 0)
    # teacher mode defaults to the top half; images take no text prompt
    grid = generate(config, task, models, mode="teacher", count=3, seed=0).grid
    assert grid.shape == (2 * (4 + 2) + 2, 2 * (2 * 4 + 1 + 2) + 2)  # 2x2 cells of [original | completion]
    with pytest.raises(UserError, match="prime-rows"):
        generate(config, task, models, prompt="a")


def test_image_grid_layout_and_png(tmp_path):
    images = torch.arange(3 * 2 * 4 * 4).reshape(3, 2, 4, 4) % 256
    grid = image_grid(images, columns=2)
    assert grid.shape == (2 * 6 + 2, 2 * 11 + 2) and grid.dtype.name == "uint8"
    assert (grid[2:6, 2:6] == images[0, 0].numpy()).all() and (grid[2:6, 7:11] == images[0, 1].numpy()).all()
    assert (grid[8:12, 2:6] == images[2, 0].numpy()).all()  # third sample: second row
    path = tmp_path / "deep" / "grid.png"
    save_png(grid, path, scale=3)
    picture = matplotlib.image.imread(path)
    assert picture.shape[:2] == (3 * grid.shape[0], 3 * grid.shape[1])
    gray = picture[..., 0]
    assert math.isclose(gray[3 * 3, 3 * 3], images[0, 0, 1, 1].item() / 255, abs_tol=1 / 255)


# ================================================================================================
# command line


def test_cli_text_and_images(runs, tmp_path, capsys):
    out = tmp_path / "sample.txt"
    argv = ["generate", str(runs["text"]), "--prompt", "the c", "--steps", "15", "--seed", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("the c") and out.read_bytes().decode() == printed
    assert main(argv) == 0 and capsys.readouterr().out == printed  # same seed, same text
    png = tmp_path / "digits.png"
    assert main(["generate", str(runs["images"]), "--count", "4", "--prime-rows", "1", "--out", str(png)]) == 0
    assert str(png) in capsys.readouterr().out
    assert matplotlib.image.imread(png).ndim == 3


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--mode", "teacher", "--prompt", "the"], "bptt"),
        (["--prompt", "the", "--temperature", "-1"], "temperature"),
        (["--prompt", "the", "--count", "0"], "count"),
        (["--mode", "dream", "--prompt", "the"], "dream"),
        ([], "--prompt"),
    ],
)
def test_cli_mistakes_are_one_line_errors(runs, capsys, argv, fragment):
    assert_user_error(main(["generate", str(runs["bptt"]), *argv]), capsys, fragment)


def test_cli_rnn_mode_works_for_a_bptt_run(runs, capsys):
    assert main(["generate", str(runs["bptt"]), "--prompt", "the", "--steps", "5"]) == 0
    assert capsys.readouterr().out.startswith("the")
