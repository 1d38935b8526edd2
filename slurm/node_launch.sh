#!/usr/bin/env bash
# Run by `srun` once per node (slurm/common.sh, dali_run_step): starts `accelerate launch`
# with this node's rank. Everything here is expanded ON THE NODE: SLURM_NODEID differs per
# node, the rest comes from the batch shell's exported environment (DALI_NNODES,
# DALI_WORLD_SIZE, DALI_MAIN_ADDR, DALI_MAIN_PORT, DALI_ACCEL_CONFIG, DALI_PYTHON, DALI_REPO).
# Arguments: the trainer's arguments (dali_dist.train).
set -euo pipefail

# A stray USR1 (a bare `--signal=USR1@lead` without B:, `scancel --signal=USR1` without
# --batch) must not kill the launchers: ignore it here. The ignored disposition is inherited
# by torchrun; the trainer installs its own handler, so it still stops cleanly on USR1.
trap '' USR1

node_rank=${SLURM_NODEID:?SLURM_NODEID is not set: run this under srun}
launch=(--config_file "$DALI_ACCEL_CONFIG" --num_machines "$DALI_NNODES" --machine_rank "$node_rank"
        --num_processes "$DALI_WORLD_SIZE" --main_process_ip "$DALI_MAIN_ADDR" --main_process_port "$DALI_MAIN_PORT")
# (One process too goes through torchrun: the trainer then exits 0 after a stop, so the
# launcher prints no traceback; RUN_DIR/exit_code carries the real verdict either way.)
# Relative paths inside launch configs (deepspeed_config_file) are relative to the repo.
cd "$DALI_REPO"
echo "[dali-slurm] node $node_rank ($(hostname)): accelerate launch ${launch[*]}"
exec "$DALI_PYTHON" -m accelerate.commands.launch "${launch[@]}" -m dali_dist.train "$@"
