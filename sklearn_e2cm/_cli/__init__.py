"""The command line ``sklearn-e2cm`` (also ``python -m sklearn_e2cm``).

Subcommands, one module each: ``demo`` (:mod:`.demo`), ``fit`` (:mod:`.fit`),
``curve`` (:mod:`.curve`) and ``predict`` (:mod:`.predict`); the loading of
networks, data and exits files they share is in :mod:`._load`.

User errors (bad arguments, missing or unreadable files, data that does not
fit the network, exits that do not match it) end the program with exit status
2 and one line on stderr, ``<prog> <command>: error: <message>``; ``--debug``
shows the traceback instead.
"""

import argparse
import sys
import warnings

from ._load import CLIError, one_line

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def _program_name():
    argv0 = sys.argv[0] if sys.argv else ""
    return "sklearn-e2cm" if argv0.replace("\\", "/").rsplit("/", 1)[-1].startswith(
        "sklearn-e2cm") else "python -m sklearn_e2cm"


def build_parser(prog=None):
    """The argument parser of the command line, with every subcommand.

    Parameters
    ----------
    prog : str, default=None
        Program name shown in help and errors (default: ``sklearn-e2cm`` when
        run as the console script, ``python -m sklearn_e2cm`` otherwise).

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    from .. import __version__
    from . import curve, demo, fit, predict

    prog = prog or _program_name()
    parser = _Parser(
        prog=prog,
        description="Early Exit Class Means (E2CM): early exits for trained models, "
                    "without gradients. Run '%(prog)s COMMAND --help' for a command's options.")
    version = f"{prog} {__version__}"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for module in (demo, fit, curve, predict):
        p = module.add_parser(sub)
        p.add_argument("--version", action="version", version=version)
        p.add_argument("--debug", action="store_true",
                       help="show the Python traceback of an error instead of one line")
        p.set_defaults(run=module.run)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    stream = sys.stderr if file is None else file
    stream.write(f"warning: {one_line(str(message))}\n")


def main(argv=None):
    """Entry point of ``sklearn-e2cm`` and ``python -m sklearn_e2cm``.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    status : int
        0 on success, 2 on a user error (one line on stderr).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        return args.run(args) or 0
    with warnings.catch_warnings():
        # the library's warnings on one line; deprecation notices of the libraries
        # underneath (torch, ...) speak to developers, not to the command's user
        warnings.showwarning = _one_line_warning
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _run(parser, args)


def _run(parser, args):
    try:
        return args.run(args) or 0
    except CLIError as exc:
        sys.stderr.write(f"{parser.prog} {args.command}: error: {one_line(str(exc))}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog} {args.command}: interrupted\n")
        return 130
