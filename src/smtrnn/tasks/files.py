"""The user's own data as a task, without code: ``--task FORM:PATH``.

``text:PATH``
    Any file read as bytes (vocabulary 256), next-byte prediction on random crops like the
    built-in text tasks; generation prints UTF-8 text. Options: ``heldout``, ``split``, ``limit``.
``tokens:PATH.npy``
    A 1-D array of non-negative integers (``np.save``) as one token stream, next-token prediction
    on random crops. Vocabulary: the largest token + 1, or the option ``vocab=N``. Options:
    ``heldout``, ``split``, ``limit``, ``vocab``.
``sequences:PATH.npz``
    Integer arrays ``x`` (inputs) and ``y`` (labels, -1 where unlabelled) of one shape [N, T]
    (``np.savez(path, x=x, y=y)``). A sample is a random row, cropped to a random window of
    ``length`` columns when ``length`` < T. Vocabulary: the largest x + 1 (option ``vocab=N``);
    classes: the largest y + 1 (option ``classes=N``). Options: ``heldout``, ``split``, ``vocab``,
    ``classes``.

Options:
  heldout: the fraction at the end of the file (bytes, tokens or rows; at least one) that is
           held out for evaluation and never trained on; default 0.1, strictly between 0 and 1.
  split:   which split ``sample`` draws from, "train" (default) or "test"; ``evaluation()`` gives "test".
  limit:   keep only the first ``limit`` bytes or tokens of each split (quick runs).

Files are read once per process (again if they change), so building a task twice is cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from smtrnn.errors import UserError, check_int
from smtrnn.tasks.base import IGNORE, Task
from smtrnn.tasks.streams import SPLITS, StreamTask
from smtrnn.tasks.text import TextStream

FORMS_HELP = "text:PATH, tokens:PATH.npy, sequences:PATH.npz"


# ---------------------------------------------------------------------------------------------
# reading files


def _existing(form: str, path: str) -> Path:
    """``path`` as a Path; UserError unless it names a file."""
    if not path:
        raise UserError(f"{form}: give a path after the colon, as in {form}:data/FILE")
    file = Path(path)
    if file.is_dir():
        raise UserError(f"{form}:{path}: {path} is a directory; give a file")
    if not file.is_file():
        why = "not a regular file" if file.exists() else "file not found"
        raise UserError(f"{form}:{path}: {why}: {path}")
    return file


def _cached(reader):
    """``reader(form, path)`` run once per process and file version (its place, size and modification time)."""
    cached = functools.lru_cache(maxsize=8)(lambda form, path, place, size, mtime: reader(form, path))

    @functools.wraps(reader)
    def read(form: str, path: str):
        file = _existing(form, path)
        stat = file.stat()
        if stat.st_size == 0:
            raise UserError(f"{form}:{path}: the file is empty")
        return cached(form, path, str(file.resolve()), stat.st_size, stat.st_mtime_ns)

    return read


def _load_numpy(form: str, path: str, suffix: str) -> dict[str, np.ndarray]:
    """The arrays of a .npy (key "") or .npz file; UserError if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            loaded = np.load(handle)  # numpy refuses pickled (object) arrays by default
            if isinstance(loaded, np.ndarray):
                return {"": loaded}
            with loaded:
                return {key: loaded[key] for key in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = str(error).split(". ")[0]  # numpy's first sentence; the rest suggests unsafe loading
        raise UserError(
            f"{form}:{path}: not a readable {suffix} file, damaged or of another kind "
            f"({type(error).__name__}: {reason})"
        ) from None


def _integers(form: str, path: str, name: str, array: np.ndarray, ndim: int) -> np.ndarray:
    """``array`` if it is a non-empty integer array of ``ndim`` dimensions, else UserError."""
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"{form}:{path}: {name} must hold integers, not {array.dtype}")
    if array.ndim != ndim:
        raise UserError(
            f"{form}:{path}: {name} must have {ndim} dimension{'s' * (ndim > 1)}, got shape {list(array.shape)}"
        )
    if array.size == 0:
        raise UserError(f"{form}:{path}: {name} is empty")
    return array


@_cached
def _read_stream(form: str, path: str) -> np.ndarray:
    """The whole token stream of a ``text`` or ``tokens`` file, checked."""
    if form == "text":
        try:
            return np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
        except OSError as error:
            raise UserError(f"text:{path}: cannot read it ({error.strerror})") from None
    arrays = _load_numpy(form, path, ".npy")
    if "" not in arrays:
        raise UserError(f"{form}:{path}: holds an archive of arrays (.npz); give one array saved with np.save")
    stream = _integers(form, path, "the array", arrays[""], 1)
    if stream.min() < 0:
        raise UserError(f"{form}:{path}: tokens must be non-negative, found {stream.min()}")
    return stream


@_cached
def _read_sequences(form: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of a ``sequences`` file, checked (labels may be -1, nothing below)."""
    arrays = _load_numpy(form, path, ".npz")
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise UserError(
            f"{form}:{path}: needs arrays x and y (np.savez(path, x=..., y=...)); missing {' and '.join(missing)}"
        )
    x, y = (_integers(form, path, key, arrays[key], 2) for key in ("x", "y"))
    if x.shape != y.shape:
        raise UserError(f"{form}:{path}: x and y must have one shape, got {list(x.shape)} and {list(y.shape)}")
    if x.min() < 0:
        raise UserError(f"{form}:{path}: x must be non-negative, found {x.min()}")
    if y.min() < IGNORE:
        raise UserError(f"{form}:{path}: labels y must be >= 0, or -1 where unlabelled; found {y.min()}")
    if y.max() == IGNORE:
        raise UserError(f"{form}:{path}: y has no labels (it is -1 everywhere)")
    return x, y


# ---------------------------------------------------------------------------------------------
# options


def _check_heldout(name: str, heldout) -> None:
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float)) or not 0 < heldout < 1:
        raise UserError(f"{name}: heldout must be a fraction strictly between 0 and 1, got {heldout!r}")


def _check_split(name: str, split) -> None:
    if split not in SPLITS:
        raise UserError(f"{name}: split must be one of {', '.join(SPLITS)}, got {split!r}")


def _held_out_start(name: str, count: int, heldout: float, unit: str) -> int:
    """Where the held-out tail of ``count`` items begins: at least one item on each side."""
    held = max(1, round(count * heldout))
    if held >= count:
        raise UserError(
            f"{name}: {count} {unit} cannot be split into a training part and a held-out part "
            f"(heldout {heldout}); use more data"
        )
    return count - held


def _size(name: str, option: str, given: int | None, found: int, what: str) -> int:
    """The option ``given`` (checked against the largest value ``found`` - 1), else ``found``."""
    if given is None:
        return found
    check_int(name, option, given, 1)
    if found > given:
        raise UserError(f"{name}: the largest {what}, {found - 1}, is not below {option}={given}")
    return given


# ---------------------------------------------------------------------------------------------
# tasks


@dataclass
class FileStream(StreamTask):
    """A token stream from the file ``path``; its last ``heldout`` fraction is the test split."""

    path: str = ""
    heldout: float = 0.1
    form = "tokens"

    def __post_init__(self):
        super().__post_init__()
        _check_heldout(self.name, self.heldout)
        _held_out_start(self.name, len(self.whole()), self.heldout, "tokens")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.form}:{self.path}"

    def whole(self) -> np.ndarray:
        """Every token of the file, both splits."""
        return _read_stream(self.form, self.path)

    def load_stream(self) -> np.ndarray:
        whole = self.whole()
        start = _held_out_start(self.name, len(whole), self.heldout, "tokens")
        return (whole[:start] if self.split == "train" else whole[start:])[: self.limit]

    def check_length(self, length: int) -> None:
        """Both splits (training crops and the held-out crops of evaluation) must hold a crop."""
        Task.check_length(self, length)
        for split, view in {self.split: self, "test": self.evaluation()}.items():
            available = len(view.tokens())
            if length + 1 > available:
                where = " (the held-out end of the file)" if split == "test" else ""
                raise UserError(
                    f"{self.name}: a crop of length {length} needs {length + 1} tokens but the {split} "
                    f"split{where} has {available}; shorten length, change heldout or use more data"
                )


@dataclass
class TextFile(FileStream):
    """Any file as bytes, vocabulary 256; generation shows UTF-8 text."""

    form = "text"
    text = True
    decode = staticmethod(TextStream.decode)


@dataclass
class TokenFile(FileStream):
    """A 1-D integer .npy array as a token stream; ``vocab`` defaults to the largest token + 1."""

    vocab: int | None = None
    form = "tokens"

    def __post_init__(self):
        super().__post_init__()
        self.vocab_size = self.num_classes = _size(self.name, "vocab", self.vocab, int(self.whole().max()) + 1, "token")


@dataclass
class SequenceFile(Task):
    """Rows of a .npz file's ``x`` and ``y`` [N, T]; the last ``heldout`` fraction of rows is the test split."""

    next_token = False  # labels, not the next input

    path: str = ""
    heldout: float = 0.1
    split: str = "train"
    vocab: int | None = None
    classes: int | None = None
    _data: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_heldout(self.name, self.heldout)
        _check_split(self.name, self.split)
        x, y = self.whole()
        _held_out_start(self.name, len(x), self.heldout, "rows")
        self.vocab_size = _size(self.name, "vocab", self.vocab, int(x.max()) + 1, "token")
        self.num_classes = _size(self.name, "classes", self.classes, int(y.max()) + 1, "label")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"sequences:{self.path}"

    def whole(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of every row, both splits (kept: a run goes on if the file changes)."""
        if self._data is None:
            self._data = _read_sequences("sequences", self.path)
        return self._data

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of this task's split."""
        x, y = self.whole()
        start = _held_out_start(self.name, len(x), self.heldout, "rows")
        part = slice(0, start) if self.split == "train" else slice(start, None)
        return x[part], y[part]

    def evaluation(self) -> SequenceFile:
        return self if self.split == "test" else dataclasses.replace(self, split="test")

    def check_length(self, length: int) -> None:
        super().check_length(length)
        columns = self.whole()[0].shape[1]
        if length > columns:
            raise UserError(
                f"{self.name}: length {length} is longer than the rows, which have {columns} columns; "
                f"use --length {columns} or less"
            )

    def sample(self, batch_size: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        self.check_length(length)
        x, y = self.rows()
        rows = torch.randint(0, len(x), (batch_size, 1), generator=generator).numpy()
        starts = torch.randint(0, x.shape[1] - length + 1, (batch_size, 1), generator=generator).numpy()
        columns = starts + np.arange(length)
        return {
            "x": torch.from_numpy(x[rows, columns].astype(np.int64)),
            "y": torch.from_numpy(y[rows, columns].astype(np.int64)),
        }


FORMS: dict[str, type[Task]] = {"text": TextFile, "tokens": TokenFile, "sequences": SequenceFile}


def file_form(spec: str) -> tuple[type[Task], str] | None:
    """``(task class, path)`` when ``spec`` is FORM:PATH with FORM one of text, tokens, sequences."""
    form, colon, path = spec.partition(":")
    return (FORMS[form], path) if colon and form in FORMS else None
