"""``SMOKE=1`` composes each script's own configuration and changes only sizes, machine and task.

Fast: bash runs the script with a stand-in ``$PYTHON`` that records its arguments
(:func:`python_args_of`), and the tests compose those in this process (Hydra's compose API against
``configs/papo_trainer.yaml``, exactly what ``python -m papo_tools.smoke`` composes). The end-to-end
smoke runs are in ``test_smoke_e2e.py``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from script_runs import python_args_of, run_script

from papo_tools.smoke.checks import Expectations, check_records
from papo_tools.smoke.run import SmokeError, compose, fresh_folder, parse_args, plan, split_arguments
from papo_tools.smoke.sizes import Machine, cpu_rollout, largest_divisor_at_most, micro_batches_per_worker

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
CPU = Machine("cpu", 2)
ALL_SCRIPTS = sorted(path.name for path in SCRIPTS.glob("run_*.sh"))
# The scripts SMOKE runs end to end in CI (test_smoke_e2e.py): the reference of each base algorithm.
PAPO_G, PAPO_D = "run_qwen2_5_vl_7b_papo_g.sh", "run_qwen2_5_vl_7b_papo_d.sh"

# Keys a smoke run may set (sizes, machine, task); every other key stays the script's.
SMOKE_KEYS = {
    # sizes
    "data.train_batch_size",
    "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
    "data.max_prompt_length",
    "data.max_response_length",
    "data.mm_processor_kwargs.min_pixels",
    "data.mm_processor_kwargs.max_pixels",
    "trainer.total_training_steps",
    "trainer.val_before_train",
    "trainer.test_freq",
    "data.filter_overlong_prompts_workers",
    "data.dataloader_num_workers",
    "actor_rollout_ref.rollout.gpu_memory_utilization",
    # machine
    "trainer.nnodes",
    "trainer.n_gpus_per_node",
    "trainer.device",
    "actor_rollout_ref.actor.strategy",
    "actor_rollout_ref.model.override_config.attn_implementation",
    "actor_rollout_ref.actor.use_torch_compile",
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile",
    "actor_rollout_ref.ref.fsdp_config.use_torch_compile",
    "actor_rollout_ref.rollout.name",
    "actor_rollout_ref.rollout.enable_sleep_mode",
    "actor_rollout_ref.rollout.enforce_eager",
    "actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes",
    "actor_rollout_ref.rollout.engine_kwargs.vllm.mm_device_do_normalize",
    "actor_rollout_ref.rollout.tensor_model_parallel_size",
    "actor_rollout_ref.rollout.agent.num_workers",
    "reward.num_workers",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units",
    "ray_kwargs.ray_init.num_cpus",
    "ray_kwargs.ray_init.num_gpus",
    "ray_kwargs.ray_init.include_dashboard",
    # task and outputs
    "actor_rollout_ref.model.path",
    "data.train_files",
    "data.val_files",
    "reward.custom_reward_function.path",
    "reward.custom_reward_function.name",
    "trainer.default_local_dir",
    "trainer.rollout_data_dir",
    "trainer.validation_data_dir",
    "ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH",
}
# What a smoke run must keep from the script (resolved keys).
KEPT = (
    "algorithm.adv_estimator",
    "algorithm.filter_groups.enable",
    "algorithm.filter_groups.metric",
    "algorithm.use_kl_in_reward",
    "actor_rollout_ref.actor.policy_loss.loss_mode",
    "actor_rollout_ref.actor.use_kl_loss",
    "actor_rollout_ref.actor.kl_loss_type",
    "actor_rollout_ref.actor.kl_loss_coef",
    "actor_rollout_ref.actor.clip_ratio_low",
    "actor_rollout_ref.actor.clip_ratio_high",
    "actor_rollout_ref.actor.loss_agg_mode",
    "actor_rollout_ref.actor.entropy_coeff",
    "actor_rollout_ref.actor.ppo_epochs",
    "actor_rollout_ref.actor.use_dynamic_bsz",
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
    "actor_rollout_ref.actor.optim",
    "actor_rollout_ref.model.use_remove_padding",
    "actor_rollout_ref.model.enable_gradient_checkpointing",
    "actor_rollout_ref.rollout.n",
    "actor_rollout_ref.rollout.temperature",
    "actor_rollout_ref.rollout.top_p",
    "actor_rollout_ref.rollout.val_kwargs",
    "reward.reward_manager.name",
    "data.filter_overlong_prompts",
    "data.image_patch_size",
    "trainer.logger",
    "trainer.project_name",
    "trainer.experiment_name",
    "trainer.total_epochs",
    "trainer.save_freq",
    "papo",
)

# A key in which one script's smoke config may differ from the end-to-end one's, and the words its
# header must use to document that difference ("{model}" is the script's default model name).
DOCUMENTED = {
    "papo.kl_prcp_coef": "gamma",
    "papo.entropy_ori_coef": "eta_ori",
    "papo.entropy_aug_coef": "eta_aug",
    "actor_rollout_ref.actor.use_kl_loss": "reference-KL",
    "data.image_patch_size": "16-px",
    "papo.mask_patch_size": "16-px",
    "data.mm_processor_kwargs.min_pixels": "16-px",
    "data.mm_processor_kwargs.max_pixels": "16-px",
    "trainer.n_gpus_per_node": "N_GPUS_PER_NODE",
    # VPPO (docs/vppo.md): its options, and its rollout n with the sizes SMOKE derives from it
    "papo.vppo_token_fraction": "token filter",
    "papo.vppo_beta_min": "advantage shaping",
    "papo.vppo_entropy_coef": "entropy penalty",
    "actor_rollout_ref.rollout.n": "rollout n",
    "actor_rollout_ref.rollout_n": "rollout n",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": "rollout n",
    "actor_rollout_ref.log_prob_micro_batch_size_per_gpu": "rollout n",
    # GSPO + PAPO (run_qwen2_5_vl_7b_papo_gspo.sh): GSPO's sequence-level surrogate and its settings
    "papo.base_loss_mode": "GSPO",
    "actor_rollout_ref.actor.clip_ratio_low": "GSPO",
    "actor_rollout_ref.actor.clip_ratio_high": "GSPO",
    "actor_rollout_ref.actor.loss_agg_mode": "GSPO",
    "critic.loss_agg_mode": "GSPO",  # verl's critic section copies the actor's aggregation
}
# The rollout engine's own keys (and verl's interpolated copies): SMOKE sets them per family on CPU.
ROLLOUT_ENGINE_KEYS = ("actor_rollout_ref.rollout.", "distillation.teacher_models.teacher_model.inference.name")
MODEL_MARK = "/tiny_"  # values naming the tiny model (the model key and its interpolations)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One working directory for every script of this module (so only the script name differs)."""
    return tmp_path_factory.mktemp("smoke_config")


@pytest.fixture(scope="module")
def smoke_plan(workdir):
    """``smoke_plan(name, *args, machine=CPU, **env)``: the plan ``SMOKE=1 <env> bash scripts/<name> args...``
    makes on ``machine`` (composed here) and the script's own overrides; cached per module."""
    cache: dict = {}

    def make(name: str, *args: str, machine: Machine = CPU, **env: str):
        key = (name, args, machine, tuple(sorted(env.items())))
        if key not in cache:
            argv = python_args_of(name, *args, cwd=workdir, SMOKE="1", **env)
            assert argv[:2] == ["-m", "papo_tools.smoke"]
            parsed = parse_args(argv[2:])
            script_args, user_args = split_arguments(parsed.overrides, parsed.user_args)
            assert user_args == list(args)
            smoke = plan(
                parsed.script, parsed.out, script_args, user_args, machine=machine, data=parsed.data, model=parsed.model
            )
            cache[key] = smoke, script_args
        return cache[key]

    return make


@pytest.fixture(scope="module")
def plain_config(workdir):
    """``plain_config(name)``: the configuration ``bash scripts/<name>`` (no SMOKE) composes; cached."""
    cache: dict = {}

    def make(name: str):
        if name not in cache:
            argv = python_args_of(name, cwd=workdir)
            assert argv[:2] == ["-m", "recipe.papo.main_papo"]
            cache[name] = compose(argv[2:])
        return cache[name]

    return make


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+")


def flat(config, prefix: str = "") -> dict:
    """``{dotted key: value}`` of a resolved config (lists kept whole)."""
    items = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        items.update(flat(value, path + ".") if isinstance(value, dict) else {path: value})
    return items


def header_of(name: str) -> str:
    """The script's leading comment lines plus its DEFAULT_* settings."""
    text = (SCRIPTS / name).read_text()
    comments = [line for line in text.splitlines()[1:] if line.startswith("#")]
    return "\n".join(comments + re.findall(r"^DEFAULT_\w+=.*$", text, re.MULTILINE))


def default_model(name: str) -> str:
    return re.search(r"^DEFAULT_MODEL_PATH=(\S+)$", (SCRIPTS / name).read_text(), re.MULTILINE).group(1)


def test_smoke_and_dry_run_exclude_each_other(tmp_path):
    run = run_script(PAPO_G, cwd=tmp_path, SMOKE="1", DRY_RUN="1")
    assert run.returncode == 2
    assert "SMOKE=1 and DRY_RUN=1 exclude each other" in run.stderr
    run = run_script(PAPO_G, cwd=tmp_path, SMOKE="yes")
    assert (run.returncode, "SMOKE must be 0 or 1, got 'yes'" in run.stderr) == (2, True)


@pytest.mark.parametrize("name", [PAPO_G, PAPO_D])
def test_smoke_adds_only_sizes_machine_and_task_between_script_and_user(smoke_plan, workdir, name):
    user = ("actor_rollout_ref.actor.ulysses_sequence_parallel_size=2", "data.max_response_length=8")
    smoke, script_args = smoke_plan(name, *user)
    assert smoke.overrides[: len(script_args)] == script_args
    assert smoke.overrides[-len(user) :] == list(user)
    added = {override_key(o) for o in smoke.overrides[len(script_args) : -len(user)]}
    assert added <= SMOKE_KEYS, f"smoke sets keys beyond sizes/machine/task: {sorted(added - SMOKE_KEYS)}"
    assert smoke.config.data.max_response_length == 8  # the user's argument wins over the smoke size
    assert smoke.config.actor_rollout_ref.actor.ulysses_sequence_parallel_size == 2
    assert smoke.folder == (workdir / "smoke_output" / name.removesuffix(".sh")).resolve()


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_smoke_keeps_the_script_settings(smoke_plan, plain_config, name):
    smoke, _ = smoke_plan(name)
    plain = plain_config(name)
    for key in KEPT:
        kept, script = (OmegaConf.select(c, key) for c in (smoke.config, plain))
        if OmegaConf.is_config(kept):
            kept, script = (OmegaConf.to_container(c, resolve=True) for c in (kept, script))
        assert kept == script, key
    assert smoke.config.actor_rollout_ref.model.use_remove_padding is True  # verl's default, kept by every script
    # the script's own engine on the CPU build of vLLM, except for families it cannot serve
    assert smoke.config.actor_rollout_ref.rollout.name == cpu_rollout(smoke.model_type)
    assert smoke.config.trainer.n_gpus_per_node == 2
    assert Path(smoke.config.actor_rollout_ref.model.path).name == f"tiny_{smoke.model_type}"


@pytest.mark.parametrize("name", ALL_SCRIPTS)
@pytest.mark.parametrize("sp", [1, 2])
def test_every_worker_runs_at_least_two_micro_batches(smoke_plan, plain_config, name, sp):
    args = (f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={sp}",) if sp > 1 else ()
    smoke, _ = smoke_plan(name, *args)
    config = smoke.config
    assert micro_batches_per_worker(config) >= 2
    # verl 0.9.1 asserts every rank's share divides evenly into micro-batches (update and log-probs).
    dp = config.trainer.n_gpus_per_node // sp
    n = config.actor_rollout_ref.rollout.n
    assert (
        config.actor_rollout_ref.actor.ppo_mini_batch_size * n // dp
    ) % config.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 0
    share = config.data.train_batch_size * n // dp
    for micro in (
        config.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu,
        config.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu,
    ):
        assert share % micro == 0 and share // micro >= 2
    plain = plain_config(name)
    # the script's optimiser steps per training step are kept
    assert config.data.train_batch_size // config.actor_rollout_ref.actor.ppo_mini_batch_size == (
        plain.data.train_batch_size // plain.actor_rollout_ref.actor.ppo_mini_batch_size
    )


def test_cuda_keeps_the_script_engine_and_caps_the_workers(smoke_plan):
    smoke, _ = smoke_plan(PAPO_G, machine=Machine("cuda", 1))
    assert smoke.config.actor_rollout_ref.rollout.name == "vllm"
    assert smoke.config.trainer.n_gpus_per_node == 1
    assert smoke.config.trainer.device == "cuda"


@pytest.mark.parametrize("name", sorted(set(ALL_SCRIPTS) - {PAPO_G, PAPO_D}))
def test_smoke_config_differs_from_an_end_to_end_one_only_in_documented_keys(smoke_plan, name):
    """Each script's smoke config equals the one CI runs end to end (PAPO-G 7B, or PAPO-D 7B for
    the DAPO family) except in keys its header documents: coefficients, model, GPU count."""
    smoke, _ = smoke_plan(name)
    reference_name = PAPO_D if smoke.config.algorithm.filter_groups.enable else PAPO_G
    reference, _ = smoke_plan(reference_name)

    def normalised(p) -> dict:
        stem = p.script.removesuffix(".sh")
        return {
            key: value.replace(str(p.folder), "<out>")
            .replace(stem, "<name>")
            .replace(stem.removeprefix("run_"), "<name>")
            if isinstance(value, str)
            else value
            for key, value in flat(OmegaConf.to_container(p.config, resolve=True)).items()
        }

    ours, theirs = normalised(smoke), normalised(reference)
    differing = sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
    if cpu_rollout(smoke.model_type) != cpu_rollout(reference.model_type):  # SMOKE's machine choice, not the script's
        differing = [key for key in differing if not key.startswith(ROLLOUT_ENGINE_KEYS)]
    header = header_of(name)
    undocumented = []
    for key in differing:
        if MODEL_MARK in str(ours.get(key)) and MODEL_MARK in str(theirs.get(key)):
            words = default_model(name).split("/")[-1].removesuffix("-Instruct")
        else:
            words = next((w for k, w in DOCUMENTED.items() if key == k or key.endswith("." + k.split(".", 1)[1])), None)
        if words is None or words not in header:
            undocumented.append((key, theirs.get(key, "<absent>"), ours.get(key, "<absent>"), words))
    assert not undocumented, f"{name} vs {reference_name}: (key, reference, this, header words) = {undocumented}"


def test_split_arguments_takes_the_users_from_the_end():
    assert split_arguments(["a=1", "b=2", "c=3"], 1) == (["a=1", "b=2"], ["c=3"])
    assert split_arguments(["a=1"], 0) == (["a=1"], [])
    with pytest.raises(SmokeError):
        split_arguments(["a=1"], 2)


def test_largest_divisor_at_most():
    assert [largest_divisor_at_most(10, cap) for cap in (1, 2, 4, 5, 16)] == [1, 2, 2, 5, 10]
    assert largest_divisor_at_most(15, 7) == 5


def test_fresh_folder_replaces_only_its_own_output(tmp_path, capsys):
    folder = tmp_path / "run_x"
    fresh_folder(folder)
    (folder / "metrics.jsonl").write_text("{}\n")
    fresh_folder(folder)
    assert "replacing the previous smoke output" in capsys.readouterr().out
    assert not (folder / "metrics.jsonl").exists()
    other = tmp_path / "not_smoke"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(SmokeError, match="was not written by a smoke run"):
        fresh_folder(other)
    assert (other / "precious.txt").read_text() == "keep"


def record(step: int, **data) -> dict:
    return {"step": step, "data": {"training/global_step": step, **data}}


HEALTHY = [
    record(
        1,
        **{
            "papo/kl_prcp": 1e-3,
            "papo/loss": -0.02,
            "papo/base_loss": 0.5,
            "actor/pg_loss": 0.48,
            "actor/kl_loss": 0.0,
            "training/rollout_actor_probs_pearson_corr": 0.9963,
        },
    ),
    {
        "step": 2,
        "data": {
            "training/global_step": 2,
            "papo/kl_prcp": 2e-3,
            "papo/loss": -0.01,
            "papo/base_loss": 0.3,
            "actor/pg_loss": 0.29,
            "actor/kl_loss": 1e-4,
            "training/rollout_actor_probs_pearson_corr": 0.9968,
            "val-core/papo_demo/acc/mean@8": 0.0,
        },
    },
]
EXPECT = Expectations(steps=2, papo_enabled=True, use_kl_loss=True, rollout_log_probs=True)


def test_checks_pass_a_healthy_run():
    assert check_records(HEALTHY, EXPECT) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"papo/kl_prcp": 0.0}, "step 2: papo/kl_prcp = 0.0, expected > 0"),
        ({"papo/entropy_ori": math.nan}, "step 2: papo/entropy_ori = nan is not finite"),
        ({"papo/loss": -0.02}, "step 2: papo/loss + papo/base_loss"),
        ({"actor/kl_loss": math.inf}, "step 2: use_kl_loss is on but actor/kl_loss = inf"),
    ],
)
def test_checks_name_the_failing_step_and_metric(change, message):
    records = [HEALTHY[0], {"step": 2, "data": {**HEALTHY[1]["data"], **change}}]
    failures = check_records(records, EXPECT)
    assert any(message in failure for failure in failures), failures


def test_checks_want_every_step_and_a_validation_pass():
    assert any("expected training steps 1..2" in f for f in check_records(HEALTHY[:1], EXPECT))
    no_val = [HEALTHY[0], record(2, **{k: v for k, v in HEALTHY[1]["data"].items() if not k.startswith("val-")})]
    assert any("no validation metrics" in f for f in check_records(no_val, EXPECT))
    # PAPO off: no papo/* metric is expected, the loss identity and kl_prcp are not checked; neither is the
    # rollout-actor correlation when the rollout returns no log-probs
    plain = [record(1, **{"actor/pg_loss": 0.1}), record(2, **{"actor/pg_loss": 0.2, "val-core/x": 0.0})]
    assert check_records(plain, Expectations(2, papo_enabled=False, use_kl_loss=False, rollout_log_probs=False)) == []


@pytest.fixture(scope="module")
def script_data(tmp_path_factory) -> Path:
    """A ``DATA_DIR`` as data_prep writes it (training, validation and evaluation parquets) and a model folder."""
    from papo_tools.demo.task import make_rows, write_parquet
    from recipe.papo.prompt import EVAL_BENCHMARKS

    root = tmp_path_factory.mktemp("script_data")
    write_parquet(make_rows(16, "train"), root / "data" / "virl39k_train.parquet")
    write_parquet(make_rows(2, "val"), root / "data" / "mmk12_val.parquet")
    for benchmark in EVAL_BENCHMARKS:
        write_parquet(make_rows(2, benchmark), root / "data" / "eval" / f"{benchmark}.parquet")
    model = root / "models" / "my_qwen2_5_vl"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    return root


def test_smoke_data_and_model_script_keep_the_scripts_own(smoke_plan, plain_config, script_data):
    env = {"DATA_DIR": str(script_data / "data"), "MODEL_PATH": str(script_data / "models" / "my_qwen2_5_vl")}
    smoke, _ = smoke_plan(PAPO_G, SMOKE_DATA="script", SMOKE_MODEL="script", **env)
    config = smoke.config
    assert (smoke.data, smoke.model) == ("script", "script")
    assert config.data.train_files == f"{script_data}/data/virl39k_train.parquet"
    assert config.data.val_files == f"{script_data}/data/mmk12_val.parquet"
    assert config.actor_rollout_ref.model.path == env["MODEL_PATH"]
    # the script's reward, not the counting task's; room for the paper's prompt and answer format
    assert config.reward.custom_reward_function.path == plain_config(PAPO_G).reward.custom_reward_function.path
    assert config.reward.custom_reward_function.path == "pkg://recipe.papo.reward"
    assert (config.data.max_prompt_length, config.data.max_response_length) == (512, 64)
    # generation dumps and checkpoints in the smoke folder
    assert config.trainer.rollout_data_dir == str(smoke.folder / "rollouts")
    assert config.trainer.validation_data_dir == str(smoke.folder / "validation")
    assert config.trainer.default_local_dir == str(smoke.folder / "checkpoints")
    assert smoke.metrics == smoke.folder / "metrics.jsonl"


def test_smoke_defaults_replace_the_data_and_model(smoke_plan):
    smoke, _ = smoke_plan(PAPO_G)
    assert (smoke.data, smoke.model) == ("builtin", "tiny")
    assert smoke.config.data.train_files == str(smoke.folder / "data" / "train.parquet")
    assert smoke.config.reward.custom_reward_function.path == "pkg://papo_tools.demo.reward"
    assert (smoke.config.data.max_prompt_length, smoke.config.data.max_response_length) == (192, 16)


def test_smoke_of_the_eval_script_evaluates_the_model_on_the_prepared_benchmarks(smoke_plan, script_data, tmp_path):
    from recipe.papo.prompt import EVAL_BENCHMARKS

    model = str(script_data / "models" / "my_qwen2_5_vl")
    env = {"DATA_DIR": str(script_data / "data"), "MODEL_PATH": model, "OUT_DIR": str(tmp_path / "results")}
    env["BENCHMARKS"] = " ".join(EVAL_BENCHMARKS)  # the script asks $PYTHON for them, a stand-in here
    smoke, _ = smoke_plan("eval_papo.sh", **env)
    config = smoke.config
    assert (smoke.data, smoke.model, smoke.val_only) == ("script", "script", True)
    assert config.actor_rollout_ref.model.path == model
    assert len(config.data.val_files) == 9 and config.data.val_files[0].startswith(f"{script_data}/data/eval/")
    # one validation pass, n = 8: no training steps, and verl's val_before_train kept (val_only needs it)
    assert (config.trainer.val_only, config.trainer.val_before_train) == (True, True)
    assert config.actor_rollout_ref.rollout.val_kwargs.n == 8
    assert "trainer.total_training_steps" not in {override_key(o) for o in smoke.overrides}
    # the script's own outputs: metrics where the table reads them, generations in OUT_DIR
    assert smoke.metrics == tmp_path / "results" / "metrics.jsonl"
    assert config.trainer.validation_data_dir == str(tmp_path / "results" / "generations")


def test_smoke_refuses_what_it_cannot_run(smoke_plan, script_data, tmp_path):
    with pytest.raises(SmokeError, match="only evaluates"):
        smoke_plan(
            "eval_papo.sh",
            SMOKE_DATA="builtin",
            MODEL_PATH=str(script_data / "models" / "my_qwen2_5_vl"),
            DATA_DIR=str(script_data / "data"),
            BENCHMARKS="We_Math",
        )
    with pytest.raises(SmokeError, match="prepare the data first"):
        smoke_plan(PAPO_G, SMOKE_DATA="script", DATA_DIR=str(tmp_path / "nowhere"))
    few = tmp_path / "few"
    from papo_tools.demo.task import make_rows, write_parquet

    write_parquet(make_rows(3, "train"), few / "virl39k_train.parquet")
    write_parquet(make_rows(1, "val"), few / "mmk12_val.parquet")
    with pytest.raises(SmokeError, match="hold 3 rows, fewer than the smoke run's training batch of 12"):
        smoke_plan(PAPO_G, SMOKE_DATA="script", DATA_DIR=str(few))
    run = run_script(PAPO_G, cwd=tmp_path, SMOKE="1", SMOKE_DATA="mine")
    assert run.returncode == 2 and "SMOKE_DATA must be builtin or script" in run.stderr
