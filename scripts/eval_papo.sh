#!/usr/bin/env bash
# PAPO evaluation (PAPO spec sections 4-5): verl validation only over the prepared evaluation parquets,
# avg@8 (8 samples per question at temperature 1.0, top_p 0.99), then the per-benchmark table (each
# benchmark, general, vision-dependent and overall) as Markdown and JSON.
#
# Usage: MODEL_PATH=<HF model dir or merged checkpoint> [DRY_RUN=1] bash scripts/eval_papo.sh [key=value ...]
# Knobs (besides those of scripts/common.sh that apply to the model, rollout and cluster):
#   MODEL_PATH   required: a Hugging Face model (id or folder), e.g. a checkpoint merged with
#                `python -m verl.model_merger merge --backend fsdp ...`
#   EVAL_DIR     folder holding <benchmark>.parquet from data_prep (default $DATA_DIR/eval)
#   BENCHMARKS   space-separated subset of the nine benchmarks (default: all nine)
#   EVAL_N       samples per question (default 8, the paper's avg@8)
#   OUT_DIR      results: metrics.jsonl, eval_table.md, eval_table.json, generations/
#                (default eval_results/<basename of MODEL_PATH>)
#   LOGGER       must include "file" (the table is read from verl's file logger); default console+file
# Prompt/response lengths, pixel bounds and sampling are the training scripts' (scripts/common.sh).
set -xeuo pipefail

: "${MODEL_PATH:?set MODEL_PATH to the Hugging Face model or merged checkpoint to evaluate}"
DEFAULT_MODEL_PATH=$MODEL_PATH
DEFAULT_N_GPUS_PER_NODE=4
EXPERIMENT_NAME=${EXPERIMENT_NAME:-eval_$(basename "$MODEL_PATH")}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

EVAL_DIR=${EVAL_DIR:-$DATA_DIR/eval}
BENCHMARKS=${BENCHMARKS:-$("$PYTHON" -c 'from recipe.papo.prompt import EVAL_BENCHMARKS; print(" ".join(EVAL_BENCHMARKS))')}
EVAL_N=${EVAL_N:-8}
OUT_DIR=${OUT_DIR:-eval_results/$(basename "$MODEL_PATH")}
case "$OUT_DIR" in
/*) ;;
*) OUT_DIR=$PWD/$OUT_DIR ;;
esac
case "$LOGGER" in
*file*) ;;
*)
    echo "LOGGER=$LOGGER lacks the file logger, which the evaluation table is read from" >&2
    exit 2
    ;;
esac

eval_files=()
for benchmark in $BENCHMARKS; do
    eval_files+=("$EVAL_DIR/$benchmark.parquet")
    if [ "$DRY_RUN" = 0 ] && [ ! -f "$EVAL_DIR/$benchmark.parquet" ]; then
        echo "missing $EVAL_DIR/$benchmark.parquet: run python -m data_prep.papo_eval --out $EVAL_DIR (or set EVAL_DIR / BENCHMARKS)" >&2
        exit 2
    fi
done
if [ "${#eval_files[@]}" -eq 0 ]; then
    echo "BENCHMARKS is empty" >&2
    exit 2
fi
val_files=$(printf "'%s'," "${eval_files[@]}")

metrics=$OUT_DIR/metrics.jsonl
if [ "$DRY_RUN" = 0 ]; then
    mkdir -p "$OUT_DIR"
    rm -f "$metrics" # never build the table from an earlier run's metrics
fi

# verl builds the training dataset even with trainer.val_only=True: the first evaluation file is the
# cheapest valid data.train_files (read once, never trained on; no length filter, so no processing).
# The length filter is off so that every question counts (a prompt over budget scores 0, not dropped).
# No reference model, no checkpoint resume, PAPO off (validation never uses its terms).
papo_main \
    "${COMMON_ARGS[@]}" \
    "${PAPO_OFF_ARGS[@]}" \
    data.train_files="'${eval_files[0]}'" \
    data.val_files="[${val_files%,}]" \
    data.filter_overlong_prompts=False \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.rollout.val_kwargs.n="$EVAL_N" \
    trainer.val_only=True \
    trainer.val_before_train=True \
    trainer.resume_mode=disable \
    trainer.validation_data_dir="$OUT_DIR/generations" \
    ++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="$metrics" \
    "$@"

if [ "$DRY_RUN" = 1 ]; then
    exit 0
fi
"$PYTHON" -m recipe.papo.eval_table --metrics "$metrics" --out "$OUT_DIR" --n "$EVAL_N"
