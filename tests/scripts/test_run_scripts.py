"""Every run script's dry run composes and validates against the installed verl, and its resolved
settings equal the published settings of arXiv 2507.06448 for its variant."""

from __future__ import annotations

import inspect
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from script_runs import python_args_of, run_script

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
DATA_DIR = "/data/papo"  # DATA_DIR knob of every dry run below: the default file names hang off it


@dataclass(frozen=True)
class Variant:
    """One row of the paper's table of published settings."""

    gamma: float
    eta: float  # eta_ori = eta_aug
    ref_kl: bool  # low_var_kl reference-KL loss with coefficient 0.01
    clip_high: float  # clip low is 0.2 everywhere but GSPO's (SURROGATE below)
    dynamic_sampling: bool  # DAPO's group filter on acc


GRPO = Variant(gamma=0.0, eta=0.0, ref_kl=True, clip_high=0.3, dynamic_sampling=False)
PAPO_G_3B = Variant(gamma=0.02, eta=0.0, ref_kl=True, clip_high=0.3, dynamic_sampling=False)
PAPO_G_7B = Variant(gamma=0.02, eta=0.05, ref_kl=True, clip_high=0.3, dynamic_sampling=False)
PAPO_G_NO_REF_KL = Variant(gamma=0.01, eta=0.03, ref_kl=False, clip_high=0.3, dynamic_sampling=False)
DAPO = Variant(gamma=0.0, eta=0.0, ref_kl=False, clip_high=0.28, dynamic_sampling=True)
PAPO_D = Variant(gamma=0.01, eta=0.03, ref_kl=False, clip_high=0.28, dynamic_sampling=True)
# PAPO on GSPO (docs/compose.md): PAPO-G no-ref-KL's coefficients on GSPO's surrogate (arXiv 2507.18071).
PAPO_GSPO = Variant(gamma=0.01, eta=0.03, ref_kl=False, clip_high=0.0004, dynamic_sampling=False)

QWEN25_3B, QWEN25_7B, QWEN3_8B = (
    "Qwen/Qwen2.5-VL-3B-Instruct",
    "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen/Qwen3-VL-8B-Instruct",
)
QWEN3_2B, QWEN3_4B, QWEN35_9B = "Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3.5-9B"

# script -> (variant, default model, default GPUs per node: 3B on 2 GPUs, 7B/8B on 4)
EXPECTED: dict[str, tuple[Variant, str, int]] = {
    "run_qwen2_5_vl_3b_grpo.sh": (GRPO, QWEN25_3B, 2),
    "run_qwen2_5_vl_3b_papo_g.sh": (PAPO_G_3B, QWEN25_3B, 2),
    "run_qwen2_5_vl_3b_papo_g_no_ref_kl.sh": (PAPO_G_NO_REF_KL, QWEN25_3B, 2),
    "run_qwen2_5_vl_3b_dapo.sh": (DAPO, QWEN25_3B, 2),
    "run_qwen2_5_vl_3b_papo_d.sh": (PAPO_D, QWEN25_3B, 2),
    "run_qwen2_5_vl_7b_grpo.sh": (GRPO, QWEN25_7B, 4),
    "run_qwen2_5_vl_7b_papo_g.sh": (PAPO_G_7B, QWEN25_7B, 4),
    "run_qwen2_5_vl_7b_papo_g_no_ref_kl.sh": (PAPO_G_NO_REF_KL, QWEN25_7B, 4),
    "run_qwen2_5_vl_7b_dapo.sh": (DAPO, QWEN25_7B, 4),
    "run_qwen2_5_vl_7b_papo_d.sh": (PAPO_D, QWEN25_7B, 4),
    # No published Qwen3-VL / Qwen3.5 settings: the 7B rows (documented in each script header).
    "run_qwen3_vl_2b_papo_g.sh": (PAPO_G_7B, QWEN3_2B, 2),
    "run_qwen3_vl_4b_papo_g.sh": (PAPO_G_7B, QWEN3_4B, 2),
    "run_qwen3_vl_8b_papo_g.sh": (PAPO_G_7B, QWEN3_8B, 4),
    "run_qwen3_vl_8b_papo_d.sh": (PAPO_D, QWEN3_8B, 4),
    "run_qwen3_5_9b_papo_g.sh": (PAPO_G_7B, QWEN35_9B, 4),
    "run_qwen3_5_9b_papo_d.sh": (PAPO_D, QWEN35_9B, 4),
    # VPPO (arXiv 2510.09285): DAPO's base (its code's config.yaml) without or with PAPO-D's terms.
    "run_qwen2_5_vl_3b_vppo.sh": (DAPO, QWEN25_3B, 2),
    "run_qwen2_5_vl_7b_vppo.sh": (DAPO, QWEN25_7B, 4),
    "run_qwen3_vl_8b_vppo.sh": (DAPO, QWEN3_8B, 4),
    "run_qwen2_5_vl_7b_papo_d_vppo.sh": (PAPO_D, QWEN25_7B, 4),
    "run_qwen2_5_vl_7b_papo_gspo.sh": (PAPO_GSPO, QWEN25_7B, 4),
}
# Another surrogate than the paper's (docs/compose.md): the resolved keys that differ from COMMON.
# GSPO's published settings (arXiv 2507.18071, Section 5.1): sequence-ratio clip range 3e-4 / 4e-4,
# seq-mean-token-mean aggregation.
SURROGATE: dict[str, dict] = {
    "run_qwen2_5_vl_7b_papo_gspo.sh": {
        "papo.base_loss_mode": "gspo",
        "actor.clip_ratio_low": 0.0003,
        "actor.loss_agg_mode": "seq-mean-token-mean",
    },
}
# VPPO's published settings per script (its code's train_vppo_7b.sh / train_vppo_8b.sh; the 3B script
# reuses the 7B ones; the PAPO-D + VPPO script keeps PAPO-D's n = 5 and its H_ori instead of VPPO's
# entropy penalty): (p, beta_min, c) and the resolved keys that differ from COMMON.
VPPO: dict[str, tuple[tuple[float, float, float], dict]] = {
    "run_qwen2_5_vl_3b_vppo.sh": ((0.4, 0.9, 0.06), {"rollout.n": 8}),
    "run_qwen2_5_vl_7b_vppo.sh": ((0.4, 0.9, 0.06), {"rollout.n": 8}),
    "run_qwen3_vl_8b_vppo.sh": (
        (0.4, 0.9, 0.12),
        {
            "rollout.n": 8,
            "data.max_response_length": 8192,
            # the published 8B run keeps the config's pixel bounds (not the family's token-matched ones)
            "data.mm_processor_kwargs": {"min_pixels": 200704, "max_pixels": 1003520},
        },
    ),
    "run_qwen2_5_vl_7b_papo_d_vppo.sh": ((0.4, 0.9, 0.0), {}),
}
PLAIN = [name for name, (variant, _, _) in EXPECTED.items() if variant in (GRPO, DAPO) and name not in VPPO]

# The paper's common settings, in resolved verl keys (see scripts/common.sh).
COMMON = {
    "data.train_batch_size": 384,
    "rollout.n": 5,
    "actor.ppo_mini_batch_size": 128,
    "actor.ppo_epochs": 1,
    "actor.optim.lr": 1e-6,
    "actor.optim.lr_scheduler_type": "constant",
    "actor.optim.lr_warmup_steps_ratio": 0.0,
    "actor.optim.weight_decay": 0.01,
    "actor.optim.clip_grad": 1.0,
    "actor.loss_agg_mode": "token-mean",
    "actor.entropy_coeff": 0,
    "actor.clip_ratio_low": 0.2,
    "actor.freeze_vision_tower": False,
    "data.max_prompt_length": 4096,
    "data.max_response_length": 2048,
    "data.mm_processor_kwargs": {"min_pixels": 200704, "max_pixels": 1003520},
    "rollout.temperature": 1.0,
    "rollout.top_p": 0.99,
    "rollout.top_k": -1,
    "trainer.total_epochs": 2,
    "trainer.test_freq": 5,
    "trainer.val_before_train": True,
    "trainer.val_only": False,
    "rollout.val_kwargs.n": 8,
    "rollout.val_kwargs.temperature": 1.0,
    "rollout.val_kwargs.top_p": 0.99,
    "rollout.val_kwargs.do_sample": True,
    "algorithm.use_kl_in_reward": False,
    # The PAPO machinery is the same for every script (plain baselines run through it with gamma 0).
    "algorithm.adv_estimator": "papo",
    "actor.policy_loss.loss_mode": "papo",
    "papo.base_loss_mode": "vanilla",
    "trainer.v1.trainer_mode": "papo",
    "reward.custom_reward_function.path": "pkg://recipe.papo.reward",
    "reward.custom_reward_function.name": "compute_score",
    # Paper's PAPO options (arXiv 2507.06448); inert when PAPO is off.
    "papo.kl_estimator": "low_var_kl",
    "papo.mask_ratio": 0.6,
    "papo.schedule": "fixed",
    "papo.apply_mode": "all",
    "papo.masked_logprob_mode": "precompute",
    "papo.kl_clamp_max": None,
    "papo.token_top_p": None,
    # Defaults of the knobs.
    "data.train_files": f"{DATA_DIR}/virl39k_train.parquet",
    "data.val_files": f"{DATA_DIR}/mmk12_val.parquet",
    "trainer.nnodes": 1,
    "rollout.name": "vllm",
    "trainer.project_name": "papo",
}


# Env knobs and trailing `key=value` arguments of test_env_knobs_and_trailing_overrides_win.
OVERRIDE_ARGS = (
    "papo.kl_prcp_coef=0.05",
    "papo.entropy_ori_coef=0.01",
    "actor_rollout_ref.actor.clip_ratio_high=0.25",
    "actor_rollout_ref.actor.use_kl_loss=False",
    "data.mm_processor_kwargs.max_pixels=802816",
    "actor_rollout_ref.rollout.val_kwargs.n=4",
    "trainer.total_epochs=1",
)
OVERRIDE_ENV = dict(
    MODEL_PATH="/models/Qwen2.5-VL-7B-Instruct",
    TRAIN_FILE="/d/train.parquet",
    VAL_FILE="/d/val.parquet",
    NNODES="2",
    N_GPUS_PER_NODE="8",
    ROLLOUT_NAME="sglang",
    EXPERIMENT_NAME="mine",
)
MISSPELLED = {
    "papo.kl_prcp_cof=0.1": "Key 'kl_prcp_cof' is not in struct",
    "actor_rollout_ref.actor.clip_ratio_hgh=0.3": "Key 'clip_ratio_hgh' is not in struct",
}


@pytest.fixture(scope="module", autouse=True)
def start_all(request, dry_runs):
    """Queue every dry run of this module (run two at a time) before the first test waits on one,
    unless no selected test of this module takes ``dry_runs`` (e.g. ``-k bash_syntax``)."""
    selected = [item for item in request.session.items if getattr(item, "module", None) is request.module]
    if not any("dry_runs" in inspect.signature(item.function).parameters for item in selected):
        return
    dry_runs.start("run_qwen2_5_vl_3b_papo_g.sh", *OVERRIDE_ARGS, **OVERRIDE_ENV)
    for override in MISSPELLED:
        dry_runs.start("run_qwen2_5_vl_3b_papo_d.sh", override)


@pytest.fixture(scope="module")
def summary_of(tmp_path_factory):
    """``summary_of(name)``: the settings ``DRY_RUN=1 bash scripts/<name>`` prints, computed in this
    process: bash records the arguments the script passes to Python, then main_papo's own dry-run
    steps (compose, ``prepare``, JSON) run here. A full dry run costs a Python start and the verl
    import per script; the subprocess dry runs above keep the user's path covered."""
    from recipe.papo.main_papo import prepare

    cwd, cache = tmp_path_factory.mktemp("dry_run_args"), {}

    def summary(name: str) -> dict:
        if name not in cache:
            argv = python_args_of(name, cwd=cwd, DATA_DIR=DATA_DIR, DRY_RUN="1")
            assert argv[:2] == ["-m", "recipe.papo.main_papo"]
            cache[name] = json.loads(json.dumps(prepare(compose(*argv[2:])), default=str))
        return cache[name]

    return summary


def test_every_run_script_has_a_row():
    assert sorted(path.name for path in SCRIPTS.glob("run_*.sh")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_resolves_the_spec_settings(summary_of, name):
    variant, model, gpus = EXPECTED[name]
    summary = summary_of(name)
    expected = {
        **COMMON,
        "data.mm_processor_kwargs": family_pixel_bounds(model),
        **VPPO.get(name, ((), {}))[1],
        **SURROGATE.get(name, {}),
    }
    mismatches = {
        key: (summary.get(key, "<absent>"), want) for key, want in expected.items() if summary.get(key) != want
    }
    assert not mismatches, f"{name}: (resolved, published) = {mismatches}"
    assert summary["actor.optim.lr_warmup_steps"] <= 0  # so verl uses the (zero) warmup ratio
    assert summary["model.path"] == model
    assert summary["trainer.n_gpus_per_node"] == gpus
    experiment = name.removeprefix("run_").removesuffix(".sh")
    assert summary["trainer.experiment_name"] == experiment
    # Absolute paths: the trainer may run in a Ray process on another node, in another directory.
    assert summary["trainer.default_local_dir"].startswith("/")
    assert summary["trainer.default_local_dir"].endswith(f"/checkpoints/papo/{experiment}")
    logger_root = summary["ray_kwargs.ray_init.runtime_env.env_vars"]["VERL_FILE_LOGGER_ROOT"]
    assert logger_root.startswith("/") and logger_root.endswith("/outputs")

    assert summary["papo.kl_prcp_coef"] == variant.gamma
    assert summary["papo.entropy_ori_coef"] == variant.eta
    assert summary["papo.entropy_aug_coef"] == variant.eta
    assert summary["papo.enabled"] is (variant.gamma > 0 or variant.eta > 0 or name in VPPO)
    vppo = VPPO.get(name, ((None, None, 0.0), {}))[0]
    assert tuple(summary[f"papo.vppo_{key}"] for key in ("token_fraction", "beta_min", "entropy_coef")) == vppo
    assert summary["actor.use_kl_loss"] is variant.ref_kl
    if variant.ref_kl:
        assert (summary["actor.kl_loss_type"], summary["actor.kl_loss_coef"]) == ("low_var_kl", 0.01)
    assert summary["actor.clip_ratio_high"] == variant.clip_high
    assert summary["algorithm.filter_groups.enable"] is variant.dynamic_sampling
    if variant.dynamic_sampling:
        assert summary["algorithm.filter_groups.metric"] == "acc"


@pytest.mark.parametrize("name", PLAIN)
def test_baselines_are_plain(summary_of, name):
    """GRPO and DAPO have every PAPO coefficient 0 (the authors' 7B GRPO script loaded PAPO by mistake)."""
    summary = summary_of(name)
    assert summary["papo.enabled"] is False
    assert [summary[f"papo.{key}"] for key in ("kl_prcp_coef", "entropy_ori_coef", "entropy_aug_coef")] == [0, 0, 0]


@pytest.mark.parametrize("name", [name for name in EXPECTED if "dapo" in name or "papo_d" in name or name in VPPO])
def test_dapo_family(summary_of, name):
    summary = summary_of(name)
    assert summary["algorithm.filter_groups.enable"] is True
    assert summary["algorithm.filter_groups.metric"] == "acc"
    assert (summary["actor.clip_ratio_low"], summary["actor.clip_ratio_high"]) == (0.2, 0.28)
    assert summary["actor.use_kl_loss"] is False
    assert summary["reward.reward_manager.name"] == "dapo"


@pytest.mark.parametrize("name", [name for name in EXPECTED if name.endswith(("_grpo.sh", "_papo_g.sh"))])
def test_grpo_family(summary_of, name):
    summary = summary_of(name)
    assert summary["actor.use_kl_loss"] is True
    assert (summary["actor.kl_loss_type"], summary["actor.kl_loss_coef"]) == ("low_var_kl", 0.01)
    assert (summary["actor.clip_ratio_low"], summary["actor.clip_ratio_high"]) == (0.2, 0.3)
    assert summary["algorithm.filter_groups.enable"] is False


@pytest.mark.parametrize("name", [name for name in EXPECTED if name.endswith("_no_ref_kl.sh")])
def test_no_ref_kl(summary_of, name):
    summary = summary_of(name)
    assert summary["actor.use_kl_loss"] is False
    assert (summary["actor.clip_ratio_low"], summary["actor.clip_ratio_high"]) == (0.2, 0.3)
    assert summary["algorithm.filter_groups.enable"] is False


def family_pixel_bounds(model: str) -> dict:
    """The paper's 256..1280 visual tokens per image in pixels of ``model``'s family (28- or 32-px tokens)."""
    from recipe.papo.model_families import FAMILIES, family_of_model_name

    family = FAMILIES[family_of_model_name(model)]
    return {"min_pixels": family.min_pixels, "max_pixels": family.max_pixels}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_script_uses_its_familys_patch_size(summary_of, name):
    from recipe.papo.model_families import FAMILIES, family_of_model_name

    family = FAMILIES[family_of_model_name(EXPECTED[name][1])]
    summary = summary_of(name)
    assert summary["data.image_patch_size"] == family.patch_size
    # null: the masked pass reads the patch size from the model's image processor
    # (tests/families/test_mask_patch_default.py); a script that sets it must set the family's.
    assert summary["papo.mask_patch_size"] in (None, family.patch_size)


def test_env_knobs_and_trailing_overrides_win(dry_runs):
    """Env knobs reach their keys; `key=value` arguments come after the script's own and win."""
    summary = dry_runs.get("run_qwen2_5_vl_3b_papo_g.sh", *OVERRIDE_ARGS, **OVERRIDE_ENV).summary
    assert summary["papo.kl_prcp_coef"] == 0.05
    assert summary["papo.entropy_ori_coef"] == 0.01
    assert summary["actor.clip_ratio_high"] == 0.25
    assert summary["actor.use_kl_loss"] is False
    assert summary["data.mm_processor_kwargs"] == {"min_pixels": 200704, "max_pixels": 802816}
    assert summary["rollout.val_kwargs.n"] == 4
    assert summary["trainer.total_epochs"] == 1
    assert summary["model.path"] == "/models/Qwen2.5-VL-7B-Instruct"
    assert (summary["data.train_files"], summary["data.val_files"]) == ("/d/train.parquet", "/d/val.parquet")
    assert (summary["trainer.nnodes"], summary["trainer.n_gpus_per_node"]) == (2, 8)
    assert summary["rollout.name"] == "sglang"
    assert summary["trainer.experiment_name"] == "mine"
    assert summary["trainer.default_local_dir"].endswith("/checkpoints/papo/mine")


@pytest.mark.parametrize(("override", "message"), MISSPELLED.items())
def test_misspelled_override_fails_the_dry_run(dry_runs, override, message):
    run = dry_runs.get("run_qwen2_5_vl_3b_papo_d.sh", override)
    report = f"rc={run.returncode}\nstdout:\n{run.stdout[-2000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode != 0, report
    assert message in run.stderr, report
    assert f"full_key: {override.split('=')[0]}" in run.stderr, report
    assert "PAPO dry run" not in run.stdout, report


def compose(*overrides: str):
    """``configs/papo_trainer.yaml`` composed in this process (what main_papo's dry run composes)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(SCRIPTS.parent / "configs"), version_base=None):
        # verl's default model.path is a text-only LLM, which the supported-family check rejects.
        model = f"actor_rollout_ref.model.path={QWEN25_7B}"
        return hydra_compose(config_name="papo_trainer", overrides=[model, *overrides])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # Forced in with `+`, a misspelled PAPO option still fails by name.
        ("+papo.kl_prcp_cof=0.1", "unknown PAPO option(s) papo.kl_prcp_cof"),
        # Keys verl 0.9.1 declares but never reads must not silently do nothing.
        ("actor_rollout_ref.actor.grad_clip=0.5", "set actor_rollout_ref.actor.optim.clip_grad instead"),
        ("actor_rollout_ref.actor.freeze_vision_tower=True", "freeze_vision_tower=True is ignored by verl 0.9.1"),
        # An invalid VPPO option fails by name too (docs/vppo.md).
        ("papo.vppo_token_fraction=1.5", "papo.vppo_token_fraction=1.5 is invalid"),
    ],
)
def test_start_up_checks_reject(override, message):
    from recipe.papo.config import PapoConfigError
    from recipe.papo.run_checks import check_papo_run_config

    check_papo_run_config(compose())  # the defaults pass
    # ... and so does the real clipping key alone (the ignored actor.grad_clip keeps its default).
    check_papo_run_config(compose("actor_rollout_ref.actor.optim.clip_grad=0.5"))
    with pytest.raises(PapoConfigError) as error:
        check_papo_run_config(compose(override))
    assert message in str(error.value)


def test_bad_dry_run_value_is_rejected(tmp_path):
    run = run_script("run_qwen2_5_vl_3b_grpo.sh", cwd=tmp_path, DRY_RUN="yes")
    assert run.returncode == 2
    assert "DRY_RUN must be 0 or 1, got 'yes'" in run.stderr


@pytest.mark.parametrize("name", sorted(path.name for path in SCRIPTS.glob("*.sh")))
def test_bash_syntax(name):
    done = subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_run_scripts_are_executable():
    assert all(Path(path).stat().st_mode & 0o111 for path in SCRIPTS.glob("*.sh") if path.name != "common.sh")


def test_pixel_bounds_reach_the_image_processor(summary_of, tiny_model_dir):
    """The resolved ``data.mm_processor_kwargs`` bound every image where verl 0.9.1 processes images.

    verl passes ``data.mm_processor_kwargs`` to the HF processor call in
    ``verl.utils.tokenizer.build_multimodal_processor_inputs``, used by the rollout prompt builder
    (agent loop -> ``create_continuous_token_builder(..., mm_processor_kwargs=...)``), by the actor's
    ``multi_modal_inputs`` (``AgentLoopWorker._compute_multi_modal_inputs``) and by the dataset's
    overlong-prompt filter; vLLM gets the same dict per request. The tiny processor's own bounds are
    3136..12544 pixels, so a grid inside the paper's bounds can only come from the config.
    """
    from PIL import Image
    from transformers import AutoProcessor
    from verl.utils.tokenizer import build_multimodal_processor_inputs
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    kwargs = summary_of("run_qwen2_5_vl_7b_papo_g.sh")["data.mm_processor_kwargs"]
    processor = AutoProcessor.from_pretrained(str(tiny_model_dir))
    patch, merge = processor.image_processor.patch_size, processor.image_processor.merge_size
    builder = create_continuous_token_builder(
        processor.tokenizer, hf_model_type="qwen2_5_vl", processor=processor, mm_processor_kwargs=kwargs
    )
    text = "<|vision_start|><|image_pad|><|vision_end|>How many?"
    for size in [(64, 48), (640, 480), (3000, 2000)]:
        image = Image.new("RGB", size, (200, 40, 90))
        content = [{"type": "image", "image": image}, {"type": "text", "text": "How many?"}]
        messages = [{"role": "user", "content": content}]
        rollout: dict = {}
        prompt_ids = builder.build_initial_tokens(messages, images=[image], mm_inputs_out=rollout)
        actor = build_multimodal_processor_inputs(processor, text=[text], images=[image], mm_processor_kwargs=kwargs)
        unbounded = build_multimodal_processor_inputs(processor, text=[text], images=[image])
        (grid,) = rollout["image_grid_thw"].tolist()
        assert actor["image_grid_thw"].tolist() == [grid]
        pixels = grid[1] * grid[2] * patch * patch
        assert kwargs["min_pixels"] <= pixels <= kwargs["max_pixels"], (size, grid)
        assert prompt_ids.count(processor.image_token_id) == grid[1] * grid[2] // merge**2
        (tiny_grid,) = unbounded["image_grid_thw"].tolist()
        assert tiny_grid[1] * tiny_grid[2] * patch * patch < kwargs["min_pixels"]
