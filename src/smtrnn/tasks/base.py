"""The task interface: a seeded generator of token sequences with sparse labels."""

from __future__ import annotations

from typing import ClassVar

import torch

from smtrnn.errors import UserError

IGNORE = -1  # target value of an unlabelled position


class Task:
    """A sequence task.

    Subclasses set ``vocab_size`` (number of input token ids, 0..vocab_size-1), ``num_classes``
    (number of target ids; defaults to ``vocab_size``) and implement ``sample``.
    Targets are -1 where a position carries no label.
    """

    name: str = "task"
    vocab_size: int
    num_classes: int
    # whether each label is the next input token (text, pixels, a token stream): only then can the RNN
    # generate, feeding its draws back in. None (a task that does not say): whether its classes are its
    # tokens. Every built-in task says; one whose labels are not its next tokens says False however many
    # classes it has (parity's two labels are its two tokens)
    next_token: ClassVar[bool | None] = None
    # settings this task trains best with, by dotted config field ({"model.future": 1}): a run takes them
    # where its user chose nothing else (config.with_task_settings); each one has a page that shows why
    settings: ClassVar[dict[str, object]] = {}

    def sample(self, batch_size: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Return ``{"x": LongTensor[B, T], "y": LongTensor[B, T]}``; y = -1 where unlabelled."""
        raise NotImplementedError

    def evaluation(self) -> Task:
        """The task that evaluation samples from. Synthetic tasks draw held-out sequences from the same
        generator (evaluation seeds them apart); a dataset returns a view of its held-out split."""
        return self

    min_length: int = 2  # the shortest sequence that holds one example of the task
    length_needs: str = "an input and a label"  # what those tokens are, for the error message

    def check_length(self, length: int) -> None:
        """Raise UserError when ``length`` cannot hold this task; override for other rules."""
        if length < self.min_length:
            raise UserError(
                f"{self.name}: length {length} cannot hold {self.length_needs}; it needs at least {self.min_length}"
            )

    @property
    def chance_accuracy(self) -> float:
        """Accuracy of uniform guessing over the classes that labels can take."""
        return 1.0 / self.num_classes


def predicts_next_token(task) -> bool:
    """Whether ``task``'s labels are its next input tokens: its ``next_token``, and for a task that
    does not say (a user's class) whether its classes are its tokens."""
    flag = getattr(task, "next_token", None)
    return bool(flag) if flag is not None else task.num_classes == task.vocab_size
