"""The output parquet schema: verl's RL dataset layout plus PAPO's optional ``images_aug``.

Columns (one row per prompt):

* ``data_source`` string: ``papo/<dataset or benchmark>``; routes to the PAPO reward.
* ``prompt`` list<struct<role: string, content: string>>: one user turn, the question with its
  ``<image>`` placeholders followed by the PAPO format instruction.
* ``images`` list<struct<bytes: binary, path: string>>: encoded images, one per placeholder, in order.
* ``images_aug`` (only with ``--precompute-masks``) list<struct<bytes, path>>: PNG masked copies,
  same count and sizes as ``images``.
* ``ability`` string.
* ``reward_model`` struct<style: string, ground_truth: string>.
* ``extra_info`` struct<split: string, index: int64, id: string, benchmark: string, group: string>.

No Hugging Face feature metadata is embedded, so ``datasets`` reads images back as plain
``{bytes, path}`` dicts, which verl's ``RLHFDataset`` opens with PIL.
"""

from __future__ import annotations

import pyarrow as pa

IMAGE_LIST = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))

BASE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("data_source", pa.string()),
    pa.field("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    pa.field("images", IMAGE_LIST),
    pa.field("ability", pa.string()),
    pa.field("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    pa.field(
        "extra_info",
        pa.struct(
            [
                ("split", pa.string()),
                ("index", pa.int64()),
                ("id", pa.string()),
                ("benchmark", pa.string()),
                ("group", pa.string()),
            ]
        ),
    ),
)


def output_schema(with_images_aug: bool) -> pa.Schema:
    """The schema of every output parquet; ``images_aug`` follows ``images`` when requested."""
    fields = list(BASE_FIELDS)
    if with_images_aug:
        fields.insert(3, pa.field("images_aug", IMAGE_LIST))
    return pa.schema(fields)
