"""The model families PAPO's masking is proven on, and the start-up check that a run uses one.

PAPO blackens image patches in the ``pixel_values`` rows a Qwen-VL processor emits; which values a
row holds (patch size, temporal patch size, merge size, normalisation) is a property of the model
family's processor. A family is listed here only once its masking, masked forward and mRoPE
position ids are tested (``tests/families/``). A model whose ``model_type`` is not listed fails at
start-up, before Ray, unless the run sets ``papo.allow_unsupported_model=true``.

The ``model_type`` of a run's model is read from ``config.json`` for a local directory; for a hub
name (no network at start-up) it is decided from the name, e.g. ``Qwen/Qwen3-VL-8B-Instruct`` is
``qwen3_vl``.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

# Normalisation constants of the processors, per channel in [0, 1] units.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)

# The paper's visual-token budget per image (arXiv 2507.06448, training setup): 256 to 1280 merged
# tokens. One merged token covers (patch_size * merge_size)^2 pixels.
MIN_VISUAL_TOKENS = 256
MAX_VISUAL_TOKENS = 1280


class UnsupportedModelError(ValueError):
    """The run's model is not of a family PAPO's masking is tested on."""


@dataclass(frozen=True)
class ModelFamily:
    """One supported model family.

    Attributes:
        model_type: ``config.json``'s ``model_type`` (the table key).
        display_name: the family's name as users know it.
        name_pattern: regex matched (case-insensitive) against a hub name's last component.
        patch_size: side of one vision patch (one ``pixel_values`` row), pixels.
        temporal_patch_size: frames per row (an image is repeated along time).
        merge_size: spatial merge factor; ``merge_size**2`` rows form one visual token.
        image_mean: per-channel normalisation mean, [0, 1] units.
        image_std: per-channel normalisation std.
    """

    model_type: str
    display_name: str
    name_pattern: str
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @property
    def token_pixels(self) -> int:
        """Pixels (height * width) covered by one merged visual token."""
        return (self.patch_size * self.merge_size) ** 2

    @property
    def min_pixels(self) -> int:
        """Lower pixel bound giving the paper's minimum of 256 visual tokens."""
        return MIN_VISUAL_TOKENS * self.token_pixels

    @property
    def max_pixels(self) -> int:
        """Upper pixel bound giving the paper's maximum of 1280 visual tokens."""
        return MAX_VISUAL_TOKENS * self.token_pixels


FAMILIES: dict[str, ModelFamily] = {
    family.model_type: family
    for family in (
        ModelFamily(
            model_type="qwen2_5_vl",
            display_name="Qwen2.5-VL",
            name_pattern=r"qwen2\.5-vl|qwen2_5_vl",
            patch_size=14,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        ),
        ModelFamily(
            model_type="qwen3_vl",
            display_name="Qwen3-VL (dense)",
            name_pattern=r"qwen3-vl|qwen3_vl",
            patch_size=16,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=HALF,
            image_std=HALF,
        ),
        ModelFamily(
            model_type="qwen3_5",
            display_name="Qwen3.5 (dense)",
            name_pattern=r"qwen3\.5|qwen3_5",
            patch_size=16,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=HALF,
            image_std=HALF,
        ),
    )
}

# Mixture-of-experts hub names carry the active size, e.g. "Qwen3-VL-30B-A3B-Instruct".
_MOE_NAME = re.compile(r"-a\d+(\.\d+)?b\b", re.IGNORECASE)
_MOE_TYPES = {"qwen3_vl": "qwen3_vl_moe", "qwen3_5": "qwen3_5_moe"}


def supported_families_text() -> str:
    """``"Qwen2.5-VL (qwen2_5_vl), ..."``: the supported families, for error messages."""
    return ", ".join(f"{family.display_name} ({model_type})" for model_type, family in FAMILIES.items())


def model_type_of(name: str) -> str:
    """The ``model_type`` of a model given as a local directory or a hub name.

    A local directory must hold ``config.json`` (its ``model_type`` is returned, listed or not). A
    hub name is matched against the families' name patterns, MoE variants (``-A3B``) mapped to their
    own ``model_type``.

    Raises:
        UnsupportedModelError: a local path without a readable ``config.json``, or a hub name that
            matches no family.
    """
    path = Path(name).expanduser()
    if path.exists():
        config_file = path / "config.json"
        try:
            model_type = json.loads(config_file.read_text())["model_type"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UnsupportedModelError(
                f"cannot read model_type from {config_file} ({error!r}): point actor_rollout_ref.model.path at a "
                "Hugging Face model directory (with config.json)"
            ) from error
        return str(model_type)
    last = name.rstrip("/").split("/")[-1]
    for model_type, family in FAMILIES.items():
        if re.search(family.name_pattern, last, re.IGNORECASE):
            return _MOE_TYPES.get(model_type, model_type) if _MOE_NAME.search(last) else model_type
    raise UnsupportedModelError(
        f"cannot tell the model family of {name!r}: it is no local directory and its name matches none of the "
        f"supported families: {supported_families_text()}. Use a local model directory (its config.json names "
        "the model_type), or set papo.allow_unsupported_model=true to skip this check (see docs/develop.md)."
    )


def family_of_model_name(name: str) -> str:
    """The supported family (its ``model_type``) of a hub name or a local model directory.

    Examples: ``"Qwen/Qwen3-VL-8B-Instruct"`` -> ``"qwen3_vl"``; ``"Qwen/Qwen2.5-VL-7B-Instruct"``
    -> ``"qwen2_5_vl"``; a directory whose ``config.json`` says ``qwen3_5`` -> ``"qwen3_5"``.

    Raises:
        UnsupportedModelError: naming the model, its ``model_type`` and the supported families.
    """
    model_type = model_type_of(name)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model {name!r} has model_type {model_type!r}, which PAPO's masking is not tested on. Supported "
            f"families: {supported_families_text()}. Set papo.allow_unsupported_model=true to run anyway, after "
            "checking that its processor emits Qwen-VL style pixel_values rows (see docs/develop.md)."
        )
    return model_type


def check_model_supported(model_path: str, allow_unsupported: bool) -> str | None:
    """Start-up check of ``actor_rollout_ref.model.path``: its family, or ``None`` where overridden.

    Args:
        model_path: a hub name or a local model directory.
        allow_unsupported: ``papo.allow_unsupported_model``; True turns the error into a warning.

    Raises:
        UnsupportedModelError: the model is of no supported family and ``allow_unsupported`` is False.
    """
    try:
        return family_of_model_name(model_path)
    except UnsupportedModelError as error:
        if not allow_unsupported:
            raise
        warnings.warn(f"papo.allow_unsupported_model=true: running anyway. {error}", stacklevel=2)
        return None
