# shellcheck shell=bash
# Shared by slurm/*.sbatch (sourced, never run): find the repo, activate the Python env,
# check the inputs before any process group exists, start one `accelerate launch` per node,
# and run the stop/requeue protocol. See slurm/README.md for every variable.
#
# Stop/requeue protocol (docs/design.md, 'Stop and requeue'):
#   * `#SBATCH --signal=B:USR1@<lead>` (or `scancel --signal=USR1 --batch JOB`) reaches only
#     this batch shell. bash runs a trap only while it waits, so the step runs as
#     `srun ... &` + `wait`, and `wait` is repeated after the trap returns.
#   * The trap touches RUN_DIR/STOP; USR1 is never forwarded to the step (it would kill the
#     launchers). The trainer checkpoints at its next step and records 75 in RUN_DIR/exit_code
#     (the launcher's own exit status says nothing: torchrun turns any failure into 1).
#   * exit_code 75 -> remove STOP, `scontrol requeue $SLURM_JOB_ID` (capped by MAX_REQUEUES
#     against SLURM_RESTART_COUNT). The requeued job has the same id, hence the same RUN_DIR,
#     resumes with --resume auto and logs to the MLflow run named in RUN_DIR/mlflow_run_id.
#   * SIGTERM (preemption, time limit, scancel) reaches every process: the trainer
#     checkpoints on it too; Slurm itself requeues a preempted --requeue job, and this script
#     never requeues after a SIGTERM (a cancelled job must stay cancelled).

DALI_EXIT_REQUEUE=75

dali_log() { printf '[%s dali-slurm] %s\n' "$(date +%H:%M:%S)" "$*"; }

# One-line reason on stderr (the job log), then exit (2: bad input, as the CLI does).
dali_die() {
  printf 'error: %s\n' "$1" >&2
  exit "${2:-2}"
}

# A URI without its credentials (user:password@), for the job log.
dali_redact_uri() { printf '%s\n' "$1" | sed -E 's#(://)[^/@[:space:]]+@#\1***@#g'; }

# Absolute path without requiring it to exist.
dali_abspath() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

# ---------------------------------------------------------------------------------------
# Environment: repo, Python, GPUs, CPUs, rendezvous address
# ---------------------------------------------------------------------------------------

# DALI_REPO: the checkout (shared by all nodes). The sbatch scripts set it before sourcing
# this file; it is exported so the node script finds it too.
dali_setup_env() {
  [ -n "${DALI_REPO:-}" ] || dali_die "DALI_REPO is not set (source slurm/common.sh from an sbatch script)"
  export DALI_REPO
  DALI_SLURM_DIR="$DALI_REPO/slurm"
  export DALI_SLURM_DIR
  # ENV_SETUP: shell code run first, e.g. 'module load cuda/12.4; source ~/miniforge/bin/activate dali'.
  if [ -n "${ENV_SETUP:-}" ]; then
    eval "$ENV_SETUP" || dali_die "ENV_SETUP failed: $ENV_SETUP"
  fi
  # VENV: a virtual environment to activate (default: the repo's .venv when it exists).
  if [ -n "${VENV:-}" ]; then
    [ -f "$VENV/bin/activate" ] || dali_die "VENV=$VENV: no bin/activate there"
  elif [ -z "${ENV_SETUP:-}" ] && [ -f "$DALI_REPO/.venv/bin/activate" ]; then
    VENV="$DALI_REPO/.venv"
  fi
  if [ -n "${VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
  fi
  DALI_PYTHON=$(command -v python3 || command -v python) || dali_die "no python3 on PATH (set VENV or ENV_SETUP)"
  export DALI_PYTHON
  "$DALI_PYTHON" -c 'import dali_dist, accelerate' 2>/dev/null \
    || dali_die "$DALI_PYTHON cannot import dali_dist and accelerate (set VENV or ENV_SETUP; install with scripts/setup.sh)"
}

# GPUs on one node: GPUS_PER_NODE, else what Slurm allocated, else what the node shows.
dali_gpus_per_node() {
  local n=""
  if [ -n "${GPUS_PER_NODE:-}" ]; then
    n=$GPUS_PER_NODE
  elif [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
    n=$SLURM_GPUS_ON_NODE
  elif [ -n "${SLURM_GPUS_PER_NODE:-}" ]; then
    n=${SLURM_GPUS_PER_NODE##*:}  # "a100:4" -> 4
  elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "$CUDA_VISIBLE_DEVICES" != "NoDevFiles" ]; then
    n=$(printf '%s\n' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
  elif command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  case "$n" in
    '' | *[!0-9]*) n=0 ;;
  esac
  printf '%s\n' "$n"
}

# Sets DALI_NNODES, DALI_GPUS, DALI_NPROC_PER_NODE, DALI_WORLD_SIZE, DALI_CPUS_PER_TASK,
# DALI_ACCEL_CONFIG, DALI_MAIN_ADDR, DALI_MAIN_PORT and OMP_NUM_THREADS, all exported (srun
# passes the environment to every node). Private names on purpose: WORLD_SIZE, RANK,
# MASTER_ADDR... would be read by torch.distributed in every process srun starts.
# Inputs: GPUS_PER_NODE, NPROC_PER_NODE, CPU_PROCS_PER_NODE, CPUS_PER_TASK, ACCELERATE_CONFIG,
# MAIN_ADDR, MAIN_PORT.
dali_setup_topology() {
  DALI_NNODES=${SLURM_NNODES:-1}
  DALI_GPUS=$(dali_gpus_per_node)
  if [ "$DALI_GPUS" -gt 0 ]; then
    DALI_NPROC_PER_NODE=${NPROC_PER_NODE:-$DALI_GPUS}
    DALI_ACCEL_CONFIG=${ACCELERATE_CONFIG:-$DALI_REPO/launch/multi-node.yaml}
  else
    # CPU-only nodes: gloo, CPU_PROCS_PER_NODE processes per node.
    DALI_NPROC_PER_NODE=${NPROC_PER_NODE:-${CPU_PROCS_PER_NODE:-1}}
    DALI_ACCEL_CONFIG=${ACCELERATE_CONFIG:-$DALI_REPO/launch/cpu-multi-node.yaml}
  fi
  DALI_ACCEL_CONFIG=$(dali_abspath "$DALI_ACCEL_CONFIG")
  [ -f "$DALI_ACCEL_CONFIG" ] || dali_die "ACCELERATE_CONFIG=$DALI_ACCEL_CONFIG: no such file"
  # DeepSpeed runs are launched like DDP runs and select ZeRO in the run config: one
  # Accelerator cannot hold D and G+E as two DeepSpeed engines (launch/README.md).
  if grep -Eq '^distributed_type: *DEEPSPEED' "$DALI_ACCEL_CONFIG"; then
    dali_die "ACCELERATE_CONFIG=$DALI_ACCEL_CONFIG is an Accelerate DeepSpeed config: launch with the plain config and add --set train.strategy=zero2 to the training arguments (launch/README.md)"
  fi
  DALI_WORLD_SIZE=$((DALI_NNODES * DALI_NPROC_PER_NODE))
  # srun no longer inherits --cpus-per-task from sbatch (Slurm >= 22.05): pass it explicitly.
  DALI_CPUS_PER_TASK=${CPUS_PER_TASK:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}}
  if [ -z "${OMP_NUM_THREADS:-}" ]; then
    OMP_NUM_THREADS=$((DALI_CPUS_PER_TASK / DALI_NPROC_PER_NODE))
    [ "$OMP_NUM_THREADS" -ge 1 ] || OMP_NUM_THREADS=1
  fi
  # Rendezvous on the allocation's first node. Its NodeAddr is what other nodes can reach
  # (node names need not resolve: NodeAddr is the address Slurm itself uses).
  local first addr
  first=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n1)
  first=${first:-localhost}
  addr=$(scontrol show node -o "$first" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | head -n1 | cut -d= -f2)
  DALI_MAIN_ADDR=${MAIN_ADDR:-${addr:-$first}}
  # A port derived from the job id: jobs sharing a node do not collide; a requeued job
  # (same id) reuses its port, which its previous attempt has released.
  DALI_MAIN_PORT=${MAIN_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
  export DALI_NNODES DALI_GPUS DALI_NPROC_PER_NODE DALI_WORLD_SIZE DALI_CPUS_PER_TASK DALI_ACCEL_CONFIG \
    DALI_MAIN_ADDR DALI_MAIN_PORT OMP_NUM_THREADS
}

# ---------------------------------------------------------------------------------------
# Preflight: fail fast, with one line, before any process group exists
# ---------------------------------------------------------------------------------------

# Validates the config (the trainer's own --dry-run: unknown keys, bad values), the data
# directory, the run directory and the global batch against the world size. Sets DATASET.
dali_preflight() {
  local resolved
  resolved=$("$DALI_PYTHON" -m dali_dist.train "${TRAIN_ARGS[@]}" --dry-run 2>&1) || {
    printf '%s\n' "$resolved" | grep '^error: ' >&2 || printf 'error: %s\n' "$(printf '%s\n' "$resolved" | tail -n1)" >&2
    exit 2
  }
  local facts
  facts=$(printf '%s\n' "$resolved" | "$DALI_PYTHON" -c '
import sys, yaml
c = yaml.safe_load(sys.stdin)
print(c["data"]["dataset"]); print(c["data"].get("source") or ""); print(c["train"]["batch_size"])
') || dali_die "could not read the resolved config"
  DATASET=$(printf '%s\n' "$facts" | sed -n 1p)
  local source batch
  source=$(printf '%s\n' "$facts" | sed -n 2p)
  batch=$(printf '%s\n' "$facts" | sed -n 3p)
  if [ -z "$source" ] && [ "$DATASET" != grid2d ]; then
    dali_die "config ${CONFIG}: dataset $DATASET needs shards: set DATA=<dir made by 'dali-dist prep $DATASET'>"
  fi
  case "$source" in
    '' | *://* | *'{'* | pipe:*) ;;
    *) [ -e "$source" ] || dali_die "data directory $source does not exist (DATA=...)" ;;
  esac
  if [ $((batch % DALI_WORLD_SIZE)) -ne 0 ]; then
    dali_die "train.batch_size=$batch is global and must divide by the world size $DALI_WORLD_SIZE ($DALI_NNODES node(s) x $DALI_NPROC_PER_NODE process(es)); change --nodes or --set train.batch_size=..."
  fi
  if ! { mkdir -p "$RUN_DIR" && touch "$RUN_DIR/.writable" && rm -f "$RUN_DIR/.writable"; } 2>/dev/null; then
    dali_die "run directory $RUN_DIR is not writable"
  fi
}

# ---------------------------------------------------------------------------------------
# Signals and the training step
# ---------------------------------------------------------------------------------------

DALI_SIGNALLED=0
DALI_GOT_TERM=0

_dali_on_usr1() {
  DALI_SIGNALLED=1
  dali_log "USR1: asking the trainer to checkpoint and stop (touch $RUN_DIR/STOP)"
  touch "$RUN_DIR/STOP"
}

_dali_on_term() {
  DALI_SIGNALLED=1
  DALI_GOT_TERM=1
  dali_log "SIGTERM (preemption, time limit or scancel): the trainer checkpoints on it too"
  touch "$RUN_DIR/STOP"
}

dali_install_traps() {
  trap _dali_on_usr1 USR1
  trap _dali_on_term TERM
}

# Wait for a background pid; a trap interrupts `wait` (status > 128), so wait again.
dali_wait() {
  local pid=$1 rc
  while :; do
    DALI_SIGNALLED=0
    wait "$pid"
    rc=$?
    # Interrupted by a trap: bash still holds the step's status, the next wait returns it.
    if [ "$DALI_SIGNALLED" = 1 ] && [ "$rc" -gt 128 ]; then
      continue
    fi
    return "$rc"
  done
}

# The trainer's verdict for this attempt: 0, 75, or "none" (it never got to write one).
dali_exit_code() {
  local code
  code=$(tr -d "[:space:]" 2>/dev/null <"$RUN_DIR/exit_code")
  printf '%s\n' "${code:-none}"
}

# One training step over all nodes: one task per node, each running node_launch.sh, which
# starts `accelerate launch` with that node's rank.
dali_run_step() {
  rm -f "$RUN_DIR/exit_code"
  # shellcheck disable=SC2086  # SRUN_ARGS: extra srun options, split on spaces on purpose
  srun --nodes="$DALI_NNODES" --ntasks="$DALI_NNODES" --ntasks-per-node=1 --cpus-per-task="$DALI_CPUS_PER_TASK" \
    --kill-on-bad-exit=1 ${SRUN_ARGS:-} \
    bash "$DALI_SLURM_DIR/node_launch.sh" "${TRAIN_ARGS[@]}" --resume auto </dev/null &
  local pid=$!
  dali_wait "$pid"
  local rc=$?
  dali_log "step ended: srun exit $rc, trainer exit_code $(dali_exit_code)"
  return "$rc"
}

# ---------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------

# Variables -> TRAIN_ARGS (the trainer's command line) and RUN_DIR. Script arguments are
# appended to the trainer's command line (e.g. --set train.steps=2000).
dali_setup_train_args() {
  [ -n "${CONFIG:-}" ] || dali_die "CONFIG is not set (a preset: grid2d, mnist, cifar10, celeba; or a YAML file)"
  [ -f "$CONFIG" ] && CONFIG=$(dali_abspath "$CONFIG")
  local name
  name=$(basename "$CONFIG" .yaml)
  name=${NAME:-$name}
  RUNS_ROOT=$(dali_abspath "${RUNS_ROOT:-runs}")
  if [ "${SMOKE:-0}" = 1 ]; then
    RUN_DIR=${RUN_DIR:-$RUNS_ROOT/$name-smoke-${SLURM_JOB_ID:-local}}
  else
    RUN_DIR=${RUN_DIR:-$RUNS_ROOT/$name-${SLURM_JOB_ID:-local}}
  fi
  RUN_DIR=$(dali_abspath "$RUN_DIR")
  TRAIN_ARGS=(--config "$CONFIG" --run-dir "$RUN_DIR")
  if [ -n "${DATA:-}" ]; then
    case "$DATA" in
      *://* | *'{'* | pipe:*) TRAIN_ARGS+=(--data "$DATA") ;;
      *) TRAIN_ARGS+=(--data "$(dali_abspath "$DATA")") ;;
    esac
  fi
  [ -n "${TRACKING_URI:-}" ] && TRAIN_ARGS+=(--tracking-uri "$TRACKING_URI")
  local s
  # SETS: space-separated overrides, e.g. SETS="train.steps=2000 model.width=32"
  for s in ${SETS:-}; do TRAIN_ARGS+=(--set "$s"); done
  TRAIN_ARGS+=("$@")
  export RUN_DIR
}

dali_banner() {
  dali_log "job ${SLURM_JOB_ID:-?} attempt $((${SLURM_RESTART_COUNT:-0} + 1)) on ${SLURM_JOB_NODELIST:-?}: $DALI_NNODES node(s) x $DALI_NPROC_PER_NODE process(es) = world size $DALI_WORLD_SIZE ($([ "$DALI_GPUS" -gt 0 ] && echo "$DALI_GPUS GPU(s)/node" || echo "CPU, gloo"))"
  dali_log "rendezvous $DALI_MAIN_ADDR:$DALI_MAIN_PORT, launch config $DALI_ACCEL_CONFIG, $DALI_CPUS_PER_TASK CPU(s)/node, OMP_NUM_THREADS=$OMP_NUM_THREADS"
  dali_log "run dir $RUN_DIR; python $DALI_PYTHON"
  if [ -n "${TRACKING_URI:-${MLFLOW_TRACKING_URI:-}}" ]; then
    dali_log "MLflow: $(dali_redact_uri "${TRACKING_URI:-$MLFLOW_TRACKING_URI}")"
  else
    dali_log "MLflow: SQLite at $(dirname "$RUN_DIR")/mlflow.db (unsafe on a shared file system for concurrent jobs: set TRACKING_URI=http://host:5000)"
  fi
}

# The whole training job. Arguments are extra trainer arguments.
dali_train_job() {
  dali_setup_env
  dali_setup_topology
  dali_setup_train_args "$@"
  dali_banner
  dali_preflight
  # A STOP left behind by an earlier attempt would stop this one at its first step.
  rm -f "$RUN_DIR/STOP"
  dali_install_traps
  if [ "${SMOKE:-0}" = 1 ]; then
    dali_smoke
    return
  fi

  dali_run_step
  local rc=$? code
  code=$(dali_exit_code)
  rm -f "$RUN_DIR/STOP"
  case "$code" in
    0)
      if [ "$rc" -ne 0 ]; then
        dali_log "warning: srun exited $rc although the trainer recorded 0 after its final checkpoint: a process failed while shutting down (see above)"
      fi
      dali_log "training finished"
      exit 0
      ;;
    "$DALI_EXIT_REQUEUE")
      local restarts=${SLURM_RESTART_COUNT:-0} max=${MAX_REQUEUES:-20}
      if [ "$DALI_GOT_TERM" = 1 ]; then
        dali_log "stopped by SIGTERM after a checkpoint: not requeueing (Slurm requeues a preempted --requeue job itself; after a time limit resubmit with RUN_DIR=$RUN_DIR, or raise the --signal lead)"
        exit "$DALI_EXIT_REQUEUE"
      fi
      if [ -e "$RUN_DIR/NO_REQUEUE" ]; then
        dali_log "stopped after a checkpoint; $RUN_DIR/NO_REQUEUE exists: not requeueing"
        exit "$DALI_EXIT_REQUEUE"
      fi
      if [ "$restarts" -ge "$max" ]; then
        dali_log "stopped after a checkpoint; already requeued $restarts time(s) (MAX_REQUEUES=$max): not requeueing; resubmit with RUN_DIR=$RUN_DIR"
        exit "$DALI_EXIT_REQUEUE"
      fi
      dali_log "stopped after a checkpoint: requeueing job $SLURM_JOB_ID (requeue $((restarts + 1)) of at most $max)"
      # Slurm ends this shell as soon as the requeue is accepted: nothing may follow it.
      scontrol requeue "$SLURM_JOB_ID" || dali_die "scontrol requeue $SLURM_JOB_ID failed; resubmit with RUN_DIR=$RUN_DIR" "$DALI_EXIT_REQUEUE"
      exit 0
      ;;
    *)
      dali_die "training failed (srun exit $rc, no exit_code from the trainer; see the messages above)" 1
      ;;
  esac
}

# Metrics for a dataset (METRICS overrides).
dali_default_metrics() {
  case "$1" in
    grid2d) echo modes ;;
    mnist) echo fid,is,mse ;;
    cifar10) echo fid,is,mse ;;
    *) echo fid,mse ;;
  esac
}

# Keep the metrics this version of `dali-dist evaluate` offers; print them comma-separated.
dali_available_metrics() {
  "$DALI_PYTHON" - "$1" <<'PY'
import sys
from dali_dist.evaluate import METRICS
wanted = [m for m in sys.argv[1].split(",") if m]
missing = [m for m in wanted if m not in METRICS]
if missing:
    print(f"[dali-slurm] metric(s) {','.join(missing)} not in this version of dali-dist evaluate: skipped", file=sys.stderr)
print(",".join(m for m in wanted if m in METRICS))
PY
}

# SMOKE=1: ~SMOKE_STEPS steps on all nodes, a stop, a resume, an evaluation on 1k samples.
dali_smoke() {
  local steps=${SMOKE_STEPS:-50} code
  TRAIN_ARGS+=(--set "train.steps=$steps" --set train.checkpoint_every=10 --set train.log_every=5)
  dali_log "SMOKE: part 1/3: train with RUN_DIR/STOP present (stop at the first stop poll, as a signal would: step 1 for one process, step 10 for several)"
  touch "$RUN_DIR/STOP"
  dali_run_step
  code=$(dali_exit_code)
  [ "$code" = "$DALI_EXIT_REQUEUE" ] || dali_die "SMOKE FAILED: the stopped run recorded exit_code $code, expected $DALI_EXIT_REQUEUE" 1
  compgen -G "$RUN_DIR/checkpoints/step-*" >/dev/null || dali_die "SMOKE FAILED: no checkpoint after the stop" 1
  rm -f "$RUN_DIR/STOP"
  dali_log "SMOKE: part 2/3: resume to step $steps"
  dali_run_step
  code=$(dali_exit_code)
  [ "$code" = 0 ] || dali_die "SMOKE FAILED: the resumed run recorded exit_code $code, expected 0" 1
  [ -d "$RUN_DIR/checkpoints/step-$steps" ] || dali_die "SMOKE FAILED: no checkpoint step-$steps" 1
  local metrics num=${SMOKE_SAMPLES:-1000}
  metrics=$(dali_available_metrics "${METRICS:-$(dali_default_metrics "$DATASET")}")
  local evaluate=(srun --nodes=1 --ntasks=1 --cpus-per-task="$DALI_CPUS_PER_TASK" "$DALI_PYTHON")
  if [ -n "$metrics" ]; then
    dali_log "SMOKE: part 3/3: evaluate $metrics on $num samples"
    "${evaluate[@]}" -m dali_dist.evaluate --run-dir "$RUN_DIR" --metrics "$metrics" --num-samples "$num" \
      --out "$RUN_DIR/smoke-metrics.json" --overwrite || dali_die "SMOKE FAILED: evaluation failed" 1
  else
    dali_log "SMOKE: part 3/3: no metric for $DATASET in this version: generate $num samples instead"
    "${evaluate[@]}" -m dali_dist.cli sample --run-dir "$RUN_DIR" --num "$num" --out "$RUN_DIR/smoke-samples.npy" --overwrite \
      || dali_die "SMOKE FAILED: sampling failed" 1
  fi
  dali_log "SMOKE OK: $DALI_WORLD_SIZE process(es) on $DALI_NNODES node(s) trained, stopped, resumed and were evaluated; run dir $RUN_DIR"
}

# ---------------------------------------------------------------------------------------
# Evaluation job (slurm/eval.sbatch)
# ---------------------------------------------------------------------------------------

# State of the training job, or "gone" once Slurm has forgotten it.
dali_job_state() {
  local st
  st=$(scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[^ ]*' | cut -d= -f2)
  printf '%s\n' "${st:-gone}"
}

dali_job_is_over() {
  case "$(dali_job_state "$1")" in
    gone | COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE) return 0 ;;
    *) return 1 ;;
  esac
}

dali_eval_job() {
  EVAL_ARGS=("$@")
  dali_setup_env
  DALI_CPUS_PER_TASK=${CPUS_PER_TASK:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}}
  local watch=${WATCH:-0} interval=${WATCH_INTERVAL:-60}
  # Which run: RUN_DIR, or the training job's id (its run dir is RUNS_ROOT/<name>-<id>).
  if [ -z "${RUN_DIR:-}" ]; then
    [ -n "${TRAIN_JOB_ID:-}" ] || dali_die "set RUN_DIR=<run dir> or TRAIN_JOB_ID=<training job id>"
    RUNS_ROOT=$(dali_abspath "${RUNS_ROOT:-runs}")
    local found=()
    while :; do
      found=()
      for d in "$RUNS_ROOT"/*-"$TRAIN_JOB_ID"; do [ -d "$d" ] && found+=("$d"); done
      [ "${#found[@]}" -gt 0 ] || [ "$watch" != 1 ] || dali_job_is_over "$TRAIN_JOB_ID" || { sleep "$interval"; continue; }
      break
    done
    [ "${#found[@]}" -eq 1 ] || dali_die "TRAIN_JOB_ID=$TRAIN_JOB_ID: expected one run dir $RUNS_ROOT/*-$TRAIN_JOB_ID, found ${#found[@]} (set RUN_DIR)"
    RUN_DIR=${found[0]}
  fi
  RUN_DIR=$(dali_abspath "$RUN_DIR")
  # The training job to follow in watch mode: TRAIN_JOB_ID, else the run dir's -<job id>.
  local train_job=${TRAIN_JOB_ID:-}
  if [ -z "$train_job" ] && [[ "$RUN_DIR" =~ -([0-9]+)/?$ ]]; then
    train_job=${BASH_REMATCH[1]}
  fi
  if [ "$watch" = 1 ]; then
    while [ ! -f "$RUN_DIR/config.yaml" ]; do
      if [ -n "$train_job" ] && dali_job_is_over "$train_job"; then
        dali_die "training job $train_job ended without creating $RUN_DIR/config.yaml" 1
      fi
      sleep "$interval"
    done
  fi
  [ -f "$RUN_DIR/config.yaml" ] || dali_die "$RUN_DIR: not a run directory (no config.yaml)"
  local dataset
  dataset=$("$DALI_PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["dataset"])' "$RUN_DIR/config.yaml") \
    || dali_die "$RUN_DIR/config.yaml: unreadable"
  EVAL_METRICS=${METRICS:-$(dali_default_metrics "$dataset")}
  [ -n "${TRACKING_URI:-}" ] && export MLFLOW_TRACKING_URI="$TRACKING_URI"
  dali_log "eval job ${SLURM_JOB_ID:-?}: run dir $RUN_DIR, metrics $EVAL_METRICS, $([ "$watch" = 1 ] && echo "watching${train_job:+ training job $train_job} every ${interval}s" || echo "newest checkpoint")"

  # dali-dist evaluate does the work: one record per checkpoint in RUN_DIR/eval/ (a requeued
  # job skips what is recorded), RUN_DIR/metrics.json the newest (with the history when watching).
  local args=(--run-dir "$RUN_DIR" --metrics "$EVAL_METRICS" --out "$RUN_DIR/metrics.json" --overwrite)
  [ -n "${NUM_SAMPLES:-}" ] && args+=(--num-samples "$NUM_SAMPLES")
  [ -n "${DATA:-}" ] && args+=(--data "$DATA")
  if [ "$watch" = 1 ]; then
    args+=(--watch --watch-interval "$interval")
    [ -n "$train_job" ] && args+=(--slurm-job "$train_job")
  fi
  # shellcheck disable=SC2086  # SRUN_ARGS: extra srun options, split on spaces on purpose
  srun --nodes=1 --ntasks=1 --cpus-per-task="$DALI_CPUS_PER_TASK" ${SRUN_ARGS:-} \
    "$DALI_PYTHON" -m dali_dist.evaluate "${args[@]}" "${EVAL_ARGS[@]}" </dev/null \
    || dali_die "evaluation failed (see above)" 1
  local step
  step=$("$DALI_PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$RUN_DIR/metrics.json" 2>/dev/null) \
    || dali_die "$RUN_DIR/metrics.json: not written" 1
  dali_log "metrics of the newest evaluated checkpoint (step $step): $RUN_DIR/metrics.json"
}

# ---------------------------------------------------------------------------------------
# Data preparation job (slurm/prep.sbatch)
# ---------------------------------------------------------------------------------------

dali_prep_job() {
  dali_setup_env
  DALI_CPUS_PER_TASK=${CPUS_PER_TASK:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}}
  [ -n "${DATASET:-}" ] || dali_die "set DATASET=celeba|cifar10|mnist|folder|grid2d"
  [ -n "${OUT:-}" ] || dali_die "set OUT=<shard directory to write>"
  local args=("$DATASET")
  if [ -n "${SOURCE:-}" ]; then
    [ -e "$SOURCE" ] || [ "${DOWNLOAD:-0}" = 1 ] || dali_die "SOURCE=$SOURCE does not exist"
    args+=(--source "$(dali_abspath "$SOURCE")")
  elif [ "$DATASET" != grid2d ]; then
    dali_die "set SOURCE=<the downloaded archive or folder> for $DATASET"
  fi
  [ "${DOWNLOAD:-0}" = 1 ] && args+=(--download)
  OUT=$(dali_abspath "$OUT")
  args+=(--out "$OUT" --workers "${WORKERS:-$DALI_CPUS_PER_TASK}" --quiet "$@")
  dali_log "prep job ${SLURM_JOB_ID:-?}: dali-dist prep ${args[*]}"
  srun --nodes=1 --ntasks=1 --cpus-per-task="$DALI_CPUS_PER_TASK" "$DALI_PYTHON" -m dali_dist.cli prep "${args[@]}" \
    || dali_die "prep failed (see above)" 1
  srun --nodes=1 --ntasks=1 --cpus-per-task="$DALI_CPUS_PER_TASK" "$DALI_PYTHON" -m dali_dist.cli prep verify "$OUT" --quiet \
    || dali_die "verify failed: $OUT" 1
  dali_log "shards ready: DATA=$OUT"
}
