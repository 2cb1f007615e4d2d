"""Every option of ``facekp`` and ``facekp-train`` shows its default in ``--help``."""

from __future__ import annotations

import argparse
import re

import pytest

from facekp.cli import _parser as facekp_parser
from facekp.train.cli import _parser as train_parser


def _commands(parser: argparse.ArgumentParser, name: str):
    """``(name, parser)`` of ``parser`` and of each of its subcommands, recursively."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _commands(p, f"{name} {sub}")


COMMANDS = [*_commands(facekp_parser(), "facekp"), *_commands(train_parser(), "facekp-train")]


@pytest.mark.parametrize("name,parser", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_shows_its_default(name, parser):
    text = parser.format_help()
    # One block per option: from its line "  --option ..." to the next option's.
    blocks = re.split(r"\n(?=  -)", text)
    checked = 0
    for action in parser._actions:
        if not action.option_strings or action.required or action.nargs == 0:
            continue  # positionals, required options and flags (store_true, --help) have no default to show
        block = next(b for b in blocks if b.lstrip().startswith(action.option_strings[0]))
        assert "default" in " ".join(block.split()), f"{name} {action.option_strings[0]}: {block.strip()}"
        checked += 1
    assert checked or name in ("facekp", "facekp-train")  # every subcommand has options with defaults


def test_defaults_are_the_real_ones():
    text = " ".join(dict(COMMANDS)["facekp-train fit"].format_help().split())
    assert "--epochs EPOCHS passes over the training faces (default: 120)" in text
    assert "(default: 0.002)" in text  # --lr, from the value argparse would use
    assert dict(COMMANDS)["facekp-train fit"].parse_args(["--out", "x"]).lr == 0.002
