#!/usr/bin/env bash
# VPPO, Qwen3-VL-8B-Instruct: the published VPPO-8B settings (arXiv 2510.09285's code, VPPO-RL
# examples/configs/train_vppo_8b.sh over examples/configs/config.yaml), no PAPO terms (gamma =
# eta_ori = eta_aug = 0; the masked pass runs for VPPO). docs/vppo.md.
#   token filter p = 0.4, advantage shaping beta_min = 0.9                     (train_vppo_8b.sh)
#   entropy penalty c = 0.12, rollout n = 8, response 8192 tokens, 130 steps    (train_vppo_8b.sh)
#   no reference KL, clip 0.2 / 0.28, online filtering on accuracy (DAPO_ARGS)  (config.yaml)
#   200704..1003520 pixels per image as published (not PATCH16_ARGS' token-matched budget),
#   with the family's 16-px patches for verl's data.image_patch_size             (config.yaml)
#   384 prompts per step, mini-batches of 128, lr 1e-6, temperature 1.0 = COMMON_ARGS
#
# Usage: [DRY_RUN=1] [SMOKE=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen3_vl_8b_vppo.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen3-VL-8B-Instruct
DEFAULT_N_GPUS_PER_NODE=4
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${DAPO_ARGS[@]}" \
    "${PAPO_OFF_ARGS[@]}" \
    actor_rollout_ref.rollout.n=8 \
    data.image_patch_size=16 \
    data.max_response_length=8192 \
    trainer.total_training_steps=130 \
    papo.vppo_token_fraction=0.4 \
    papo.vppo_beta_min=0.9 \
    papo.vppo_entropy_coef=0.12 \
    "$@"
