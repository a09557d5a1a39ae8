"""Sampling from a trained RNN (docs/method.md section 9, Generation): text, images drawn pixel by pixel, or
token ids, one token at a time with O(1) state (the memory) per sequence.

The readout on the memory m_t predicts y_t = x_{t+1}, so sampling reads the given tokens, then
repeats: x_next ~ softmax(logits(m) / temperature), m = cell.step(m, x_next). Temperature 0 means
greedy (argmax). The memory m_0 predicts nothing in training (no label comes before the first token),
so at least one token must be given: text needs a prompt; an image starts from its first pixel,
taken as 0 (black: the corners of MNIST digits and sketches are background).

Two modes:
- ``rnn``: the RNN alone reads the prompt from its own m_0 and continues (teacher-free; works for
  BPTT runs too);
- ``teacher``: primed, the official style: the teacher encodes the prompt into m* and the RNN
  continues from that memory (needs a run whose teacher was trained: not bptt or tbptt).

    config, task, models = load_run("runs/mnist-smt")
    generated = generate(config, task, models, mode="teacher", count=16, seed=0)
    save_png(generated.grid, "digits.png")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smtrnn.errors import UserError
from smtrnn.methods import uses_teacher
from smtrnn.tasks.base import predicts_next_token

MODES = ("rnn", "teacher")
TEXT_STEPS = 200  # continuation length of text and token-id samples when none is given


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown generation mode {mode!r}; choose one of {', '.join(MODES)}")


def check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UserError(f"temperature must be positive (or 0 for greedy), got {temperature}")


def next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``logits`` [B, C]: greedy at temperature 0, else sampled. Drawn on the CPU
    so that a seed gives the same tokens on every device."""
    if temperature == 0:
        return logits.argmax(-1)
    probabilities = torch.softmax(logits.float().cpu() / temperature, -1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate_tokens(
    rnn,
    prompt: torch.Tensor,
    steps: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    memory: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``steps`` tokens [B, steps] that follow ``prompt`` [B, P]. The RNN reads the prompt from
    ``memory`` (default: its own m_0, which predicts nothing, so the prompt must then be non-empty)
    and continues on its own samples, one cell step per token."""
    check_temperature(temperature)
    if memory is None:
        if prompt.shape[1] == 0:
            raise UserError("the RNN's initial memory predicts nothing: give at least one prompt token")
        memory = rnn.cell.initial_memory(prompt.shape[0])
    for t in range(prompt.shape[1]):
        memory = rnn.cell.step(memory, prompt[:, t])
    tokens = []
    for index in range(steps):
        tokens.append(next_token(rnn.logits(memory), temperature, generator))
        if index + 1 < steps:  # the memory after the last sample would predict nothing we keep
            memory = rnn.cell.step(memory, tokens[-1])
    return torch.stack(tokens, 1) if tokens else prompt.new_zeros(prompt.shape[0], 0)


@torch.no_grad()
def continue_prompt(
    models,
    prompt: torch.Tensor,
    steps: int,
    mode: str = "rnn",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``steps`` tokens after ``prompt`` [B, P >= 1]: read by the RNN itself (``rnn``), or encoded by
    the teacher into m* of the whole prompt, from which the RNN continues (``teacher``)."""
    check_mode(mode)
    if prompt.shape[1] == 0:
        raise UserError("generation needs at least one prompt token (the empty memory predicts nothing)")
    if mode == "rnn":
        return generate_tokens(models.rnn, prompt, steps, temperature, generator)
    primed = models.teacher.encode(prompt)[:, -1]  # m* of the whole prompt: the RNN takes over from here
    return generate_tokens(models.rnn, prompt[:, :0], steps, temperature, generator, memory=primed)


# ------------------------------------------------------------------------------------------------
# one token at a time: next-token logits and the state kept between tokens (smtrnn bench's inference)


class RNNStream:
    """The RNN generating: memory = cell.step(memory, token), then its next-token logits."""

    def __init__(self, rnn):
        self.rnn, self.memory = rnn, rnn.cell.initial_memory(1)

    def __call__(self, token):
        self.memory = self.rnn.cell.step(self.memory, token)
        return self.rnn.logits(self.memory)

    def state_bytes(self) -> int:
        return self.memory.numel() * self.memory.element_size()


class CachedTeacherStream:
    """The teacher generating with a key-value cache: encode_step, then decode the memory alone."""

    def __init__(self, teacher, capacity: int):
        self.teacher = teacher
        self.memory, self.cache = teacher.encode_step(None, batch=1, capacity=capacity)
        self.no_future = torch.zeros(1, 0, dtype=torch.long, device=self.memory.device)

    def __call__(self, token):
        self.memory, self.cache = self.teacher.encode_step(token, self.cache)
        return self.teacher.decode(self.memory, self.no_future)

    def state_bytes(self) -> int:
        return self.cache.nbytes() + self.memory.numel() * self.memory.element_size()


def uncached_teacher_logits(teacher, prefix: torch.Tensor) -> torch.Tensor:
    """Next-token logits without a cache: re-encode the whole prefix, decode its last memory."""
    memory = teacher.encode(prefix)[:, -1]
    return teacher.decode(memory, prefix[:, :0])


# ------------------------------------------------------------------------------------------------
# text and token ids


def text_tokens(text: str) -> list[int]:
    """Byte-level tokens of ``text`` (UTF-8)."""
    return list(text.encode("utf-8"))


def decode_text(tokens) -> str:
    """UTF-8 text of byte tokens; a sample that cuts a character in two shows U+FFFD there."""
    return bytes(int(token) for token in tokens).decode("utf-8", errors="replace")


def parse_token_ids(text: str, vocab_size: int) -> list[int]:
    """Whitespace-separated token ids, each in 0..vocab_size-1."""
    try:
        ids = [int(word) for word in text.split()]
    except ValueError:
        raise UserError(
            f"the prompt of a task without text must be token ids separated by spaces, got {text!r}"
        ) from None
    outside = [token for token in ids if not 0 <= token < vocab_size]
    if outside:
        raise UserError(f"prompt token ids {outside} are outside the vocabulary 0..{vocab_size - 1}")
    return ids


def sample_sequences(
    models,
    prompt: list[int],
    steps: int,
    count: int = 1,
    mode: str = "rnn",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``count`` samples [count, P + steps]: the prompt followed by its continuation."""
    device = models.rnn.cell.initial.device
    prompts = torch.tensor(prompt, dtype=torch.long, device=device).reshape(1, -1).expand(count, -1)
    return torch.cat([prompts, continue_prompt(models, prompts, steps, mode, temperature, generator)], 1)


# ------------------------------------------------------------------------------------------------
# images


def held_out_images(task, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` whole images [count, H*W] from the task's held-out split (its crops of one image's
    length start at an image boundary)."""
    height, width = task.image_shape
    source = task.evaluation() if hasattr(task, "evaluation") else task
    return source.sample(count, height * width, generator)["x"]


def sample_images(
    models,
    task,
    count: int,
    mode: str = "rnn",
    prime_rows: int = 0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images [count, K, H, W] of pixel values, drawn pixel by pixel in raster order.

    prime_rows 0 (rnn mode only): K = 1 image drawn from a black first pixel. prime_rows R > 0: the top
    R rows of held-out images are given (read by the RNN, or encoded by the teacher in teacher mode)
    and the RNN draws the rest; K = 2, each original beside its completion."""
    height, width = task.image_shape
    if mode == "teacher" and prime_rows == 0:
        raise UserError("teacher mode primes with the top rows of held-out images: give --prime-rows of at least 1")
    if not 0 <= prime_rows < height:
        raise UserError(f"prime rows must be in 0..{height - 1} for images of {height} rows, got {prime_rows}")
    device = models.rnn.cell.initial.device
    if prime_rows == 0:
        first_pixel = torch.zeros(count, 1, dtype=torch.long, device=device)
        drawn = continue_prompt(models, first_pixel, height * width - 1, mode, temperature, generator)
        return torch.cat([first_pixel, drawn], 1).reshape(count, 1, height, width)
    originals = held_out_images(task, count, generator or torch.Generator()).to(device)
    given = originals[:, : prime_rows * width]
    drawn = continue_prompt(models, given, height * width - given.shape[1], mode, temperature, generator)
    completions = torch.cat([given, drawn], 1)
    return torch.stack([originals, completions], 1).reshape(count, 2, height, width)


def image_grid(images: torch.Tensor, columns: int | None = None, gap: int = 1, border: int = 2) -> np.ndarray:
    """One grayscale picture [rows, cols] (values 0..255) of ``images`` [N, K, H, W]: the K images of
    one sample side by side ``gap`` pixels apart, samples ``columns`` to a row (default: a square)
    ``border`` pixels apart. Separators are mid-grey, so black backgrounds stay apart."""
    count, group, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_width = group * width + (group - 1) * gap
    grid = np.full((rows * (height + border) + border, columns * (cell_width + border) + border), 128, dtype=np.uint8)
    pixels = images.clamp(0, 255).to(torch.uint8).cpu().numpy()
    for index in range(count):
        top = border + (index // columns) * (height + border)
        left = border + (index % columns) * (cell_width + border)
        for member in range(group):
            start = left + member * (width + gap)
            grid[top : top + height, start : start + width] = pixels[index, member]
    return grid


def save_png(grid: np.ndarray, path, scale: int = 4) -> None:
    """Write a grayscale grid as a PNG, each pixel ``scale`` x ``scale``, no axes."""
    from matplotlib.figure import Figure  # the object API draws with Agg and touches no global state

    dpi = 100
    figure = Figure(figsize=(grid.shape[1] * scale / dpi, grid.shape[0] * scale / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes.set_axis_off()
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, dpi=dpi, format="png")
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}") from None


# ------------------------------------------------------------------------------------------------
# one call for a run


@dataclass
class Generated:
    """What ``generate`` made: ``text`` to show (samples of text or token ids, one block each), or
    ``grid``, a grayscale picture of images to save as a PNG."""

    text: str = ""
    grid: np.ndarray | None = None


def check_generation(config, task, mode: str) -> None:
    """Raise UserError where this run cannot generate in this mode."""
    check_mode(mode)
    if mode == "teacher" and not uses_teacher(config):
        raise UserError(f"this run was trained with {config.method}: it has no trained teacher; use --mode rnn")
    if not predicts_next_token(task):
        raise UserError(cannot_generate(config.task))


def cannot_generate(task: str | None) -> str:
    return (
        f"task {task} labels something other than its next input token: only next-token tasks (text, "
        "pixels, token streams) can generate"
    )


def _blocks(samples: list[str]) -> str:
    if len(samples) == 1:
        return samples[0]
    return "\n".join(f"--- sample {index + 1} ---\n{sample}" for index, sample in enumerate(samples))


def generate(
    config,
    task,
    models,
    mode: str = "rnn",
    prompt: str | None = None,
    steps: int | None = None,
    count: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    prime_rows: int | None = None,
) -> Generated:
    """Samples from a loaded run (``run.load_run``), by the kind of task: images (``task.image_shape``)
    as a grid, byte text (``task.text``) as UTF-8, anything else as token ids. ``prompt``: text, or
    token ids separated by spaces; images take ``prime_rows`` (default: none in rnn mode, the top half
    in teacher mode) instead. Deterministic given ``seed``."""
    check_generation(config, task, mode)
    check_temperature(temperature)
    if count < 1:
        raise UserError(f"count must be positive, got {count}")
    if steps is not None and steps < 1:
        raise UserError(f"steps must be positive, got {steps}")
    models.eval()
    generator = torch.Generator().manual_seed(seed)
    image_shape = getattr(task, "image_shape", None)
    if image_shape is not None:
        if prompt is not None or steps is not None:
            raise UserError("images are drawn whole: give --prime-rows, not --prompt or --steps")
        rows = (image_shape[0] // 2 if mode == "teacher" else 0) if prime_rows is None else prime_rows
        return Generated(grid=image_grid(sample_images(models, task, count, mode, rows, temperature, generator)))
    if prime_rows is not None:
        raise UserError("--prime-rows is for image tasks")
    is_text = getattr(task, "text", False)
    if not prompt:
        raise UserError(
            "give a --prompt: the RNN's initial memory predicts nothing"
            + ("" if is_text else " (token ids separated by spaces)")
        )
    tokens = text_tokens(prompt) if is_text else parse_token_ids(prompt, task.vocab_size)
    samples = sample_sequences(models, tokens, steps or TEXT_STEPS, count, mode, temperature, generator)
    show = decode_text if is_text else (lambda row: " ".join(str(int(token)) for token in row))
    return Generated(text=_blocks([show(row.tolist()) for row in samples]))
