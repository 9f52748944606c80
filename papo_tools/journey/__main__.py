"""``python -m papo_tools.journey --out DIR``: what the user's journey needs on a machine with no hub access.

Writes ``DIR/hub/`` (tiny copies of the paper's three datasets in the hub's layout:
:mod:`papo_tools.journey.hub_copies`) and ``DIR/scorer/`` (a tiny Qwen2.5-VL that answers in the paper's
format and gets part of the questions right: :mod:`papo_tools.journey.scorer`). The journey's own
commands (``data_prep``, a training script, the model merger, ``scripts/eval_papo.sh``) then run on them
exactly as on the real datasets and model: docs/data.md, "The whole journey on CPU".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from papo_tools.journey.hub_copies import write_hub_copies
from papo_tools.journey.scorer import write_scorer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m papo_tools.journey", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (hub/ and scorer/ are written in it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the scorer's weights")
    args = parser.parse_args(argv)
    started = time.monotonic()
    repos = write_hub_copies(args.out / "hub", seed=args.seed)
    for name, folder in repos.items():
        print(f"[journey] {name}: {folder}", flush=True)
    probes = write_scorer(args.out / "scorer", seed=args.seed)
    last = probes[-1]
    digits = ", ".join(f"{digit}: {p:.2f}" for digit, p in last.digit_probability.items())
    print(
        f"[journey] scorer: {args.out / 'scorer'} after {last.step} warm-up steps (answer format kept with "
        f"probability {last.format_probability:.2f}; boxed digit {digits}) in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
