"""Command-line options shared by every ``python -m data_prep.<name>`` command, and its exit codes.

Exit codes: 0 success; 1 ``--strict`` and rows were skipped; 2 bad input or flags (the message
names the file, split or column and what to do); 130 / 143 interrupted by SIGINT (Ctrl-C) / SIGTERM
(the split being written keeps its previous outputs, see :mod:`data_prep.writer`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from data_prep.images import MaskOptions
from data_prep.interrupts import Terminated, terminate_raises
from data_prep.pipeline import RowMapper, RunOptions
from data_prep.problems import DataPrepError, StrictModeError
from recipe.papo.prompt import (
    DEFAULT_PROMPT_TEMPLATE,
    PromptTemplateError,
    check_prompt_template,
)

DEFAULT_MASK_RATIO = 0.6
DEFAULT_PATCH_SIZE = 14
DEFAULT_SEED = 0
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, masks: bool) -> None:
    """Add ``--out``, ``--num-proc``, ``--max-rows``, ``--strict``, ``--row-group-size``, ``--prompt-template``.

    With ``masks``, also ``--precompute-masks``, ``--mask-ratio``, ``--patch-size`` and ``--seed``.
    """
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--num-proc", type=positive_int, default=1, help="worker processes (default 1)")
    parser.add_argument("--max-rows", type=positive_int, default=None, help="read only the first N rows of each split")
    parser.add_argument("--strict", action="store_true", help="fail (exit 1, no parquet) if any row is skipped")
    parser.add_argument(
        "--row-group-size",
        type=positive_int,
        default=256,
        help="rows per parquet row group and read batch (default 256)",
    )
    parser.add_argument(
        "--prompt-template",
        type=Path,
        default=None,
        metavar="FILE",
        help="text file with the user turn, {question} where the trimmed question goes (default: the "
        "question, a blank line, then the <think>/\\boxed{} instruction; see docs/algorithm.md)",
    )
    if masks:
        group = parser.add_argument_group("pre-computed masks (images_aug column)")
        group.add_argument(
            "--precompute-masks", action="store_true", help="write images_aug: masked PNG copies of every image"
        )
        group.add_argument(
            "--mask-ratio",
            type=ratio,
            default=None,
            help=f"blackening probability per patch (default {DEFAULT_MASK_RATIO})",
        )
        group.add_argument(
            "--patch-size", type=positive_int, default=None, help=f"patch side in pixels (default {DEFAULT_PATCH_SIZE})"
        )
        group.add_argument("--seed", type=int, default=None, help=f"mask seed (default {DEFAULT_SEED})")


def mask_options(args: argparse.Namespace) -> MaskOptions | None:
    """Mask settings from the flags; mask flags without ``--precompute-masks`` are an error."""
    if not getattr(args, "precompute_masks", False):
        given = [
            flag
            for flag, value in (
                ("--mask-ratio", getattr(args, "mask_ratio", None)),
                ("--patch-size", getattr(args, "patch_size", None)),
                ("--seed", getattr(args, "seed", None)),
            )
            if value is not None
        ]
        if given:
            raise DataPrepError(f"{', '.join(given)} only apply with --precompute-masks; add it or drop them.")
        return None
    return MaskOptions(
        ratio=args.mask_ratio if args.mask_ratio is not None else DEFAULT_MASK_RATIO,
        patch_size=args.patch_size if args.patch_size is not None else DEFAULT_PATCH_SIZE,
        seed=args.seed if args.seed is not None else DEFAULT_SEED,
    )


def prompt_template(path: Path | None) -> str:
    """The template in file ``path`` (one trailing newline dropped), or the default; checked.

    Raises:
        DataPrepError: the file cannot be read, or has no ``{question}`` or another ``{name}`` placeholder.
    """
    if path is None:
        return DEFAULT_PROMPT_TEMPLATE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataPrepError(f"--prompt-template {path}: cannot read it ({error}); pass a UTF-8 text file.") from None
    text = text.removesuffix("\n")
    try:
        return check_prompt_template(text, where=f"--prompt-template {path}")
    except PromptTemplateError as error:
        raise DataPrepError(str(error)) from None


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        out_dir=args.out,
        num_proc=args.num_proc,
        max_rows=args.max_rows,
        strict=args.strict,
        row_group_size=args.row_group_size,
        masks=mask_options(args),
        prompt_template=prompt_template(args.prompt_template),
    )


def interrupted_exit(error: BaseException) -> int:
    """Report an interruption on stderr; the exit code of :class:`Terminated` or ``KeyboardInterrupt``."""
    print(
        f"interrupted ({'SIGTERM' if isinstance(error, Terminated) else 'SIGINT'}): the split being written "
        "keeps its previous outputs (or none); splits finished before it are complete.",
        file=sys.stderr,
    )
    return EXIT_SIGTERM if isinstance(error, Terminated) else EXIT_SIGINT


def run_command(body: Callable[[], object]) -> int:
    """Run ``body`` and turn the project's errors and SIGINT / SIGTERM into a message and an exit code."""
    try:
        with terminate_raises():
            body()
    except (Terminated, KeyboardInterrupt) as error:
        return interrupted_exit(error)
    except DataPrepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StrictModeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def run_prepare(args: argparse.Namespace, prepare: Callable[[RunOptions, RowMapper], object]) -> int:
    """Build the options from ``args`` and run ``prepare(options, mapper)``; returns the exit code."""

    def body() -> None:
        options = run_options(args)
        with RowMapper(options.num_proc) as mapper:
            prepare(options, mapper)

    return run_command(body)
