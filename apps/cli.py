"""The ``recon`` command: one subcommand per module in apps/.

Exit status: 0 when the command did its work; 1 for a run failure (a file that cannot be written,
a full disk, no memory); 2 for bad arguments (an option out of range, a missing or malformed input
file, a request too large for the memory). Failures are reported on one line,
``recon <command>: error: <what went wrong>``, without a traceback; warnings likewise, as
``recon <command>: warning: <message>``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence

from apps import batch, bench, ct, mri, train

SUBCOMMANDS = {"ct": ct, "mri": mri, "batch": batch, "bench": bench, "train": train}
EXIT_STATUS = ("exit status: 0 ok; 1 run failure (a file that cannot be written, a full disk, no memory); "
               "2 bad arguments (an option out of range, a missing or malformed input, a request too large for "
               "the memory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description="Inverse-problem imaging: reconstruct, train, batch.",
                                     epilog=EXIT_STATUS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub)
    return parser


def flag_names(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with the library's argument names replaced by the command's flags.

    The library names an argument as ``name: ...`` (or suggests ``name=None``); a command lists in
    its module's ``FLAGS`` which of those its options set, so the user reads the flag they typed.

    Example:
        >>> flag_names("scan.h5: slices: one slice, not a stack; leave slices=None", {"slices": "--slice"})
        'scan.h5: --slice: one slice, not a stack; leave out --slice'
        >>> flag_names("noise_std: got 0.0 (noise-free data: pass lam explicitly)", {"noise_std": "--noise-std",
        ...                                                                       "lam": "--lam"})
        '--noise-std: got 0.0 (noise-free data: pass --lam explicitly)'
    """
    message = re.sub(r"\bleave (\w+)=None", lambda m: f"leave out {flags[m[1]]}" if m[1] in flags else m[0], message)
    message = re.sub(r"\bpass (\w+)\b", lambda m: f"pass {flags[m[1]]}" if m[1] in flags else m[0], message)
    return re.sub(r"(?<![\w.\-\[])(\w+): ", lambda m: f"{flags[m[1]]}: " if m[1] in flags else m[0], message)


def _report(command: str, message: str, status: int) -> int:
    print(f"recon {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Warnings as ``recon <command>: warning: <message>`` on stderr, not Python's file:line form."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"recon {command}: warning: {' '.join(str(message).split())}", file=sys.stderr)
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed (recorded by `recon train` in its model card)
    flags = getattr(SUBCOMMANDS[args.command], "FLAGS", {})
    try:
        with _one_line_warnings(args.command):
            return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        return _report(args.command, flag_names(str(err), flags), 2)
    except MemoryError as err:
        return _report(args.command, f"out of memory{': ' + str(err) if str(err) else ''} (a smaller problem, "
                                     "fewer methods, or a machine with more memory may do)", 1)
    except OSError as err:
        return _report(args.command, str(err), 1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
