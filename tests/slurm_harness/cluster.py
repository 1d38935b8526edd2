"""A private Slurm cluster on this machine, for testing slurm/*.sbatch for real.

Debian's Slurm 22.05 (packages slurmctld, slurmd, slurm-client, munge) with:
  * munged with its own key and socket (Slurm finds it through AuthInfo=socket=...);
  * slurmctld on 127.0.0.1 and one slurmd per virtual node (node1, node2, ...), all with
    NodeHostname=localhost NodeAddr=127.0.0.1 and a port each, started as `slurmd -N nodeX`
    (this Debian build supports several slurmd on one host);
  * ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no cgroups needed);
  * JobRequeue=1; cred_expire=5 (a requeued job may restart after 6 s instead of 121 s) and
    sched_interval=2 (the main scheduler looks at pending jobs every 2 s instead of 60 s);
  * no accounting: job state comes from `scontrol show job` (kept MinJobAge=600 s after
    the job ends); poll it rather than `sbatch --wait`, which backs off to 32 s.
Every daemon runs in the foreground as a child of this process and is stopped by its PID.

    python -m tests.slurm_harness.cluster DIR     # start one by hand; Ctrl-C stops it
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo", "munged", "mungekey"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed or started here (the tests skip with this reason)."""


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def ensure_installed(timeout: float = 400) -> None:
    """apt-get install the Debian packages when a binary is missing (needs root and apt)."""
    if not missing_binaries():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"missing {', '.join(missing_binaries())}; install as root: "
                               f"apt-get install -y {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"{' '.join(cmd)} did not finish within {timeout:.0f} s") from None
        if r.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    if missing_binaries():
        raise SlurmUnavailable(f"still missing after apt-get install: {', '.join(missing_binaries())}")


def _bin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, root: Path, nodes: int = 2, cpus_per_node: int = 2):
        self.root = Path(root).resolve()
        self.nodes = [f"node{i + 1}" for i in range(nodes)]
        self.cpus = cpus_per_node
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # Slurm reads these from the environment before its config: a job's own variables
        # (when the tests themselves run inside a Slurm job) must not leak into sbatch.
        for k in list(self.env):
            if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF":
                del self.env[k]

    # -- start / stop ----------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "SlurmCluster":
        ensure_installed()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged wants the socket's directories searchable
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(exist_ok=True)
        key = self.root / "munge.key"
        if not key.exists():
            r = subprocess.run([_bin("mungekey"), "--create", f"--keyfile={key}"], capture_output=True, text=True)
            if r.returncode != 0:
                raise SlurmUnavailable(f"mungekey failed: {r.stderr.strip()}")
        os.chmod(key, 0o600)
        self.munge_socket = self.root / "munge.sock"
        self._spawn("munged", [
            _bin("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={self.root / 'munged.pid'}", f"--log-file={self.root / 'log/munged.log'}",
            f"--seed-file={self.root / 'munged.seed'}",
        ])
        self._wait_for(lambda: self.munge_socket.exists(), 10, "munged did not create its socket")
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        self._write_conf(ctld_port, node_ports)
        self._spawn("slurmctld", [_bin("slurmctld"), "-D", "-f", str(self.conf)])
        self._wait_for(lambda: self.run(["scontrol", "ping"], check=False).stdout.count("UP") > 0, timeout,
                       "slurmctld did not answer `scontrol ping`")
        for node in self.nodes:
            (self.root / "spool" / node).mkdir(exist_ok=True)
            self._spawn(f"slurmd-{node}", [_bin("slurmd"), "-D", "-f", str(self.conf), "-N", node])

        def all_idle() -> bool:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(n, "").startswith("idle") for n in self.nodes)

        self._wait_for(all_idle, timeout, "the nodes did not become idle")
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        # Own process group: a Ctrl-C in the terminal does not reach the daemons directly.
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=self.root, start_new_session=True)
        log.close()

    def _wait_for(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with {p.returncode}: {self.log_tail(name)}")
            if cond():
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"{what} within {timeout:.0f} s: {self.log_tail('slurmctld')}")

    def log_tail(self, name: str, n: int = 1500) -> str:
        texts = []
        for f in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if f.exists():
                texts.append(f.read_text(errors="replace")[-n:])
        return "\n".join(texts).strip()

    def _write_conf(self, ctld_port: int, node_ports: list[int]) -> None:
        host = socket.gethostname().split(".")[0]
        r = self.root
        lines = [
            "ClusterName=dalitest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={node_ports[0]}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'spool'}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'log/slurmctld.log'}",
            f"SlurmdLogFile={r / 'log'}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobRequeue=1",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=batch_sched_delay=0,sched_interval=2",
            "ReturnToService=2",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MailProg=/bin/true",
            "KillWait=10",
            "MinJobAge=600",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
        ]
        for node, port in zip(self.nodes, node_ports):
            lines.append(f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                         f"CPUs={self.cpus} RealMemory=1000 State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        """Cancel every job, wait for them to leave the nodes, stop each daemon by its PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--partition=debug"], check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                out = self.run(["squeue", "-h", "-t", "RUNNING,COMPLETING,CONFIGURING"], check=False)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.5)
        order = [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- client commands -------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, env: Optional[dict] = None, timeout: float = 60):
        r = subprocess.run(cmd, capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def sbatch(self, script: Path, *options: str, env: Optional[dict] = None, args: tuple = ()) -> int:
        r = self.run(["sbatch", "--parsable", *options, str(script), *args], env=env)
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, Restarts, StartTime, ...); {} when gone."""
        r = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if r.returncode != 0:
            return {}
        return dict(re.findall(r"(\w[\w:/]*)=(\S*)", r.stdout))

    def wait(self, job_id: int, timeout: float, until=None) -> dict[str, str]:
        """Poll until the job ends (or `until(info)` holds); returns its last info."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if until(info) if until else info.get("JobState") in TERMINAL:
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s")
            time.sleep(0.5)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dali-slurm")
    with SlurmCluster(root) as c:
        print(f"cluster up: export SLURM_CONF={c.conf}   (Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
