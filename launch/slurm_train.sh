#!/usr/bin/env bash
# A plain sbatch wrapper for multi-GPU training on one node (for sweeps use `--multirun hydra/launcher=slurm`).
# Usage: sbatch --gres=gpu:4 --cpus-per-task=32 --time=48:00:00 launch/slurm_train.sh train_codebook dataset=vas
#SBATCH --job-name=specvqgan
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --signal=USR1@120
#SBATCH --requeue
set -euo pipefail
stage=$1; shift
gpus=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | wc -l)}
# Run folders are named by the overrides, so a requeued job finds its checkpoints/last.pt and resumes.
exec .venv/bin/accelerate launch --multi_gpu --num_processes "$gpus" --mixed_precision bf16 \
  -m "stages.$stage" trainer=multi_gpu "$@"
