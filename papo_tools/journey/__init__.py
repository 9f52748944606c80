"""The user's journey on CPU: hub-layout copies of the datasets and a tiny model answering in the paper's format.

``python -m papo_tools.journey --out DIR`` writes ``DIR/hub`` (:mod:`.hub_copies`) and ``DIR/scorer``
(:mod:`.scorer`); docs/data.md ("The whole journey on CPU") runs data prep, training, merge and
evaluation on them.
"""
