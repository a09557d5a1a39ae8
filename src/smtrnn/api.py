"""A trained RNN from Python: load a run, step it token by token, stream, sample, export.

    import smtrnn

    rnn = smtrnn.load("runs/brown-smt")             # the RNN alone (no teacher), eval mode, frozen
    logits, memory = rnn(tokens)                     # tokens Long[B, T] -> logits [B, T, C], last memory
    memory = rnn.initial_memory(batch_size=2)        # the learned m_0
    memory = rnn.step(memory, tokens[:, 0])          # one token per sequence -> the next memory
    next_logits = rnn.logits(memory)                 # what the memory predicts for the next token

    stream = rnn.stream()                            # O(1) state between calls: one memory
    logits = stream.feed(tokens)                     # logits of every fed token; stream.reset()

    samples = smtrnn.generate(rnn, "The ", steps=100, temperature=0.8, count=2, seed=0)
    samples.tokens, samples.text                     # [2, P + 100]; strings for byte-text tasks

    smtrnn.export("runs/brown-smt", "exported")      # config.json + model.safetensors (RNN weights only)
    rnn = smtrnn.load_export("exported")             # rebuilt from those two files

The exported ``model.safetensors`` holds the RNN's ``state_dict`` (keys ``cell.*``, ``readout.*``), so
``safetensors.torch.load_file`` alone reads it; ``config.json`` holds the constructor arguments
``RNN(cell, vocab_size, num_classes, memory_size, readout_hidden, **cell_options)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from smtrnn import checkpoint
from smtrnn.config import check_device
from smtrnn.errors import UserError
from smtrnn.models import ModelConfig, cell_options
from smtrnn.rnn import RNN
from smtrnn.sampling import (
    TEXT_STEPS,
    cannot_generate,
    check_temperature,
    decode_text,
    generate_tokens,
    parse_token_ids,
    text_tokens,
)
from smtrnn.tasks import recorded_next_token
from smtrnn.tasks.base import predicts_next_token

EXPORT_FORMAT = "smtrnn-rnn"  # the "format" of an export's config.json
EXPORT_VERSION = 1
EXPORT_FILES = ("config.json", "model.safetensors")
PathLike = str | os.PathLike
Tokens = torch.Tensor | Sequence[int]


class TrainedRNN(RNN):
    """A trained RNN (cell + readout) with what it needs to be used on its own.

    ``spec`` is the JSON-able description it is built from (an export's config.json): the RNN's
    constructor arguments, the ModelConfig it was trained with, and the task (vocabulary, whether
    its tokens are UTF-8 bytes). Its state_dict keys are exactly the plain RNN's."""

    def __init__(self, spec: dict):
        config = ModelConfig(**spec["model_config"])  # checked against the weights' metadata on load
        super().__init__(
            config.cell,
            spec["vocab_size"],
            spec["num_classes"],
            config.memory_size,
            config.readout_hidden,
            config.grid_levels(),
            config.round_at_run_time,
            **cell_options(config),
        )
        self.spec = spec
        self.config = config
        self.vocab_size: int = spec["vocab_size"]
        self.num_classes: int = spec["num_classes"]
        self.text: bool = spec["text"]  # tokens are UTF-8 bytes: ``encode`` and ``decode`` apply
        # labels are the next input token, so it can generate
        self.next_token: bool = (
            bool(spec["next_token"])
            if "next_token" in spec
            else recorded_next_token(spec.get("task"), self.vocab_size, self.num_classes)  # an export from before
        )

    @property
    def device(self) -> torch.device:
        return self.cell.initial.device

    def initial_memory(self, batch_size: int = 1) -> torch.Tensor:
        """The learned initial memory m_0, one row per sequence: [batch_size, M]."""
        return self.cell.initial_memory(batch_size).clone()

    def step(self, memory: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """m_t = cell.step(m_{t-1}, x_t): memory [B, M] and token Long[B] -> the next memory [B, M]."""
        return self.cell.step(memory, torch.as_tensor(token, dtype=torch.long, device=memory.device))

    def stream(self, batch_size: int = 1) -> Stream:
        """A stream from m_0: feed it tokens chunk by chunk, it keeps only the current memory."""
        return Stream(self, batch_size)

    def encode(self, text: str) -> torch.Tensor:
        """Byte tokens Long[P] of ``text`` (byte-text tasks only)."""
        self._need_text()
        return torch.tensor(text_tokens(text), dtype=torch.long, device=self.device)

    def decode(self, tokens: Tokens) -> str:
        """UTF-8 text of byte tokens (byte-text tasks only); a cut character shows as U+FFFD."""
        self._need_text()
        return decode_text(torch.as_tensor(tokens).reshape(-1).tolist())

    def _need_text(self) -> None:
        if not self.text:
            raise UserError(
                f"task {self.spec.get('task')} is not byte text: its tokens are ids 0..{self.vocab_size - 1}"
            )


class Stream:
    """The RNN reading a token stream in chunks with O(1) state: only ``memory`` [B, M] is kept."""

    def __init__(self, rnn: RNN, batch_size: int = 1):
        if batch_size < 1:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self.rnn, self.batch_size = rnn, batch_size
        self.reset()

    def reset(self) -> None:
        """Back to the learned initial memory m_0."""
        self.memory = self.rnn.cell.initial_memory(self.batch_size).detach().clone()

    @torch.no_grad()
    def feed(self, tokens: Tokens) -> torch.Tensor:
        """Read ``tokens`` Long[B, T] (or [T], a list of ids, for a batch of one): logits of every fed
        token [B, T, C] ([T, C] for 1-D input); ``[..., -1, :]`` predicts the token after the chunk."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.memory.device)
        single = tokens.dim() == 1
        batch = tokens.unsqueeze(0) if single else tokens
        if batch.dim() != 2 or batch.shape[0] != self.batch_size:
            raise UserError(
                f"a stream of batch size {self.batch_size} reads tokens [{self.batch_size}, T]"
                f"{' or [T]' if self.batch_size == 1 else ''}, got shape {list(tokens.shape)}"
            )
        if batch.shape[1] == 0:
            logits = self.rnn.logits(self.memory).unsqueeze(1)[:, :0]  # [B, 0, C]: nothing read
        else:
            logits, self.memory = self.rnn(batch, self.memory)
        return logits[0] if single else logits


def _rng_untouched():
    """Building models draws from (and load_run seeds) the global CPU generator: keep the caller's."""
    return torch.random.fork_rng(devices=[])


def _spec(config, task) -> dict:
    """The export description of a run's RNN (see TrainedRNN)."""
    model = config.model
    image_shape = getattr(task, "image_shape", None)
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "cell": model.cell,
        "vocab_size": int(task.vocab_size),
        "num_classes": int(task.num_classes),
        "memory_size": model.memory_size,
        "readout_hidden": model.readout_hidden,
        "cell_options": cell_options(model),
        "model_config": asdict(model),
        "task": config.task,
        "task_options": config.task_options,
        "text": bool(getattr(task, "text", False)),
        "next_token": predicts_next_token(task),
        "image_shape": list(image_shape) if image_shape is not None else None,
        "method": config.method,
        "length": config.length,
        "seed": config.seed,
    }


def _ready(module: torch.nn.Module, device: str):
    return module.to(device).eval().requires_grad_(False)


def load(run_dir: PathLike, device: str = "cpu", teacher: bool = False):
    """The trained RNN of a finished run (a TrainedRNN in eval mode on ``device``, parameters frozen:
    ``requires_grad_(True)`` to fine-tune), or ``(rnn, teacher)`` when ``teacher`` is true. ``run_dir``
    may also name one of a run's checkpoint folders, RUN/checkpoints/NAME: e.g. the RNN as SMT left it,
    before DMT."""
    from smtrnn.methods import uses_teacher
    from smtrnn.run import checkpoint_folder, load_run  # the training stack: imported only when used

    run_dir, folder = checkpoint_folder(Path(run_dir))
    if not run_dir.is_dir():
        raise UserError(f"no run directory {run_dir}")
    if folder is None and not (run_dir / "result.json").is_file():
        raise UserError(f"run {run_dir} has not finished: no result.json yet")
    with _rng_untouched():
        config, task, models = load_run(folder or run_dir, device)
        rnn = TrainedRNN(_spec(config, task))
    rnn.load_state_dict(models.rnn.state_dict())
    rnn = _ready(rnn, device)
    if not teacher:
        return rnn
    if not uses_teacher(config):
        raise UserError(f"run {run_dir} was trained with {config.method}: it has no trained teacher")
    return rnn, _ready(models.teacher, device)


def _as_rnn(rnn_or_run_dir, device: str) -> TrainedRNN:
    if isinstance(rnn_or_run_dir, TrainedRNN):
        return rnn_or_run_dir
    if isinstance(rnn_or_run_dir, (str, os.PathLike)):
        return load(rnn_or_run_dir, device)
    raise TypeError(f"expected a TrainedRNN (smtrnn.load) or a run directory, got {type(rnn_or_run_dir).__name__}")


# ------------------------------------------------------------------------------------------------
# sampling


@dataclass
class Samples:
    """What ``generate`` drew: ``tokens`` [count, P + steps], the prompt then its continuation, and
    ``text``, the same decoded as UTF-8 (one string per sample) for byte-text tasks, else None."""

    tokens: torch.Tensor
    text: list[str] | None


def _prompt_ids(rnn: TrainedRNN, prompt: str | Tokens) -> list[int]:
    if isinstance(prompt, str):
        return text_tokens(prompt) if rnn.text else parse_token_ids(prompt, rnn.vocab_size)
    ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1).tolist()
    outside = [token for token in ids if not 0 <= token < rnn.vocab_size]
    if outside:
        raise UserError(f"prompt token ids {outside} are outside the vocabulary 0..{rnn.vocab_size - 1}")
    return ids


def generate(
    rnn_or_run_dir: TrainedRNN | PathLike,
    prompt: str | Tokens,
    steps: int = TEXT_STEPS,
    temperature: float = 1.0,
    count: int = 1,
    seed: int = 0,
    device: str = "cpu",
) -> Samples:
    """``count`` samples from the RNN alone (no teacher): it reads ``prompt`` from its learned m_0,
    then continues ``steps`` tokens on its own draws, one cell step per token. ``prompt``: text (byte
    tasks), token ids as a string "3 1 4", a list or a 1-D tensor; at least one token, since m_0
    predicts nothing. Temperature 0 is greedy. Deterministic given ``seed`` on any device."""
    rnn = _as_rnn(rnn_or_run_dir, device)
    check_temperature(temperature)
    if count < 1:
        raise UserError(f"count must be positive, got {count}")
    if steps < 1:
        raise UserError(f"steps must be positive, got {steps}")
    if not rnn.next_token:
        raise UserError(cannot_generate(rnn.spec.get("task")))
    ids = _prompt_ids(rnn, prompt)
    prompts = torch.tensor(ids, dtype=torch.long, device=rnn.device).reshape(1, -1).expand(count, -1)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.cat([prompts, generate_tokens(rnn, prompts, steps, temperature, generator)], 1)
    text = [decode_text(row) for row in tokens.tolist()] if rnn.text else None
    return Samples(tokens=tokens, text=text)


# ------------------------------------------------------------------------------------------------
# export


def _is_export(folder: Path) -> bool:
    """Whether ``folder`` holds only an earlier export's files (a killed export: config.json alone)."""
    if any(entry.name not in EXPORT_FILES for entry in folder.iterdir()):
        return False
    try:
        spec = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(spec, dict) and spec.get("format") == EXPORT_FORMAT


def export(rnn_or_run_dir: TrainedRNN | PathLike, out_dir: PathLike) -> Path:
    """Write ``out_dir/config.json`` (how to rebuild the RNN) and ``out_dir/model.safetensors`` (its
    weights only: no teacher, no optimizer). ``out_dir`` must be new, empty or an earlier export."""
    rnn = _as_rnn(rnn_or_run_dir, "cpu")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot export to {out}: it is a file")
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise UserError(f"{out} is not empty and holds no smtrnn export: choose a new or empty directory")
    weights = {key: value.detach().cpu().contiguous() for key, value in rnn.state_dict().items()}
    metadata = {"format": "pt", checkpoint.MODEL_CONFIG_KEY: json.dumps(rnn.spec["model_config"], sort_keys=True)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(out / "config.json", rnn.spec)  # first: marks the folder as an export
        checkpoint.write_atomic(out / "model.safetensors", safetensors_bytes(weights, metadata))
    except OSError as error:
        raise UserError(f"cannot write to {out}: {error.strerror}") from None
    return out


def _checked_spec(folder: Path) -> dict:
    spec = checkpoint.read_json(folder / "config.json")
    if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
        raise UserError(f'{folder}/config.json is not an smtrnn export (no "format": "{EXPORT_FORMAT}")')
    if spec.get("version") != EXPORT_VERSION:
        raise UserError(
            f"{folder} is an export of version {spec.get('version')}; this smtrnn reads version {EXPORT_VERSION}"
        )
    missing = [
        key
        for key in (
            "cell",
            "vocab_size",
            "num_classes",
            "memory_size",
            "readout_hidden",
            "cell_options",
            "model_config",
            "text",
        )
        if key not in spec
    ]
    if missing:
        raise UserError(f"{folder}/config.json lacks {', '.join(missing)}")
    known = {item.name for item in fields(ModelConfig)}
    if not isinstance(spec["model_config"], dict) or set(spec["model_config"]) - known:
        raise UserError(
            f"{folder}/config.json: model_config has unknown keys "
            f"{sorted(set(spec['model_config']) - known) if isinstance(spec['model_config'], dict) else ''}"
        )
    return spec


def load_export(export_dir: PathLike, device: str = "cpu") -> TrainedRNN:
    """The RNN rebuilt from an export's config.json and model.safetensors (eval mode, frozen)."""
    check_device(device)
    folder = Path(export_dir)
    if not folder.is_dir():
        raise UserError(f"no export directory {folder}")
    spec = _checked_spec(folder)
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"export {folder} has no model.safetensors")
    try:
        with _rng_untouched():
            rnn = TrainedRNN(spec)
    except (TypeError, ValueError, KeyError) as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"{folder}/config.json does not describe an RNN: {type(error).__name__}: {error}") from None
    checkpoint.load_weights(rnn, folder)  # UserError for a corrupt file, other names, shapes or model config
    return _ready(rnn, device)
