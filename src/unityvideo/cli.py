"""The `unityvideo` command line: one subcommand per job, each registered by its own room."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module has `register(subparsers)`, which adds its subcommand with `set_defaults(func=...)`;
# `func(args) -> int` is imported lazily so `unityvideo --help` stays fast.
COMMAND_MODULES = (
    "unityvideo.world.cli",
    "unityvideo.annotate.cli",
    "unityvideo.training.cli",
    "unityvideo.models.cli",
    "unityvideo.pipeline_cli",
    "unityvideo.eval.cli",
    "unityvideo.demo",
    "unityvideo.app",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unityvideo", description="UnityVideo: unified multi-modal "
                                     "multi-task video diffusion (RGB, depth, flow, segmentation, "
                                     "skeleton, DensePose).")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad flag (2, after argparse's one-line message)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.func(args)
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"unityvideo {args.command}: error: {err}", file=sys.stderr)  # one clear line, no traceback
        return 2


def is_user_error(err: BaseException) -> bool:
    """Errors that a user fixes (bad values, files, a run that diverged): reported in one line. The
    rest are bugs, and keep their traceback. Error classes opt in with `user_error = True`."""
    return isinstance(err, (ValueError, OSError)) or getattr(err, "user_error", False)


if __name__ == "__main__":
    sys.exit(main())
