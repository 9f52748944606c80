"""A dataset repository folder as ``push_to_hub`` leaves it on the hub, written from rows in code.

Layout (what ``hf download <repo> --repo-type dataset --local-dir <folder>`` gives): one parquet shard
per split, ``data/<split>-00000-of-00001.parquet``; a ``README.md`` whose YAML front matter holds
``dataset_info`` (features, splits) and a ``configs`` block naming each split's files; and any extra
files at the root (``PAPO-Galaxy/PAPO_eval`` keeps one image zip per benchmark there).
``datasets.load_dataset(<folder>, split=...)`` reads it as it reads the hub repository.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import yaml


def write_zip(path: Path, members: Mapping[str, bytes]) -> Path:
    """A zip archive at ``path`` holding ``members`` (member name -> bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


def _card_feature(name: str, feature) -> dict:
    """One entry of the card's ``dataset_info.features`` (the hub's YAML form of a ``datasets`` feature)."""
    import datasets

    if isinstance(feature, datasets.List):
        inner = feature.feature
        if isinstance(inner, dict):
            return {"name": name, "list": [_card_feature(key, value) for key, value in inner.items()]}
        if isinstance(inner, datasets.Image):
            return {"name": name, "list": "image"}
        return {"name": name, "list": inner.dtype}
    if isinstance(feature, datasets.Image):
        return {"name": name, "dtype": "image"}
    return {"name": name, "dtype": feature.dtype}


def write_hub_repo(root: Path, splits: Mapping[str, list[dict]], features, title: str) -> Path:
    """Write ``splits`` (split name -> rows) as a hub dataset repository under ``root``.

    Files beside the data (image zips) are the caller's: :func:`write_zip` into ``root``.

    Args:
        root: the repository folder (created).
        splits: the rows of each split, as dicts matching ``features``.
        features: a ``datasets.Features`` for every split.
        title: the card's heading.

    Returns:
        ``root``.
    """
    import datasets

    datasets.disable_progress_bars()  # one bar per shard otherwise
    splits_info = []
    for name, rows in splits.items():
        shard = root / "data" / f"{name}-00000-of-00001.parquet"
        shard.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows, features=features).to_parquet(str(shard))
        splits_info.append({"name": name, "num_bytes": shard.stat().st_size, "num_examples": len(rows)})
    card = {
        "dataset_info": {
            "features": [_card_feature(name, feature) for name, feature in features.items()],
            "splits": splits_info,
        },
        "configs": [
            {"config_name": "default", "data_files": [{"split": name, "path": f"data/{name}-*"} for name in splits]}
        ],
    }
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n\n# {title}\n")
    return root
