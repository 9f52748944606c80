"""Validation set (monitoring only): ``python -m data_prep.mmk12 --source PAPOGalaxy/PAPO_MMK12_test --out DIR``.

Writes ``DIR/mmk12_val.parquet`` (``data_source`` ``papo/mmk12``, ``extra_info.split`` ``val``).
Validation computes no PAPO loss, so this command has no mask flags.
"""

from __future__ import annotations

import sys

from data_prep.problem_answer import SingleSplitDataset

DATASET = SingleSplitDataset(name="mmk12", default_source="PAPOGalaxy/PAPO_MMK12_test", output_split="val", masks=False)
prepare = DATASET.prepare
main = DATASET.main

if __name__ == "__main__":
    sys.exit(main())
