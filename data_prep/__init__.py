"""Turn the PAPO datasets into verl's RL parquet schema.

One command per dataset, each ``python -m data_prep.<name> --source <hub id or local path> --out <dir>``:

* ``data_prep.virl39k``: training set (``PAPOGalaxy/PAPO_ViRL39K_train``);
* ``data_prep.mmk12``: validation set (``PAPOGalaxy/PAPO_MMK12_test``);
* ``data_prep.papo_eval``: the nine evaluation splits of ``PAPO-Galaxy/PAPO_eval``;
* ``data_prep.geometry3k``: ``hiyouga/geometry3k``;
* ``data_prep.all``: all of the above.

Every input row is either written or skipped with a named reason (:data:`data_prep.rows.SKIP_REASONS`);
each output parquet gets a ``.summary.json`` and a ``.skipped.jsonl`` next to it.
"""
