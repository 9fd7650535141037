"""Command-line options derived from the declared settings (:mod:`onnx_zip.config`).

Every setting with a ``flag`` becomes one argparse option; nothing is re-declared per subcommand.
A flag that several groups declare (``--seed``, ``--threads``, ``--lr``, ``--optimizer``, ``--batch``)
is added once and feeds every group that declares it. Older spellings (``Option.aliases``) are
accepted but hidden from ``--help``.

Argparse only parses the text here (a number, a word, ``TASK=VALUE`` pairs); ranges, choices and the
groups' own rules are checked by the configuration, every problem at once
(:func:`configs_from_args` returns the problems instead of raising, so that a command can report
them together with its own).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnx_zip.config import GROUPS, Option, iter_options

#: Headings of the argument groups in ``--help``.
TITLES = {
    "zip": "zipping (which neurons are shared and how they are merged)",
    "calibration": "calibration (the statistics of each model's layers)",
    "finetune": "fine-tuning (joint, on every task)",
    "retrain": "layer-wise zipping with joint retraining after each hidden layer (the paper's Algorithm 1)",
}

_NUMBER_KINDS = {"int": int, "number": float}


def dest(option: Option) -> str:
    """The argparse destination of an option: its flag without dashes (``--calib-limit`` → ``calib_limit``)."""
    assert option.flag is not None
    return option.flag.lstrip("-").replace("-", "_")


def _help(option: Option) -> str:
    text = option.help
    if option.kind == "bool":
        return text if option.default is False else f"turn off: {text}"
    if option.default is None or option.default == () or "default" in text:
        return text
    return f"{text} (default {option.default})"


def _add(group: argparse._ArgumentGroup, option: Option) -> None:
    assert option.flag is not None
    spellings = [option.flag]
    kwargs: dict[str, Any] = {"dest": dest(option), "default": None, "help": _help(option)}
    if option.kind == "bool":
        kwargs.update(action="store_const", const=not option.default)
    elif option.kind in _NUMBER_KINDS:
        kwargs.update(type=_NUMBER_KINDS[option.kind], metavar=option.metavar or ("N" if option.kind == "int" else "X"))
    elif option.kind == "strings":
        kwargs.update(action="append", metavar=option.metavar or "TEXT")
    else:
        allowed = option.allowed()
        if allowed is not None and option.kind == "str":
            kwargs.update(metavar="{" + ",".join(map(str, allowed)) + "}")
        else:
            kwargs.update(metavar=option.metavar or "VALUE")
    group.add_argument(*spellings, **kwargs)
    for alias in option.aliases:
        group.add_argument(alias, **{**kwargs, "help": argparse.SUPPRESS})


def options_of(sections: Sequence[str], *, skip: Sequence[str] = ()) -> dict[str, Option]:
    """``{flag: first option declaring it}`` of the sections, without the flags in ``skip``."""
    out: dict[str, Option] = {}
    for section in sections:
        for option in iter_options(GROUPS[section]):
            if option.flag is not None and option.flag not in skip and option.flag not in out:
                out[option.flag] = option
    return out


def add_config_arguments(
    parser: argparse.ArgumentParser, sections: Sequence[str], *, skip: Sequence[str] = ()
) -> None:
    """Add the options of ``sections`` (``zip``, ``calibration``, ``finetune``, ``retrain``) to a parser,
    one argument group per section, each flag once (the first section declaring it holds it)."""
    options = options_of(sections, skip=skip)
    for section in sections:
        mine = [o for o in options.values() if o.section == section]
        if mine:
            group = parser.add_argument_group(TITLES.get(section, section))
            for option in mine:
                _add(group, option)


def _pairs(text: str, flag: str, problems: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        task, sep, value = part.partition("=")
        if not sep or not task.strip() or not value.strip():
            problems.append(f"{flag} {part!r}: expected TASK=VALUE[,TASK=VALUE]")
        elif task.strip() in out:
            problems.append(f"{flag}: task {task.strip()!r} given twice")
        else:
            out[task.strip()] = value.strip()
    return out


def _json_file(path: str, flag: str, problems: list[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        problems.append(f"{flag} {path}: file not found")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{flag} {path}: cannot read ({exc})")
    except json.JSONDecodeError as exc:
        problems.append(f"{flag} {path}: not valid JSON ({exc})")
    return None


def _steps(text: str, flag: str, problems: list[str]) -> int | list[int] | None:
    try:
        parts = [int(x) for x in text.split(",")]
    except ValueError:
        problems.append(f"{flag} {text!r}: expected whole numbers, comma separated")
        return None
    return parts[0] if len(parts) == 1 else parts


def cli_value(option: Option, raw: Any, problems: list[str]) -> Any:
    """The configuration value of what was typed for ``option`` (``None``: invalid, in ``problems``)."""
    flag = option.flag or option.name
    if option.cli_file:
        return _json_file(raw, flag, problems)
    if option.zero_means_none and raw == 0:
        return None
    if option.kind == "steps":
        return _steps(raw, flag, problems)
    if option.kind == "mapping":
        return _pairs(raw, flag, problems)
    if option.kind == "weights":
        pairs = _pairs(raw, flag, problems)
        out = {}
        for task, value in pairs.items():
            try:
                out[task] = float(value)
            except ValueError:
                problems.append(f"{flag} {task}={value}: not a number")
        return out
    return raw


def given(args: argparse.Namespace, sections: Sequence[str], *, skip: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """``{section: {option name: value}}`` of the options given on the command line (raw text)."""
    out: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for section in sections:
        for option in iter_options(GROUPS[section]):
            if option.flag is None or option.flag in skip:
                continue
            raw = getattr(args, dest(option), None)
            if raw is not None:
                out[section][option.name] = (option, raw)
    return out


def configs_from_args(
    args: argparse.Namespace,
    sections: Sequence[str],
    *,
    skip: Sequence[str] = (),
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The configuration groups of ``sections`` from parsed arguments, and every problem found.

    Args:
        args: Parsed by a parser built with :func:`add_config_arguments` for the same sections.
        sections: The groups to build.
        skip: Flags the command handles itself.
        extra: ``{section: {option name: value}}`` set by the command (not on the command line); what
            the user typed wins.

    Returns:
        ``({section: group or None}, problems)``: a group is ``None`` when any of its values is invalid.
    """
    problems: list[str] = []
    built: dict[str, Any] = {}
    for section, values in given(args, sections, skip=skip).items():
        data = dict((extra or {}).get(section, {}))
        for name, (option, raw) in values.items():
            before = len(problems)
            value = cli_value(option, raw, problems)
            if len(problems) == before:
                data[name] = value
        group, found = GROUPS[section].collect(data)
        built[section] = group
        problems += [_flag_spelling(p, section) for p in found]
    return built, problems


def _flag_spelling(problem: str, section: str) -> str:
    """A configuration message names ``section.option``; on the command line, name the flag too."""
    for option in iter_options(GROUPS[section]):
        key = option.key
        if option.flag and problem.startswith(key + " "):
            return f"{option.flag} ({key}){problem[len(key):]}"
    return problem
