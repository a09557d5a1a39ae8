"""Task registry: built-in tasks by name, a user's class from ``path/to/file.py:ClassName``, or the
user's data from ``text:PATH``, ``tokens:PATH.npy`` or ``sequences:PATH.npz`` (see tasks/files.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from pathlib import Path

from smtrnn.errors import UserError, type_mismatch
from smtrnn.tasks import files, pixels, synthetic, text
from smtrnn.tasks.base import IGNORE, Task

TASKS: dict[str, type[Task]] = {}


def register(name: str, cls: type[Task]) -> None:
    """Make ``cls`` available as ``--task name``."""
    TASKS[name] = cls


for _name, _cls in {**synthetic.REGISTRY, **pixels.REGISTRY, **text.REGISTRY}.items():
    register(_name, _cls)


def load_task_class(spec: str) -> type[Task]:
    """A registered name, ``FILE.py:ClassName`` loaded from the user's file, or the class of a data
    file form (``text:PATH`` and the like; ``make_task`` gives it the path)."""
    form = files.file_form(spec)
    if form is not None:
        return form[0]
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        path, class_name = spec.rsplit(":", 1)
        file = Path(path)
        if not file.is_file():
            raise UserError(f"task file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(f"smtrnn_user_task_{file.stem}", file)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"task file {path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:  # the user's code: report, do not crash with a traceback
            raise UserError(f"task file {path} failed to import: {type(error).__name__}: {error}") from error
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type):
            raise UserError(f"task file {path} has no class {class_name}")
        return cls
    if spec not in TASKS:
        raise UserError(
            f"unknown task {spec!r}; choose one of {', '.join(sorted(TASKS))} or FILE.py:ClassName, {files.FORMS_HELP}"
        )
    return TASKS[spec]


def task_options(cls: type, form: bool = False) -> list[str] | None:
    """The parameters ``cls`` takes (``path`` aside for a data file form), None when it takes any."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call decide
        return None
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in kinds and not (form and p.name == "path")]


def recorded_next_token(spec: str | None, vocab_size: int, num_classes: int) -> bool:
    """Whether a task whose record (a task.json or an export written before records said) names it
    ``spec`` predicts its next token: its class's own answer where ``spec`` is a built-in task or a data
    file form (no data read), else whether its classes are its tokens (a user's FILE.py:Class is not
    imported for this)."""
    if spec and not (":" in spec and spec.split(":", 1)[0].endswith(".py")):
        try:
            flag = getattr(load_task_class(spec), "next_token", None)
        except UserError:  # a task this version no longer has
            flag = None
        if flag is not None:
            return bool(flag)
    return num_classes == vocab_size


def _check_option_types(spec: str, cls: type, params: dict) -> None:
    """A task's option has its default's type where the task is a dataclass with a plain default: an
    integer where the default is one (values=1.5 is refused as such, not as "at least 2"), a number
    where it is a float, true or false where it is a bool."""
    if not dataclasses.is_dataclass(cls):
        return
    defaults = {item.name: item.default for item in dataclasses.fields(cls)}
    for name, value in params.items():
        if wanted := type_mismatch(value, defaults.get(name)):
            raise UserError(f"task {spec}: option {name} must be {wanted}, got {value!r}")


def make_task(spec: str, **params) -> Task:
    """Instantiate a task from its name (or file spec) and keyword parameters."""
    cls = load_task_class(spec)
    form = files.file_form(spec)
    known = task_options(cls, form is not None)
    unknown = sorted(set(params) - set(known)) if known is not None else []
    if unknown and known is not None:
        shown = [name for name in known if name != "name"]  # a task's label, not something to tune
        takes = f"its options (--task-option KEY=VALUE): {', '.join(shown)}" if shown else "it takes no --task-option"
        raise UserError(f"task {spec} has no option {', '.join(unknown)}; {takes}")
    _check_option_types(spec, cls, params)
    try:
        task = cls(**params) if form is None else cls(path=form[1], **params)  # type: ignore[call-arg]
    except TypeError as error:
        raise UserError(f"task {spec}: bad parameters {params}: {error}") from error
    for attribute in ("vocab_size", "sample"):
        if not hasattr(task, attribute):
            raise UserError(f"task {spec} has no {attribute}")
    if not hasattr(task, "num_classes"):
        task.num_classes = task.vocab_size
    return task


__all__ = ["IGNORE", "TASKS", "Task", "UserError", "load_task_class", "make_task", "register"]
