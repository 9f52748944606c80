"""PapoConfig validation: every invalid value names the key and the allowed values."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from recipe.papo.config import PapoConfig, PapoConfigError, papo_config_from


def test_defaults_are_valid_and_enabled():
    config = PapoConfig()
    assert config.kl_prcp_coef == 0.02 and config.kl_estimator == "low_var_kl"
    assert config.masked_logprob_mode == "precompute" and config.mask_unit == "patch"
    assert config.enabled


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("kl_prcp_coef", -0.1, "[0.0, inf)"),
        ("entropy_ori_coef", -1.0, "[0.0, inf)"),
        ("entropy_aug_coef", float("nan"), "a number"),
        ("mask_ratio", 1.2, "[0.0, 1.0]"),
        ("mask_ratio", -0.01, "[0.0, 1.0]"),
        ("token_top_p", 0.0, "(0.0, 1.0)"),
        ("token_top_p", 1.0, "(0.0, 1.0)"),
        ("kl_clamp_max", 0.0, "(0.0, inf)"),
        ("incorrect_weight", 1.5, "[0.0, 1.0]"),
        ("anneal_ratio", 0.0, "(0.0, 1.0]"),
        ("kl_estimator", "k4", "'low_var_kl', 'kl', 'abs', 'mse'"),
        ("apply_mode", "correct", "'all', 'correct_only', 'weighted'"),
        ("schedule", "cosine", "'fixed', 'annealing'"),
        ("mask_unit", "pixel", "'patch', 'token'"),
        ("mask_space", "latent", "'pixel_values', 'image'"),
        ("masked_logprob_mode", "grad", "'precompute', 'recompute'"),
        ("base_loss_mode", "nonexistent", "'vanilla'"),
        ("base_loss_mode", "papo", "'vanilla'"),
        ("mask_patch_size", 0, "positive integer"),
        ("correctness_key", "", "non-empty"),
    ],
)
def test_invalid_value_names_key_and_allowed_values(key, value, allowed):
    with pytest.raises(PapoConfigError) as error:
        PapoConfig(**{key: value})
    message = str(error.value)
    assert f"papo.{key}=" in message
    assert allowed in message


def test_annealing_needs_positive_reference_gamma():
    with pytest.raises(PapoConfigError, match="papo.kl_prcp_coef"):
        PapoConfig(kl_prcp_coef=0.0, schedule="annealing")


def test_token_unit_is_rejected_for_image_space_masking():
    with pytest.raises(PapoConfigError, match="papo.mask_unit"):
        PapoConfig(mask_space="image", mask_unit="token")


def test_enabled_is_derived_from_coefficients():
    assert not PapoConfig(kl_prcp_coef=0.0).enabled
    assert PapoConfig(kl_prcp_coef=0.0, entropy_aug_coef=0.01).enabled
    assert PapoConfig(kl_prcp_coef=0.01, schedule="annealing", anneal_start=0.0, anneal_end=0.0).enabled is False


def test_monitor_runs_the_machinery_without_training_the_terms():
    monitor = PapoConfig(kl_prcp_coef=0.0, monitor=True)
    assert monitor.enabled and not monitor.trains
    assert PapoConfig(monitor=True).trains is False  # coefficients are ignored under monitor
    assert PapoConfig().trains and PapoConfig().enabled
    with pytest.raises(PapoConfigError, match="papo.monitor="):
        PapoConfig(monitor="yes")


def test_from_omegaconf_validates_and_rejects_unknown_keys():
    good = papo_config_from(OmegaConf.create({"_target_": "x", "kl_prcp_coef": 0.01, "token_top_p": 0.2}))
    assert isinstance(good, PapoConfig) and good.token_top_p == 0.2
    with pytest.raises(PapoConfigError, match=r"unknown PAPO option\(s\) papo.gama"):
        papo_config_from({"gama": 0.01})
    with pytest.raises(PapoConfigError, match="papo.mask_ratio"):
        papo_config_from({"mask_ratio": 2.0})
