"""The ``recon`` command: one subcommand per module in apps/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from apps import batch, bench, ct, mri, train

SUBCOMMANDS = {"ct": ct, "mri": mri, "batch": batch, "bench": bench, "train": train}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description="Inverse-problem imaging: reconstruct, train, batch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed (recorded by `recon train` in its model card)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"recon {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
