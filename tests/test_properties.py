"""Property tests of configuration: any config survives config.json (to_dict -> JSON -> from_dict);
any set of CLI overrides lands on exactly the fields it names; from_dict and make_task refuse
unknown keys with a UserError; TrainConfig.validate accepts exactly the valid values.

Strategies are derived from the dataclasses themselves, so new fields and re-tuned defaults are
covered without editing this file."""

from __future__ import annotations

import copy
import json
import keyword
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtrnn.cli import build_parser, config_from_args
from smtrnn.config import RETIRED, SECTIONS, TOP_LEVEL, RunConfig, option_name
from smtrnn.errors import UserError
from smtrnn.tasks import TASKS, make_task
from smtrnn.train import TrainConfig

FAST = settings(max_examples=60, deadline=None, database=None)  # no .hypothesis folder in the repo
PARSER = build_parser()
DEFAULT = RunConfig()

NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=12)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)


def value_strategy(default):
    """Values of the type the CLI gives the field (the type of its default; str where it is None)."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-(10**9), 10**9)
    if isinstance(default, float):
        return st.floats(allow_nan=False, allow_infinity=False)
    return TEXT


def options() -> list[tuple[str, str | None, str, object]]:
    """(option, section or None, field, default) for every generated option of ``train``."""
    table = [(option_name(name), None, name, getattr(DEFAULT, name)) for name in TOP_LEVEL]
    for section, _, _ in SECTIONS:
        for item in fields(getattr(DEFAULT, section)):
            default = getattr(getattr(DEFAULT, section), item.name)
            table.append((option_name(f"{section}.{item.name}"), section, item.name, default))
    return table


OPTIONS = options()


def overrides():
    """A random subset of options, each with a random value of its type."""
    return st.lists(st.sampled_from(range(len(OPTIONS))), unique=True, max_size=12).flatmap(
        lambda chosen: st.tuples(
            *[st.just(OPTIONS[i]) for i in chosen], *[value_strategy(OPTIONS[i][3]) for i in chosen]
        ).map(lambda drawn: list(zip(drawn[: len(drawn) // 2], drawn[len(drawn) // 2 :])))
    )


def json_values():
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**6), 10**6)
        | st.floats(allow_nan=False, allow_infinity=False)
        | TEXT,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
        max_leaves=6,
    )


def as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def apply(config: RunConfig, chosen) -> RunConfig:
    for (_, section, name, _), value in chosen:
        setattr(config if section is None else getattr(config, section), name, value)
    return config


@FAST
@given(chosen=overrides(), task_options=st.dictionaries(NAMES, json_values(), max_size=3))
def test_config_survives_config_json(chosen, task_options):
    config = apply(RunConfig(), chosen)
    config.task_options = task_options
    saved = json.dumps(config.to_dict(), indent=2, sort_keys=True)  # what _prepare writes
    restored = RunConfig.from_dict(json.loads(saved))
    assert restored.to_dict() == config.to_dict()
    assert type(restored.model) is type(config.model) and type(restored.dmt_train) is TrainConfig


@FAST
@given(chosen=overrides(), task_options=st.dictionaries(NAMES, json_values(), max_size=3))
def test_cli_overrides_set_exactly_the_fields_named(chosen, task_options):
    argv = ["train", "--out", "somewhere"]
    for (option, _, _, _), value in chosen:
        argv.append(f"{option}={as_text(value)}")  # '=' so that negative numbers and '-x' text parse
    for key, value in task_options.items():
        argv += ["--task-option", f"{key}={json.dumps(value)}"]
    config = config_from_args(PARSER.parse_args(argv))
    expected = apply(RunConfig(), chosen)
    expected.task_options = task_options
    assert config.to_dict() == expected.to_dict()  # the named fields changed, every other kept its default


@FAST
@given(key=NAMES, section=st.sampled_from([None] + [name for name, _, _ in SECTIONS]), value=json_values())
def test_from_dict_refuses_unknown_keys(key, section, value):
    values = copy.deepcopy(DEFAULT.to_dict())
    target = values if section is None else values[section]
    if key in target or f"{section}.{key}" in RETIRED:
        return
    target[key] = value
    with pytest.raises(UserError, match=key if section is None else section):
        RunConfig.from_dict(values)


@FAST
@given(index=st.sampled_from(range(len(OPTIONS))), value=json_values())
def test_from_dict_takes_a_setting_only_of_its_defaults_type(index, value):
    """A config.json edited by hand ("memory_size": "big") is one line, not a traceback at build time;
    an integer stands for a float, a string or null for a setting whose default is null (--init)."""
    _, section, name, default = OPTIONS[index]
    values = copy.deepcopy(DEFAULT.to_dict())
    (values if section is None else values[section])[name] = value
    fits = type(value) is type(default) or (isinstance(default, float) and type(value) is int)
    if fits or (default is None and isinstance(value, str)):
        RunConfig.from_dict(values)
    else:
        with pytest.raises(UserError, match=name):
            RunConfig.from_dict(values)


def test_from_dict_refuses_a_config_that_is_not_an_object():
    with pytest.raises(UserError, match="JSON object"):
        RunConfig.from_dict([1, 2])  # type: ignore[arg-type]


@FAST
@given(section=st.sampled_from([name for name, _, _ in SECTIONS]), value=json_values())
def test_from_dict_refuses_a_section_that_is_not_an_object(section, value):
    if isinstance(value, dict) and set(value) <= {f.name for f in fields(getattr(DEFAULT, section))}:
        return  # a (partial) section: valid
    values = DEFAULT.to_dict()
    values[section] = value
    with pytest.raises(UserError, match=section):
        RunConfig.from_dict(values)


@FAST
@given(
    steps=st.integers(-5, 5),
    batch=st.integers(-5, 5),
    lr=st.floats(-1, 1, allow_nan=False),
    log_every=st.integers(-2, 3),
    checkpoint_every=st.integers(-2, 3),
)
def test_train_config_validation_accepts_exactly_the_valid_values(steps, batch, lr, log_every, checkpoint_every):
    config = TrainConfig(steps=steps, batch_size=batch, lr=lr, log_every=log_every, checkpoint_every=checkpoint_every)
    valid = steps >= 0 and batch >= 1 and lr > 0 and log_every >= 1 and checkpoint_every >= 1
    if valid:
        config.validate()
    else:
        with pytest.raises(UserError):
            config.validate()


@FAST
@given(
    name=st.sampled_from(sorted(TASKS)), key=NAMES.filter(lambda k: not keyword.iskeyword(k)), value=st.integers(0, 9)
)
def test_make_task_refuses_unknown_parameters(name, key, value):
    known = {f.name for f in fields(TASKS[name])} if hasattr(TASKS[name], "__dataclass_fields__") else set()
    if key in known:
        return
    with pytest.raises(UserError, match=key):
        make_task(name, **{key: value})
