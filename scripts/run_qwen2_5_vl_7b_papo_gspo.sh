#!/usr/bin/env bash
# PAPO on GSPO, Qwen2.5-VL-7B-Instruct. There is no published PAPO + GSPO run: this combines the
# published settings of each method.
#
# GSPO (Zheng et al., "Group Sequence Policy Optimization", arXiv 2507.18071, Section 5.1):
# sequence-level importance ratio (verl's registered `gspo` policy loss, here as the PAPO surrogate
# papo.base_loss_mode=gspo), clip range 3e-4 (left) / 4e-4 (right) on that sequence ratio, the loss
# averaged per sequence then over sequences (loss_agg_mode=seq-mean-token-mean), no reference-KL
# loss, GRPO's group advantage. The keys are those of verl's own GSPO example
# (examples/gspo_trainer/test_gspo_3b_math.sh in verl: loss_mode=gspo, clip_ratio_low=0.0003,
# clip_ratio_high=0.0004, loss_agg_mode=seq-mean-token-mean, use_kl_loss=false).
# PAPO (arXiv 2507.06448): its row without reference KL, "PAPO-G no-ref-KL" (gamma 0.01, double
# entropy loss eta_ori = eta_aug = 0.03), and the paper's common settings (scripts/common.sh: 384
# prompts x 5 rollouts, mini-batches of 128 prompts, lr 1e-6, ...). No dynamic sampling.
# How PAPO composes with GSPO and the other verl losses: docs/compose.md.
#
# Usage: [DRY_RUN=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen2_5_vl_7b_papo_gspo.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen2.5-VL-7B-Instruct
DEFAULT_N_GPUS_PER_NODE=4
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${GRPO_ARGS[@]}" \
    actor_rollout_ref.actor.use_kl_loss=False \
    papo.base_loss_mode=gspo \
    actor_rollout_ref.actor.clip_ratio_low=0.0003 \
    actor_rollout_ref.actor.clip_ratio_high=0.0004 \
    actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean \
    papo.kl_prcp_coef=0.01 \
    papo.entropy_ori_coef=0.03 \
    papo.entropy_aug_coef=0.03 \
    "$@"
