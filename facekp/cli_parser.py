"""The argument parser of facekp's command lines: every option's ``--help`` line shows its default."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its default.

    Flags (``store_true``...), required options and options whose default is ``None`` get nothing
    added: a ``None`` default means something only the help text can say (``(default: bundled)``).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.required
            or action.default in (None, argparse.SUPPRESS)
            or action.nargs == 0  # flags: store_true, store_const, count, help, version
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class ArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` with :class:`DefaultsHelpFormatter`; subcommands made by
    ``add_subparsers().add_parser`` are of this class too (argparse's default ``parser_class``)."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = DefaultsHelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

