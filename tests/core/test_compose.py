"""PAPO with verl's other algorithms, before Ray: the advantage estimators and the start-up refusals.

The estimator dimension of docs/compose.md, one estimator at a time with everything else at PAPO-G's
defaults. An estimator is a pure function of the rewards, so each cell is checked through the very call
verl 0.9.1's v1 trainer makes (``compute_advantage_for_multi_trajectories`` on the fields its
``PPOTrainer._compute_advantage`` reads): the supported ones run and pass the start-up checks, the
refused ones fail in verl (which grounds the refusal) and are refused by ``check_papo_run_config``
before Ray, naming both settings. The PAPO terms do not read the advantage: the loss is the same
function of whatever advantages the estimator computed (tests/worker/test_papo_compose.py proves it
per loss and aggregation), and their weight against the surrogate moves with the estimator's scale
(tests/core/test_estimator_scale.py). Item 4 of the matrix:
``papo`` and verl's ``grpo`` give equal advantages.

The policy-loss and aggregation refusals (``geo_mean``, ``dro`` without ``dro_beta``, ``bypass_mode``
without bypass mode) are checked here too, and that docs/compose.md has a row for every registered
name and ``agg_loss`` mode.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import papo_configs
import pytest
import torch
from omegaconf import DictConfig
from verl import DataProto
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY, agg_loss
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

from recipe.papo.config import PapoConfigError
from recipe.papo.run_checks import UNSUPPORTED_ESTIMATORS, check_papo_run_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE_MD = REPO / "docs" / "compose.md"
GROUP_SIZES = [5, 5, 2, 3]  # prompts' rollout counts (dynamic sampling can leave unequal groups)
RESPONSE_LEN = 7
SUPPORTED_ESTIMATORS = sorted(set(ADV_ESTIMATOR_REGISTRY) - set(UNSUPPORTED_ESTIMATORS))
# Extra settings a working cell needs (docs/compose.md); everything else stays at PAPO-G's defaults.
LOSS_SETTINGS = {
    "dro": ["actor_rollout_ref.actor.policy_loss.dro_beta=0.1"],
    "bypass_mode": ["algorithm.rollout_correction.bypass_mode=True"],
}
REFUSED_LOSSES = {"geo_mean"}  # with the PAPO terms on; allowed with papo.monitor


def composed(*overrides: str) -> DictConfig:
    """``configs/papo_trainer.yaml`` at PAPO-G's defaults (its reference-KL loss on) with ``overrides``."""
    return papo_configs.composed("actor_rollout_ref.actor.use_kl_loss=True", *overrides)


def v1_batch(seed: int = 0, with_values: bool = False) -> tuple[DataProto, list[str]]:
    """The DataProto verl's v1 ``PPOTrainer._compute_advantage`` builds (its fields, padded), and the
    TransferQueue keys it passes along: ``{uid}_{session}_{turn}``, one session per rollout, single-turn.
    Outcome rewards on the last response token."""
    rng = np.random.default_rng(seed)
    uids = [f"p{prompt}" for prompt, size in enumerate(GROUP_SIZES) for _ in range(size)]
    n = len(uids)
    lengths = rng.integers(2, RESPONSE_LEN + 1, size=n)
    mask = (torch.arange(RESPONSE_LEN)[None, :] < torch.as_tensor(lengths)[:, None]).float()
    scores = torch.zeros(n, RESPONSE_LEN)
    scores[torch.arange(n), torch.as_tensor(lengths) - 1] = torch.as_tensor(rng.choice([0.0, 0.1, 1.0], size=n)).float()
    batch = {
        "response_mask": mask,
        "rm_scores": scores,
        "token_level_scores": scores,
        "token_level_rewards": scores,
        "old_log_probs": -torch.rand(n, RESPONSE_LEN, generator=torch.Generator().manual_seed(seed)) * mask,
        "ref_log_prob": -torch.rand(n, RESPONSE_LEN, generator=torch.Generator().manual_seed(seed + 1)) * mask,
    }
    if with_values:
        batch["values"] = torch.randn(n, RESPONSE_LEN, generator=torch.Generator().manual_seed(seed + 2)) * mask
    data = DataProto.from_dict(tensors=batch, non_tensors={"uid": np.array(uids, dtype=object)})
    return data, [f"{uid}_{rollout}_0" for uid, rollout in zip(uids, range(n), strict=True)]


def v1_advantages(config: DictConfig, data: DataProto, keys: list[str]) -> torch.Tensor:
    """The advantages verl 0.9.1's v1 trainer computes for ``config`` (its call, its arguments)."""
    algorithm = config.algorithm
    out = compute_advantage_for_multi_trajectories(
        data,
        batch_keys=keys,
        adv_estimator=algorithm.adv_estimator,
        gamma=algorithm.gamma,
        lam=algorithm.lam,
        num_repeat=config.actor_rollout_ref.rollout.n,
        norm_adv_by_std_in_grpo=algorithm.get("norm_adv_by_std_in_grpo", True),
        config=algorithm,
    )
    return out.batch["advantages"]


# --- item 4: papo is GRPO's advantage ----------------------------------------------------------------


@pytest.mark.parametrize("norm", [True, False], ids=["GRPO", "Dr.GRPO"])
@pytest.mark.parametrize("seed", [0, 1])
def test_papo_and_verls_grpo_give_equal_advantages(norm, seed):
    data, keys = v1_batch(seed)
    flag = f"algorithm.norm_adv_by_std_in_grpo={norm}"
    papo = v1_advantages(composed(flag), data, keys)
    grpo = v1_advantages(composed(flag, "algorithm.adv_estimator=grpo"), data, keys)
    torch.testing.assert_close(papo, grpo, rtol=1e-6, atol=1e-6)
    assert papo.abs().max() > 0.5
    # ... and the grpo override passes the start-up checks with PAPO on
    check_papo_run_config(composed(flag, "algorithm.adv_estimator=grpo"))


def test_the_one_difference_a_single_response_group_is_an_error_for_papo_and_a_raw_score_for_grpo():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from recipe.papo.advantage import SingletonGroupError, compute_papo_outcome_advantage

    rewards, mask = torch.tensor([[0.0, 1.0], [0.0, 0.5], [0.7, 0.0]]), torch.ones(3, 2)
    index = np.array(["a", "a", "b"])
    grpo = compute_grpo_outcome_advantage(token_level_rewards=rewards, response_mask=mask, index=index)[0]
    torch.testing.assert_close(grpo[2], torch.full((2,), 0.7 / (1 + 1e-6)))
    with pytest.raises(SingletonGroupError, match="uid 'b'"):
        compute_papo_outcome_advantage(token_level_rewards=rewards, response_mask=mask, index=index)


def test_grpo_vectorized_equals_papo_with_the_std_but_ignores_dr_grpos_flag():
    """Why grpo_vectorized with norm_adv_by_std_in_grpo=False is refused: the v1 trainer's generic call
    does not pass the flag, so the advantage stays divided by the std."""
    data, keys = v1_batch()
    papo = v1_advantages(composed(), data, keys)
    vectorized = v1_advantages(composed("algorithm.adv_estimator=grpo_vectorized"), data, keys)
    torch.testing.assert_close(vectorized, papo, rtol=1e-5, atol=1e-6)
    dr_grpo = composed("algorithm.adv_estimator=grpo_vectorized", "algorithm.norm_adv_by_std_in_grpo=False")
    torch.testing.assert_close(v1_advantages(dr_grpo, data, keys), papo, rtol=1e-5, atol=1e-6)
    with pytest.raises(PapoConfigError, match=r"adv_estimator='grpo_vectorized'.*norm_adv_by_std_in_grpo=False"):
        check_papo_run_config(dr_grpo)


# --- every estimator ---------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", SUPPORTED_ESTIMATORS)
def test_a_supported_estimator_runs_in_verls_v1_advantage_step_and_passes_start_up(estimator):
    config = composed(f"algorithm.adv_estimator={estimator}")
    check_papo_run_config(config)
    data, keys = v1_batch(with_values=estimator == "gae")
    mask = data.batch["response_mask"].bool()
    advantages = v1_advantages(config, data, keys)
    assert advantages.shape == mask.shape and torch.isfinite(advantages).all()
    if estimator != "gae":  # GAE whitens over the mask and leaves the padding non-zero (the loss masks it)
        assert (advantages[~mask] == 0).all()
    assert advantages[mask].abs().max() > 1e-3


@pytest.mark.parametrize("estimator", sorted(UNSUPPORTED_ESTIMATORS))
def test_an_unsupported_estimator_fails_in_verls_v1_advantage_step_and_is_refused_at_start_up(estimator):
    config = composed(f"algorithm.adv_estimator={estimator}")
    data, keys = v1_batch()
    with pytest.raises((TypeError, AssertionError, KeyError)):
        v1_advantages(config, data, keys)
    with pytest.raises(PapoConfigError) as error:
        check_papo_run_config(config)
    message = str(error.value)
    assert f"algorithm.adv_estimator={estimator!r}" in message and "trainer.v1.trainer_mode='papo'" in message


def test_gae_gets_verls_critic_which_the_papo_trainer_leaves_alone():
    from verl.trainer.ppo.utils import need_critic
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from recipe.papo.trainer import PapoTrainer

    assert need_critic(composed("algorithm.adv_estimator=gae"))
    for method in ("_compute_values", "_update_critic"):
        assert getattr(PapoTrainer, method) is getattr(PPOTrainerSync, method), method
    with pytest.raises(PapoConfigError, match=r"adv_estimator='gae' with critic.enable=False"):
        check_papo_run_config(composed("algorithm.adv_estimator=gae", "critic.enable=False"))


@pytest.mark.parametrize("estimator", ["rloo", "grpo_passk", "opo"])
def test_a_group_estimator_needs_two_rollouts_per_prompt(estimator):
    with pytest.raises(PapoConfigError, match=rf"adv_estimator={estimator} is group-relative.*rollout.n=1"):
        check_papo_run_config(composed(f"algorithm.adv_estimator={estimator}", "actor_rollout_ref.rollout.n=1"))


# --- policy losses and aggregations at start-up ------------------------------------------------------


@pytest.mark.parametrize("loss", sorted(set(POLICY_LOSS_REGISTRY) - {"papo"} - REFUSED_LOSSES))
def test_a_supported_base_loss_passes_start_up(loss):
    assert check_papo_run_config(composed(f"papo.base_loss_mode={loss}", *LOSS_SETTINGS.get(loss, []))).trains


@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_a_loss_aggregation_passes_start_up(mode):
    check_papo_run_config(composed(f"actor_rollout_ref.actor.loss_agg_mode={mode}"))


def test_seq_mean_token_sum_norm_passes_with_a_warning_unless_the_scale_factor_is_set(caplog):
    mode = "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm"
    with caplog.at_level("WARNING", logger="recipe.papo.run_checks"):
        check_papo_run_config(composed(mode))
    assert "without actor_rollout_ref.actor.loss_scale_factor" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="recipe.papo.run_checks"):
        check_papo_run_config(composed(mode, "actor_rollout_ref.actor.loss_scale_factor=2048"))
    assert "loss_scale_factor" not in caplog.text


def test_sapo_warns_that_its_surrogate_ignores_loss_agg_mode(caplog):
    with caplog.at_level("WARNING", logger="recipe.papo.run_checks"):
        check_papo_run_config(composed("papo.base_loss_mode=sapo"))
    assert "always aggregated seq-mean-token-mean" in caplog.text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["papo.base_loss_mode=geo_mean"], r"base_loss_mode='geo_mean' with the PAPO terms on"),
        (["papo.base_loss_mode=geo_mean", "papo.kl_prcp_coef=0", "papo.vppo_entropy_coef=0.06"], r"'geo_mean'"),
        (["papo.base_loss_mode=dro"], r"base_loss_mode='dro' with actor_rollout_ref.actor.policy_loss.dro_beta=None"),
        (
            ["papo.base_loss_mode=dro", "actor_rollout_ref.actor.policy_loss.dro_beta=0"],
            r"'dro' with actor_rollout_ref.actor.policy_loss.dro_beta=0",
        ),
        (
            ["papo.base_loss_mode=bypass_mode"],
            r"base_loss_mode='bypass_mode' with algorithm.rollout_correction.bypass_mode=False",
        ),
    ],
)
def test_a_loss_that_cannot_work_is_refused_at_start_up_naming_both_settings(overrides, message):
    with pytest.raises(PapoConfigError, match=message):
        check_papo_run_config(composed(*overrides))


def test_geo_mean_is_allowed_in_monitor_mode():
    assert check_papo_run_config(composed("papo.base_loss_mode=geo_mean", "papo.monitor=true")).enabled


def test_bypass_mode_reads_the_algorithms_rollout_correction():
    """verl's legacy trainer copies algorithm.rollout_correction into the actor's policy loss; the v1 trainer
    does not, so configs/papo_trainer.yaml interpolates it (the bypass_mode loss reads the actor's copy)."""
    from omegaconf import OmegaConf

    config = composed(
        "algorithm.rollout_correction.bypass_mode=True", "algorithm.rollout_correction.rollout_rs=token_k1"
    )
    OmegaConf.resolve(config)
    copy = config.actor_rollout_ref.actor.policy_loss.rollout_correction
    assert copy.bypass_mode is True and copy.rollout_rs == "token_k1"


# --- the matrix covers every name --------------------------------------------------------------------


def agg_loss_modes() -> list[str]:
    """Every ``loss_agg_mode`` verl's ``agg_loss`` branches on, read from its source."""
    source = inspect.getsource(agg_loss)
    modes = re.findall(r'"([a-z]+(?:-[a-z]+)+)"', source)
    return sorted(set(modes))


def test_agg_loss_modes_are_the_five_the_matrix_has():
    assert agg_loss_modes() == [
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
        "token-mean",
        "token-sum",
    ]


LOSSES_SECTION = "Policy losses (`papo.base_loss_mode`)"
ESTIMATORS_SECTION = "Advantage estimators (`algorithm.adv_estimator`)"
AGGREGATION_SECTION = "Loss aggregation (`actor_rollout_ref.actor.loss_agg_mode`)"


def matrix_rows() -> dict[tuple[str, str], str]:
    """``{(section, name): verdict cell}`` of every table row of docs/compose.md whose first cell is a `name`;
    the section is the heading above the table (a name such as ``gpg`` is both a loss and an estimator)."""
    rows, section = {}, ""
    for line in COMPOSE_MD.read_text().splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and re.fullmatch(r"`[\w-]+`", cells[0]):
            key = (section, cells[0].strip("`"))
            assert key not in rows, f"docs/compose.md: two rows for {key}"
            rows[key] = cells[1]
    return rows


def test_compose_md_has_a_verdict_for_every_registered_name():
    rows = matrix_rows()
    expected = {
        LOSSES_SECTION: set(POLICY_LOSS_REGISTRY) - {"papo"},
        ESTIMATORS_SECTION: set(ADV_ESTIMATOR_REGISTRY),
        AGGREGATION_SECTION: set(agg_loss_modes()),
    }
    for section, names in expected.items():
        listed = {name for (where, name) in rows if where == section}
        assert names <= listed, (section, sorted(names - listed))
        for name in listed:
            assert rows[(section, name)].split()[0].strip("*") in ("works", "caveat", "refused"), (section, name)
    for name in UNSUPPORTED_ESTIMATORS:
        assert rows[(ESTIMATORS_SECTION, name)].startswith("**refused"), name
    for name in REFUSED_LOSSES:
        assert rows[(LOSSES_SECTION, name)].startswith("**refused"), name
    # gpg is both: each table keeps its own row
    assert rows[(LOSSES_SECTION, "gpg")] == rows[(ESTIMATORS_SECTION, "gpg")] == "works"
