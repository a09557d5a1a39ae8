"""The options of ``smtrnn train``, generated from the config dataclasses (config.SECTIONS) with their help
from the comments beside the fields, so every field is settable and names and help never drift apart;
and the config they give.

    add_config_options(parser)                  # --task, --length, ..., --smt-horizon, --task-option KEY=VALUE
    config = config_from_args(parser.parse_args(argv))
    check_given(config, args)                   # an option the run would not read is refused
    note = take_settings(config, args)          # the method's and task's own settings where none was given
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from smtrnn.errors import UserError


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _type_of(default):
    if isinstance(default, bool):
        return _bool
    if default is None:
        return str
    return type(default)


def _help(text: str, default) -> str:
    return f"{text} (default: {default})" if text else f"(default: {default})"


def _choices() -> dict[str, str]:
    """The choices of the options that name a task, method or cell, for their help."""
    from smtrnn.cells import CELLS
    from smtrnn.methods import METHODS
    from smtrnn.tasks import TASKS
    from smtrnn.tasks.files import FORMS_HELP

    return {
        "task": f"{', '.join(sorted(TASKS))}, FILE.py:Class or your data ({FORMS_HELP})",
        "method": ", ".join(METHODS),
        "model.cell": ", ".join(CELLS),
    }


def _add_option(parser, option: str, dest: str, default, text: str) -> None:
    """One option; a yes/no one works bare (--x), negated (--no-x) and with a value (--x false)."""
    metavar = dest.rpartition(".")[2].upper()
    if isinstance(default, bool):
        parser.add_argument(
            option,
            dest=dest,
            nargs="?",
            const=True,
            type=_bool,
            default=None,
            metavar="yes|no",
            help=_help(text, default),
        )
        parser.add_argument("--no-" + option[2:], dest=dest, action="store_const", const=False, help=argparse.SUPPRESS)
    else:
        parser.add_argument(
            option, dest=dest, type=_type_of(default), default=None, metavar=metavar, help=_help(text, default)
        )


def add_config_options(parser: argparse.ArgumentParser) -> None:
    from smtrnn.config import SECTIONS, TOP_LEVEL, RunConfig, field_help, option_name

    base, choices = RunConfig(), _choices()
    top = field_help(RunConfig)
    for name in TOP_LEVEL:
        text = top[name] + (f"; one of {choices[name]}" if name in choices else "")
        _add_option(parser, option_name(name), name, getattr(base, name), text)
    for section, kind, _ in SECTIONS:
        group = parser.add_argument_group(section)
        helps = field_help(kind)
        for item in fields(kind):
            dotted = f"{section}.{item.name}"
            text = helps.get(item.name, "") + (f"; one of {choices[dotted]}" if dotted in choices else "")
            if section == "dmt_train" and item.name == "steps":
                text += "; added to --steps: smt+dmt trains --steps SMT steps, then --dmt-steps DMT steps"
            _add_option(group, option_name(dotted), dotted, getattr(getattr(base, section), item.name), text)
    parser.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the task, e.g. values=4 (repeatable)",
    )


def _parse_task_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--task-option wants KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        if not key.strip():
            raise UserError(f"--task-option wants KEY=VALUE, got {pair!r}: the key is empty")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def given_fields(args: argparse.Namespace) -> set[str]:
    """The config fields (``"smt.horizon"``, ``"train_length"``) the user gave an option for."""
    from smtrnn.config import TOP_LEVEL

    return {key for key, value in vars(args).items() if ("." in key or key in TOP_LEVEL) and value is not None}


def config_from_args(args: argparse.Namespace, base=None):
    """A RunConfig from defaults (or ``base``) overridden by the options the user gave (nothing else:
    the task's own settings are ``take_task_settings``'s, once the config is checked)."""
    from smtrnn.config import TOP_LEVEL, RunConfig, set_field
    from smtrnn.tasks.files import file_form

    config = base or RunConfig()
    for name in TOP_LEVEL:
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    for key, value in vars(args).items():
        if "." in key and value is not None:
            set_field(config, key, value)
    config.task_options.update(_parse_task_options(args.task_option))
    if file_form(config.task) is not None and config.task.partition(":")[2]:
        # text:PATH etc.: saved with an absolute path, so a resume works anywhere
        form, _, path = config.task.partition(":")
        config.task = f"{form}:{Path(path).expanduser().resolve()}"
    return config


def take_settings(config, args: argparse.Namespace) -> str | None:
    """Give ``config`` its method's own settings (``methods.METHOD_SETTINGS``: what the method is, so
    taken silently) and its task's (``Task.settings``: a departure from the shared recipe, so named)
    where the user gave no option; return one line naming the task's (None where the run reads none)."""
    from smtrnn.config import option_name, with_method_settings, with_task_settings

    with_method_settings(config, given_fields(args))
    chosen = with_task_settings(config, given_fields(args))
    if not chosen:
        return None
    as_typed = lambda value: str(value).lower() if isinstance(value, bool) else value  # what the option takes
    shown = ", ".join(f"{option_name(dotted)} {as_typed(value)}" for dotted, value in chosen.items())
    return f"{config.task} trains with its own settings: {shown} (give the option to choose otherwise)"


def check_given(config, args: argparse.Namespace) -> None:
    """Refuse an option the chosen method or cell does not read (never silently ignored), and a learning
    rate that can only be a typo."""
    from smtrnn.config import check_learning_rates, unread_options
    from smtrnn.methods import METHODS

    config.model.validate(teacher=False)  # an unknown cell first: the check below assumes a known one
    if config.method not in METHODS:
        raise UserError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    unread = unread_options(config, sorted(given_fields(args)))
    if unread:
        raise UserError(unread[0])
    check_learning_rates(config)
