# shellcheck shell=bash
# Shared part of the PAPO run scripts: the env-var knobs and the paper's settings as verl 0.9.1
# overrides (the published settings of arXiv 2507.06448). Sourced, never run. A run script sets
#   DEFAULT_MODEL_PATH        model used when MODEL_PATH is not set
#   DEFAULT_N_GPUS_PER_NODE   GPUs per node when N_GPUS_PER_NODE is not set (3B: 2, 7B/8B: 4)
# then sources this file and calls `papo_main <variant overrides> "$@"`; the user's `key=value`
# arguments come last, so they win over everything set here.

# ---- env-var knobs --------------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
# DRY_RUN=1: compose the full Hydra config against the installed verl, run verl's validate_config and
# the PAPO checks, print the resolved settings as JSON and exit 0 (no Ray, no GPU).
DRY_RUN=${DRY_RUN:-0}
case "$DRY_RUN" in
0 | 1) ;;
*)
    echo "DRY_RUN must be 0 or 1, got '$DRY_RUN'" >&2
    exit 2
    ;;
esac
# SMOKE=1: run this script's configuration for 2 training steps plus one validation pass on a tiny
# random model of the same family and the built-in tiny task, on this machine (CPU or CUDA); only
# sizes change. Writes $SMOKE_OUT/<script>/{metrics.jsonl,config.yaml} and fails on unhealthy
# papo/* metrics. See docs/smoke.md.
SMOKE=${SMOKE:-0}
case "$SMOKE" in
0 | 1) ;;
*)
    echo "SMOKE must be 0 or 1, got '$SMOKE'" >&2
    exit 2
    ;;
esac
if [[ "$SMOKE" == 1 && "$DRY_RUN" == 1 ]]; then
    echo "SMOKE=1 and DRY_RUN=1 exclude each other: DRY_RUN only validates the configuration, SMOKE runs it" >&2
    exit 2
fi
SMOKE_OUT=${SMOKE_OUT:-$PWD/smoke_output}
# What SMOKE=1 replaces: SMOKE_DATA=builtin runs the built-in counting task and its reward, SMOKE_DATA=script
# keeps this script's data files and reward (DATA_DIR, TRAIN_FILE, VAL_FILE); SMOKE_MODEL=tiny runs a tiny
# random model of the script's family, SMOKE_MODEL=script keeps MODEL_PATH. A training script defaults to
# builtin/tiny, scripts/eval_papo.sh to script/script (docs/smoke.md).
SMOKE_DATA=${SMOKE_DATA:-${DEFAULT_SMOKE_DATA:-builtin}}
SMOKE_MODEL=${SMOKE_MODEL:-${DEFAULT_SMOKE_MODEL:-tiny}}
case "$SMOKE_DATA/$SMOKE_MODEL" in
builtin/tiny | builtin/script | script/tiny | script/script) ;;
*)
    echo "SMOKE_DATA must be builtin or script and SMOKE_MODEL tiny or script, got '$SMOKE_DATA' and '$SMOKE_MODEL'" >&2
    exit 2
    ;;
esac
# The user's own `key=value` arguments (this file is sourced, so "$@" is the script's command line):
# in a smoke run they are applied after the smoke sizes, so they win over those too.
USER_ARGS=("$@")

MODEL_PATH=${MODEL_PATH:-$DEFAULT_MODEL_PATH}
# Output of `python -m data_prep.all --out "$DATA_DIR"`.
DATA_DIR=${DATA_DIR:-$HOME/data/papo}
# Relative folders are the caller's: made absolute here, as the trainer's processes may run elsewhere.
case "$DATA_DIR" in
/*) ;;
*) DATA_DIR=$PWD/$DATA_DIR ;;
esac
if [ -d "$MODEL_PATH" ]; then MODEL_PATH=$(cd "$MODEL_PATH" && pwd); fi
TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/virl39k_train.parquet}
VAL_FILE=${VAL_FILE:-$DATA_DIR/mmk12_val.parquet}

NNODES=${NNODES:-1}
N_GPUS_PER_NODE=${N_GPUS_PER_NODE:-$DEFAULT_N_GPUS_PER_NODE}
ROLLOUT_NAME=${ROLLOUT_NAME:-vllm}
ROLLOUT_TP=${ROLLOUT_TP:-1}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.6}
# Memory only: the loss is normalised over the global batch, so these do not change the update.
PPO_MICRO_BATCH_SIZE_PER_GPU=${PPO_MICRO_BATCH_SIZE_PER_GPU:-4}
LOG_PROB_MICRO_BATCH_SIZE_PER_GPU=${LOG_PROB_MICRO_BATCH_SIZE_PER_GPU:-16}
# Processes for verl's start-up filter of prompts longer than the prompt budget.
FILTER_WORKERS=${FILTER_WORKERS:-8}

PROJECT_NAME=${PROJECT_NAME:-papo}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-$(basename "$0" .sh | sed 's/^run_//')}
CKPT_DIR=${CKPT_DIR:-$PWD/checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME}
SAVE_FREQ=${SAVE_FREQ:-20}
MAX_CKPTS_TO_KEEP=${MAX_CKPTS_TO_KEEP:-2}
LOGGER=${LOGGER:-'["console","file"]'}
# verl's `file` logger writes $VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl (passed to the Ray
# job's runtime env below, so it also reaches a trainer process on another node).
VERL_FILE_LOGGER_ROOT=${VERL_FILE_LOGGER_ROOT:-$PWD/outputs}

# ---- the paper's common settings (arXiv 2507.06448, every run) ---------------------------------
# 384 prompts x n=5 per step, mini-batch 128 prompts (3 optimiser steps per rollout step), 1 PPO
# epoch, lr 1e-6 constant (no warmup), weight decay 0.01, grad clip 1.0, token-mean loss, prompt 4096
# / response 2048 tokens, 200704..1003520 pixels per image, temperature 1.0 / top_p 0.99, 2 epochs,
# validation every 5 steps with n=8 at temperature 1.0; vision tower trained (verl trains every
# parameter). The PAPO loss and trainer come from configs/papo_trainer.yaml.
COMMON_ARGS=(
    data.train_files="$TRAIN_FILE"
    data.val_files="$VAL_FILE"
    data.train_batch_size=384
    data.max_prompt_length=4096
    data.max_response_length=2048
    data.filter_overlong_prompts=True
    data.filter_overlong_prompts_workers="$FILTER_WORKERS"
    ++data.mm_processor_kwargs.min_pixels=200704
    ++data.mm_processor_kwargs.max_pixels=1003520
    actor_rollout_ref.model.path="$MODEL_PATH"
    actor_rollout_ref.actor.ppo_mini_batch_size=128
    actor_rollout_ref.actor.ppo_epochs=1
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="$PPO_MICRO_BATCH_SIZE_PER_GPU"
    actor_rollout_ref.actor.loss_agg_mode=token-mean
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.actor.optim.lr_scheduler_type=constant
    actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0
    actor_rollout_ref.actor.optim.weight_decay=0.01
    actor_rollout_ref.actor.optim.clip_grad=1.0
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu="$LOG_PROB_MICRO_BATCH_SIZE_PER_GPU"
    actor_rollout_ref.rollout.name="$ROLLOUT_NAME"
    actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEMORY_UTILIZATION"
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$LOG_PROB_MICRO_BATCH_SIZE_PER_GPU"
    actor_rollout_ref.rollout.n=5
    actor_rollout_ref.rollout.temperature=1.0
    actor_rollout_ref.rollout.top_p=0.99
    actor_rollout_ref.rollout.top_k=-1
    actor_rollout_ref.rollout.val_kwargs.n=8
    actor_rollout_ref.rollout.val_kwargs.do_sample=True
    actor_rollout_ref.rollout.val_kwargs.temperature=1.0
    actor_rollout_ref.rollout.val_kwargs.top_p=0.99
    actor_rollout_ref.rollout.val_kwargs.top_k=-1
    algorithm.use_kl_in_reward=False
    trainer.nnodes="$NNODES"
    trainer.n_gpus_per_node="$N_GPUS_PER_NODE"
    trainer.total_epochs=2
    trainer.test_freq=5
    trainer.val_before_train=True
    trainer.save_freq="$SAVE_FREQ"
    trainer.max_actor_ckpt_to_keep="$MAX_CKPTS_TO_KEEP"
    trainer.default_local_dir="$CKPT_DIR"
    trainer.project_name="$PROJECT_NAME"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.logger="$LOGGER"
    ++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_ROOT="$VERL_FILE_LOGGER_ROOT"
)

# ---- base algorithms (arXiv 2507.06448, per-variant settings) -----------------------------------
# GRPO: low_var_kl reference-KL loss 0.01, clip 0.2 / 0.3, no dynamic sampling.
GRPO_ARGS=(
    actor_rollout_ref.actor.use_kl_loss=True
    actor_rollout_ref.actor.kl_loss_type=low_var_kl
    actor_rollout_ref.actor.kl_loss_coef=0.01
    actor_rollout_ref.actor.clip_ratio_low=0.2
    actor_rollout_ref.actor.clip_ratio_high=0.3
    algorithm.filter_groups.enable=False
    reward.reward_manager.name=naive
)
# DAPO: no reference KL, clip 0.2 / 0.28, dynamic sampling that drops groups whose n accuracies are
# all equal (with n=5 and 0/1 accuracy: keeps mean accuracy in (0.01, 0.99)). No overlong shaping.
DAPO_ARGS=(
    actor_rollout_ref.actor.use_kl_loss=False
    actor_rollout_ref.actor.clip_ratio_low=0.2
    actor_rollout_ref.actor.clip_ratio_high=0.28
    algorithm.filter_groups.enable=True
    algorithm.filter_groups.metric=acc
    reward.reward_manager.name=dapo
)
# Qwen3-VL and Qwen3.5 (16-px patches, 2x2 merge: one visual token is 32x32 px): the paper's budget
# of 256..1280 visual tokens per image is 262144..1310720 pixels (256*32*32, 1280*32*32); verl's
# data.image_patch_size and the image-space mask cells follow the 16-px patches.
PATCH16_ARGS=(
    data.image_patch_size=16
    ++data.mm_processor_kwargs.min_pixels=262144
    ++data.mm_processor_kwargs.max_pixels=1310720
    papo.mask_patch_size=16
)
# PAPO off: the run is exactly the base algorithm, still through main_papo (same code path).
PAPO_OFF_ARGS=(
    papo.kl_prcp_coef=0
    papo.entropy_ori_coef=0
    papo.entropy_aug_coef=0
)

# Run the PAPO entry point with the given overrides (DRY_RUN=1: validate and print, no GPU). The
# last len(USER_ARGS) arguments are the user's; SMOKE=1 hands them to papo_tools.smoke separately.
papo_main() {
    if [[ "$SMOKE" == 1 ]]; then
        "$PYTHON" -m papo_tools.smoke --script "$(basename "$0")" --out "$SMOKE_OUT" \
            --data "$SMOKE_DATA" --model "$SMOKE_MODEL" --user-args "${#USER_ARGS[@]}" -- "$@"
    else
        PAPO_DRY_RUN="$DRY_RUN" "$PYTHON" -m recipe.papo.main_papo "$@"
    fi
}
