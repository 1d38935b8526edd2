"""The cluster scripts (slurm/) and launch configs (launch/), tested on a real Slurm.

The Slurm tests start a private two-node cluster on this machine (tests/slurm_harness:
munged, slurmctld and two slurmd from Debian's Slurm 22.05, on loopback, stopped by PID at
the end) and submit the real sbatch scripts with tiny CPU overrides:
  * prep.sbatch makes tiny CelebA shards; SMOKE=1 celeba.sbatch, chained after it, runs on
    2 nodes: world size 2, a stop, a resume, an evaluation, one MLflow run;
  * train.sbatch (grid2d) on 2 nodes, signalled mid-run like a time limit: it checkpoints,
    requeues itself, resumes from that checkpoint in the same run dir and MLflow run, and
    finishes; eval.sbatch chained with --dependency=afterok and one watching alongside;
  * bad input fails fast with one line before any process group exists.
They skip (with the reason) only when Slurm cannot be installed or started. CI installs it:
    apt-get install -y slurmctld slurmd slurm-client munge shellcheck
About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.slurm_harness.cluster import SlurmCluster, SlurmUnavailable, _free_ports

SLURM_DIR = REPO / "slurm"
SHELL_FILES = sorted(SLURM_DIR.glob("*.sbatch")) + [SLURM_DIR / "common.sh", SLURM_DIR / "node_launch.sh"]
TRAIN_SCRIPTS = [SLURM_DIR / n for n in ("celeba.sbatch", "cifar10.sbatch", "train.sbatch")]
TINY_GRID = ("model.g_hidden=[32,32] model.g_norm=batch model.d_hidden=[32,32] model.e_hidden=[16] "
             "train.batch_size=64 train.sample_every=0 eval.num_samples=500")
TINY_CELEBA = ("model.width=8 model.latent_dim=8 train.batch_size=8 data.num_workers=0 "
               "train.sample_every=0")


# ------------------------------------------------------------------------------------------
# Static checks (fast)
# ------------------------------------------------------------------------------------------


def test_scripts_parse_and_pass_shellcheck():
    for f in SHELL_FILES:
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, f"{f}: {r.stderr}"
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck): bash -n passed")
    r = subprocess.run(["shellcheck", "-x", "-P", "SCRIPTDIR/..", *map(str, SHELL_FILES)],
                       capture_output=True, text=True, cwd=SLURM_DIR)
    assert r.returncode == 0, r.stdout[-4000:]


@pytest.mark.parametrize("script", TRAIN_SCRIPTS, ids=lambda p: p.name)
def test_training_scripts_carry_the_requeue_options(script):
    text = script.read_text()
    for opt in ("#SBATCH --signal=B:USR1@", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task="):
        assert opt in text, f"{script.name}: no {opt}"


def test_launch_configs_are_valid_for_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    expected = {
        "single-gpu.yaml": DistributedType.NO, "single-node.yaml": DistributedType.MULTI_GPU,
        "multi-node.yaml": DistributedType.MULTI_GPU, "cpu-multi-node.yaml": DistributedType.MULTI_GPU,
        "cpu-2proc.yaml": DistributedType.MULTI_GPU,
    }
    for name, kind in expected.items():
        cfg = load_config_from_file(str(REPO / "launch" / name))  # unknown keys raise here
        assert cfg.distributed_type == kind, name
    multi = load_config_from_file(str(REPO / "launch/multi-node.yaml"))
    assert multi.rdzv_backend == "static" and multi.same_network and not multi.use_cpu
    assert load_config_from_file(str(REPO / "launch/cpu-multi-node.yaml")).use_cpu


# ------------------------------------------------------------------------------------------
# A real Slurm cluster
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"), nodes=2, cpus_per_node=2)
    try:
        c.start()
    except SlurmUnavailable as exc:
        c.stop()
        pytest.skip(f"cannot run a local Slurm here: {exc}")
    yield c
    c.stop()


def job_env(tmp: Path, **extra) -> dict:
    """Environment for sbatch (exported into the job): the test's Python, a private runs root."""
    env = {"RUNS_ROOT": str(tmp / "runs"), "OMP_NUM_THREADS": "1", "MAIN_PORT": str(_free_ports(1)[0]),
           "DALI_REPO": str(REPO)}
    if (Path(sys.prefix) / "bin/activate").is_file():
        env["VENV"] = sys.prefix
    else:
        env["ENV_SETUP"] = f"export PATH={Path(sys.executable).parent}:$PATH"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def submit(cluster: SlurmCluster, tmp: Path, script: str, *options: str, env: dict, args: tuple = ()) -> int:
    return cluster.sbatch(
        SLURM_DIR / script, f"--chdir={tmp}", f"--output={tmp}/%x-%j.out", "--gpus-per-node=0",
        "--cpus-per-task=1", "--time=10", *options, env=env, args=args,
    )


def job_log(tmp: Path, name: str, job_id: int) -> str:
    f = tmp / f"{name}-{job_id}.out"
    return f.read_text(errors="replace").replace("\r", "\n") if f.exists() else ""


def mlflow_run(runs: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    return client, client.get_run(run_id)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_prep_then_celeba_smoke_on_two_nodes(cluster, tmp_path):
    from tests import _archives as A

    # a tiny CelebA download in the official format -> shards, by prep.sbatch
    src = A.make_celeba(tmp_path / "download", A.celeba_images(24))
    data = tmp_path / "celeba64"
    prep = submit(cluster, tmp_path, "prep.sbatch", env=job_env(tmp_path, DATASET="celeba", SOURCE=src, OUT=data))
    # the smoke run waits for it: ~50 steps on 2 nodes, a stop, a resume, an evaluation;
    # mse needs only the test split (fid would need Inception weights, absent here)
    env = job_env(tmp_path, SMOKE=1, DATA=data, SETS=TINY_CELEBA, METRICS="mse")
    job = submit(cluster, tmp_path, "celeba.sbatch", "--nodes=2", f"--dependency=afterok:{prep}", env=env)
    info = cluster.wait(prep, 180)
    assert info["JobState"] == "COMPLETED", job_log(tmp_path, "dali-prep", prep)[-3000:]
    assert (data / "manifest.json").is_file() and f"shards ready: DATA={data}" in job_log(tmp_path, "dali-prep", prep)
    info = cluster.wait(job, 360)
    log = job_log(tmp_path, "dali-celeba", job)
    assert info["JobState"] == "COMPLETED", log[-4000:]

    # one launcher per node, each with its own rank, both meeting at the first node's address
    for rank in (0, 1):
        assert f"--num_machines 2 --machine_rank {rank} --num_processes 2 --main_process_ip 127.0.0.1" in log
    assert "world size 2" in log and "2 process(es)" in log
    run_dir = tmp_path / "runs" / f"celeba-smoke-{job}"
    # several processes poll the stop request every 10 steps (train.STOP_POLL_EVERY), together
    assert f"resumed from {run_dir}/checkpoints/step-10 at step 10" in log
    assert "SMOKE OK" in log
    assert (run_dir / "checkpoints/step-50/train_state.json").is_file()
    assert (run_dir / "exit_code").read_text().strip() == "0"
    if (run_dir / "smoke-metrics.json").exists():
        metrics = json.loads((run_dir / "smoke-metrics.json").read_text())
        assert metrics["step"] == 50 and "mse" in metrics
    else:  # an evaluate without the metric: the smoke generates 1k samples instead
        import numpy as np

        assert "not in this version of dali-dist evaluate" in log
        assert np.load(run_dir / "smoke-samples.npy").shape == (1000, 64, 64, 3)

    # one MLflow run across the stop and the resume, from a world of 2
    client, run = mlflow_run(tmp_path / "runs", (run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2" and run.data.tags["slurm_job_id"] == str(job)
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss_d")}
    assert 10 in steps and 50 in steps  # the stop tick (step 10) and the last


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_signal_checkpoint_requeue_resume_same_run_then_evaluate(cluster, tmp_path):
    steps = 600
    sets = f"{TINY_GRID} train.steps={steps} train.checkpoint_every=100 train.log_every=10"
    env = job_env(tmp_path, CONFIG="grid2d", SETS=sets)
    job = submit(cluster, tmp_path, "train.sbatch", "--nodes=2", env=env)
    run_dir = tmp_path / "runs" / f"grid2d-{job}"
    # evaluation after the job (must wait through its requeue) and one watching alongside
    eval_after = submit(cluster, tmp_path, "eval.sbatch", f"--dependency=afterok:{job}",
                        env=job_env(tmp_path, RUN_DIR=run_dir))
    watcher = submit(cluster, tmp_path, "eval.sbatch", env=job_env(tmp_path, WATCH=1, WATCH_INTERVAL=2, TRAIN_JOB_ID=job))

    # mid-run, signal the batch shell only, as `--signal=B:USR1@lead` does before a time limit
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints/step-100").is_dir():
        info = cluster.job(job)
        assert info.get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), job_log(tmp_path, "dali-train", job)[-4000:]
        assert time.monotonic() < deadline, "no checkpoint step-100 within 240 s"
        time.sleep(0.3)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])

    # the stop must end the step within seconds (every rank checkpoints at the same step)
    deadline = time.monotonic() + 120
    while "trainer exit_code" not in job_log(tmp_path, "dali-train", job):
        assert time.monotonic() < deadline, (
            "the training step did not end within 120 s of the stop request: if one rank is in "
            "checkpoint()'s gather and another in the next step's backward, the ranks disagreed "
            "on the step at which to stop (RUN_DIR/STOP seen at different steps)")
        time.sleep(0.5)
    info = cluster.wait(job, 360)
    log = job_log(tmp_path, "dali-train", job)
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert int(info["Restarts"]) == 1, log[-4000:]
    assert "USR1: asking the trainer to checkpoint and stop" in log
    assert "trainer exit_code 75" in log and "requeueing job" in log
    assert f"job {job} attempt 2 on" in log
    # the requeued job resumed, in the same run dir, from the checkpoint the stop wrote
    resumed = [line for line in log.splitlines() if line.startswith("resumed from ")]
    assert resumed, log[-4000:]
    stop_step = int(resumed[0].rsplit(" ", 1)[1])
    assert resumed[0].startswith(f"resumed from {run_dir}/checkpoints/step-{stop_step} ")
    assert 100 <= stop_step < steps
    assert f"stop requested: checkpointed step {stop_step}, exiting 75" in log
    assert (run_dir / "exit_code").read_text().strip() == "0"
    assert (run_dir / f"checkpoints/step-{steps}/train_state.json").is_file()
    assert not (run_dir / "STOP").exists()
    # ... and logged to the same MLflow run, before and after the requeue
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id
    client, run = mlflow_run(tmp_path / "runs", run_id)
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    logged = sorted(m.step for m in client.get_metric_history(run_id, "loss_d"))
    assert logged[0] <= 100 and stop_step in logged and logged[-1] == steps

    # chained evaluation: ran after the training job completed, attached to the same run
    info = cluster.wait(eval_after, 180)
    assert info["JobState"] == "COMPLETED", job_log(tmp_path, "dali-eval", eval_after)[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == steps and 0 <= metrics["modes_captured"] <= 25
    assert metrics["mlflow_run_id"] == run_id
    _, run = mlflow_run(tmp_path / "runs", run_id)
    assert "eval/modes_captured" in run.data.metrics

    # the watcher evaluated checkpoints while training ran, and stopped by itself at the end
    info = cluster.wait(watcher, 180)
    wlog = job_log(tmp_path, "dali-eval", watcher)
    assert info["JobState"] == "COMPLETED", wlog[-3000:]
    assert f"watching training job {job}" in wlog
    assert f"metrics of the newest evaluated checkpoint (step {steps})" in wlog, wlog[-3000:]
    evaluated = sorted(int(p.stem.split("-")[1]) for p in (run_dir / "eval").glob("step-*.json"))
    assert steps in evaluated and len(evaluated) >= 2, evaluated


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bad_input_fails_fast_with_one_line(cluster, tmp_path):
    cases = {
        "missing data": ("celeba.sbatch", ["--nodes=1"], {"DATA": tmp_path / "nowhere"},
                         "error: data directory"),
        "batch vs nodes": ("train.sbatch", ["--nodes=2"], {"CONFIG": "grid2d", "SETS": "train.batch_size=7"},
                           "error: train.batch_size=7 is global and must divide by the world size 2"),
        "unknown config": ("train.sbatch", ["--nodes=1"], {"CONFIG": "no-such-preset"}, "error: "),
        "run dir not writable": ("train.sbatch", ["--nodes=1"], {"CONFIG": "grid2d", "RUN_DIR": "/proc/dali-run"},
                                 "error: run directory /proc/dali-run is not writable"),
    }
    jobs = {}
    for name, (script, opts, extra, _) in cases.items():
        jobs[name] = submit(cluster, tmp_path, script, *opts, env=job_env(tmp_path, **extra))
    for name, (script, _, _, message) in cases.items():
        info = cluster.wait(jobs[name], 120)
        log = job_log(tmp_path, "dali-" + script.split(".")[0], jobs[name])
        assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", (name, log)
        errors = [line for line in log.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(message), (name, log)
        assert "accelerate launch" not in log and int(info.get("Restarts", 0)) == 0, (name, log)
