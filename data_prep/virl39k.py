"""Training set: ``python -m data_prep.virl39k --source PAPOGalaxy/PAPO_ViRL39K_train --out DIR``.

Writes ``DIR/virl39k_train.parquet`` (``data_source`` ``papo/virl39k``, ``extra_info.split`` ``train``).
``--precompute-masks`` adds the ``images_aug`` column.
"""

from __future__ import annotations

import sys

from data_prep.problem_answer import SingleSplitDataset

DATASET = SingleSplitDataset(
    name="virl39k", default_source="PAPOGalaxy/PAPO_ViRL39K_train", output_split="train", masks=True
)
prepare = DATASET.prepare
main = DATASET.main

if __name__ == "__main__":
    sys.exit(main())
