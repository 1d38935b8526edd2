"""MLflow tracking from the main process only, through a bounded background queue.

The MLflow client retries a dead server for minutes; if the training loop called it
directly, the other ranks would sit in their next all-reduce meanwhile. So the loop only
enqueues, and a worker thread talks to MLflow. When the queue is full the oldest points are
dropped (the newest are the ones worth keeping) and a warning says how many.

Where runs go: ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store at
``<parent of RUN_DIR>/mlflow.db`` with artifacts beside it in ``mlartifacts/``. SQLite on a
shared file system is unsafe for concurrent jobs: clusters should point at a server.

The run id is written to ``RUN_DIR/mlflow_run_id`` as soon as the run exists, so a resumed
or requeued job (even one stopped before its first checkpoint) logs to the same run.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from .errors import UserError

QUEUE_SIZE = 10_000
RUN_ID_FILE = "mlflow_run_id"
# Environment variables whose values are credentials; any value they hold is masked in what
# goes to MLflow or into messages, wherever it turns up (a URL, a pipe: command, a path).
_SECRET_ENV = re.compile(r"SECRET|PASSW|TOKEN|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|AUTH|SESSION", re.I)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:[\w.-]*(?:token|secret|passw|key|signature|sig|auth|credential)[\w.-]*)=)[^&#\s]+", re.I)
_SECRET_FLAG = re.compile(r"(?P<flag>(?:^|\s)(?:-u|--user|--password|--header|-H)\s+)(?:\"[^\"]*\"|'[^']*'|\S+)")


def redact(text: str) -> str:
    """``text`` without credentials: URL userinfo (``user:pass@``), secret-looking query
    values, curl's ``-u``/``-H`` arguments, and the values of secret environment variables."""
    text = _USERINFO.sub(r"\g<scheme>***@", str(text))
    text = _SECRET_QUERY.sub(r"\g<key>***", text)
    text = _SECRET_FLAG.sub(r"\g<flag>***", text)
    for name, value in os.environ.items():
        if len(value) >= 6 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, "***")
    return text


def resolve_uri(configured: Optional[str], run_dir: Path) -> tuple[str, Optional[Path]]:
    """(tracking URI, local artifact root or None when the server decides). A URI someone gave
    is checked first: MLflow answers a bad one with a traceback, or makes a folder in the cwd."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_uri(uri, "tracking.uri" if configured else "MLFLOW_TRACKING_URI")
        return uri, None
    root = Path(run_dir).resolve().parent
    return f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts"


_DB_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores, with an optional +driver
_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_uri(uri: str, where: str = "tracking.uri") -> None:
    """One line unless ``uri`` is a store MLflow can open: sqlite:///FILE, http(s)://HOST,
    a database URL, databricks (a file store only with MLFLOW_ALLOW_FILE_STORE=true)."""
    bad = lambda why: UserError(f"{where} {redact(uri)!r}: {why}")  # noqa: E731
    try:
        parts = urllib.parse.urlsplit(str(uri).strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise bad(f"not a valid URI ({exc})") from None
    scheme = parts.scheme.lower()
    base = scheme.split("+", 1)[0]
    if scheme in ("http", "https", *_DB_SCHEMES) or base in _DB_SCHEMES:
        if not parts.hostname:
            raise bad(f"no host (expected {scheme}://HOST[:PORT]...)")
    elif scheme == "sqlite":
        if not uri.startswith("sqlite:///") or not uri[len("sqlite:///"):].split("?")[0]:
            raise bad("expected sqlite:///PATH (relative) or sqlite:////PATH (absolute) to a file")
        sqlite_store(Path(uri[len("sqlite:///"):].split("?")[0]), where=f"{where} {redact(uri)!r}")
    elif scheme in ("databricks", "databricks-uc"):
        pass
    elif scheme in ("file", "") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() == "true":
        pass
    elif scheme in ("file", ""):
        raise bad("not a tracking URI; use sqlite:///PATH.db or http(s)://HOST:PORT (MLflow 3 keeps file "
                  "stores in maintenance mode)")
    else:
        raise bad(f"unsupported scheme {scheme!r} (use sqlite:///PATH.db, http(s)://HOST:PORT or a database URL)")


def sqlite_store(path: Path, where: str) -> str:
    """What a SQLite store path holds: 'absent', 'empty' or 'mlflow'; one line for a folder, a
    file that is not SQLite, or somebody else's database (MLflow would add its tables to it)."""
    if path.is_dir():
        raise UserError(f"{where}: {path} is a directory, not an SQLite file")
    if not path.exists():
        if not path.parent.is_dir():
            raise UserError(f"{where}: {path.parent} is not a directory")
        return "absent"
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise UserError(f"{where}: cannot read {path} ({exc.strerror or exc})") from None
    if not head:
        return "empty"
    if head != _SQLITE_MAGIC:
        raise UserError(f"{where}: {path} is not an SQLite database")
    tables = _sqlite_tables(path, where)
    if not tables:
        return "empty"
    if not {"experiments", "runs"} <= tables:
        raise UserError(f"{where}: {path} is an SQLite database but not an MLflow store (tables: "
                        f"{', '.join(sorted(tables)[:5])}); nothing was written to it")
    return "mlflow"


def _sqlite_tables(path: Path, where: str) -> set[str]:
    import sqlite3

    try:  # read-only: looking must not change the file
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise UserError(f"{where}: {path} is not a readable SQLite database ({exc})") from None


def probe_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast with one line when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    # urllib does not take user:password@ in a URL (MLflow's client, through requests, does):
    # move it into a Basic auth header
    parts = urllib.parse.urlsplit(uri)
    headers = {}
    if parts.username is not None:
        cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    req = urllib.request.Request(urllib.parse.urlunsplit(parts).rstrip("/") + "/health", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if resp.status != 200:
                raise UserError(f"tracking server {redact(uri)} answered /health with HTTP {resp.status}")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"tracking server {redact(uri)} did not answer within {timeout:.0f} s ({redact(reason)})") from None


def check_store(configured: Optional[str], run_dir: Path) -> None:
    """Everything about the store that can be checked before the run directory is touched: the
    URI, the SQLite file it names (or the default one, if present), a server's health."""
    uri, artifact_root = resolve_uri(configured, run_dir)
    default = Path(uri[len("sqlite:///"):]) if artifact_root is not None else None
    if default is not None and default.exists():
        sqlite_store(default, where="tracking store")
    probe_server(uri)


def git_info(repo: Path) -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if commit.returncode != 0:
        return {}
    return {"git_commit": commit.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}


class NullTracker:
    """What non-main ranks (and runs with tracking off) hold: every call does nothing."""

    run_id: Optional[str] = None

    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str = "") -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._dropped = 0
        self._failures = 0
        self._thread = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self._thread.start()

    # -- called from the training loop: never blocks on the network -----------------------
    def _put(self, item) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # drop the oldest point, keep the newest
                    self._dropped += 1
                except queue.Empty:
                    pass

    def log_metrics(self, metrics: dict, step: int) -> None:
        self._put(("metrics", {k: float(v) for k, v in metrics.items()}, step, int(time.time() * 1000)))

    def log_artifact(self, path: Path, artifact_path: str = "") -> None:
        self._put(("artifact", str(path), artifact_path))

    def close(self, status: str = "FINISHED", timeout: float = 30.0) -> None:
        self._put(("close", status))
        self._thread.join(timeout)
        if self._thread.is_alive():
            print(f"warning: MLflow did not take the last points within {timeout:.0f} s", file=sys.stderr)
        if self._dropped:
            print(f"warning: {self._dropped} tracking points were dropped while MLflow was unreachable", file=sys.stderr)

    # -- the worker thread -----------------------------------------------------------------
    def _work(self) -> None:
        from mlflow.entities import Metric

        while True:
            item = self._queue.get()
            try:
                if item[0] == "metrics":
                    _, metrics, step, ts = item
                    self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])
                elif item[0] == "artifact":
                    self.client.log_artifact(self.run_id, item[1], item[2] or None)
                else:
                    self.client.set_terminated(self.run_id, status=item[1])
                    return
            except Exception as exc:  # noqa: BLE001 - tracking must never stop training
                self._failures += 1
                if self._failures in (1, 10, 100) or self._failures % 1000 == 0:
                    print(f"warning: MLflow logging failed ({self._failures}x): {type(exc).__name__}: "
                          f"{redact(str(exc).splitlines()[0]) if str(exc) else ''}; training continues", file=sys.stderr)


def start_tracking(
    run_dir: Path,
    *,
    uri: Optional[str],
    experiment: str,
    run_name: str,
    params: dict[str, object],
    tags: dict[str, str],
) -> MlflowTracker:
    """Create (or, when RUN_DIR/mlflow_run_id exists, reopen) the MLflow run. Params and tags
    pass through ``redact`` first: no credential reaches the tracking store."""
    params = {k: redact(v) for k, v in params.items()}
    tags = {k: redact(v) for k, v in tags.items()}
    uri, artifact_root = resolve_uri(uri, run_dir)
    probe_server(uri)
    if redact(uri) != uri:  # MLflow prints "View run at <uri>" on stdout, credentials and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    id_file = Path(run_dir) / RUN_ID_FILE
    run_id, missing = recorded_run(client, id_file, uri)
    if missing:  # README: tracking may change on resume; the run is found or made in the new store
        print(f"warning: {id_file}: {missing}; logging to a new run there", file=sys.stderr)
    if run_id:
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return MlflowTracker(client, run_id)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = (artifact_root / experiment).as_uri() if artifact_root else None
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    run_id = run.info.run_id
    tmp = id_file.with_name(id_file.name + ".tmp")
    tmp.write_text(run_id + "\n")
    tmp.replace(id_file)  # before anything else can fail, so a requeued job finds its run
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow's per-request parameter limit
        client.log_batch(run_id, params=items[i:i + 100])
    return MlflowTracker(client, run_id)


_RUN_ID = re.compile(r"[A-Za-z0-9][\w-]{0,255}")  # what MLflow accepts as a run id


def recorded_run(client, id_file: Path, uri: str) -> tuple[Optional[str], Optional[str]]:
    """(run id of RUN_DIR/mlflow_run_id when this store holds that run, or None; why not, or
    None when there is no file). The file is data: an id is only looked up, never trusted."""
    if not id_file.is_file():
        return None, None
    text = id_file.read_bytes()[:300].decode("ascii", "replace").strip()
    if not _RUN_ID.fullmatch(text):
        return None, "holds no run id"
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(text)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise UserError(f"{id_file}: cannot look up run {text} in {redact(uri)} "
                            f"({redact(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__})") from None
        return None, f"run {text} is not in {redact(uri)}"
    if run.info.lifecycle_stage == "deleted":
        return None, f"run {text} was deleted from {redact(uri)}"
    return text, None


def attach_metrics(run_dir: Path, configured_uri: Optional[str], metrics: dict, step: int) -> Optional[str]:
    """Log evaluation metrics to the training run recorded in RUN_DIR/mlflow_run_id.

    Returns the run id, or None when the run was not tracked. Synchronous: the evaluation
    job has nobody waiting on it.
    """
    id_file = Path(run_dir) / RUN_ID_FILE
    if not id_file.is_file():
        return None
    uri, _ = resolve_uri(configured_uri, run_dir)
    probe_server(uri)
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id, missing = recorded_run(client, id_file, uri)
    if missing:  # evaluation attaches to the training run only; it never makes one
        raise UserError(f"{id_file}: {missing}; the metrics are in {Path(run_dir) / 'eval'} (--no-track skips MLflow)")
    ts = int(time.time() * 1000)
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
    client.log_batch(
        run_id, metrics=[Metric(f"eval/{k}", v, ts, step) for k, v in numeric.items()]
    )
    return run_id


def system_metrics() -> dict[str, float]:
    """Host and accelerator load for the tracking run (``system/*``), sampled at log ticks
    through the same bounded queue (MLflow's own monitor thread would block on a dead server)."""
    out: dict[str, float] = {}
    try:
        import psutil

        proc = psutil.Process()
        out["system/cpu_percent"] = psutil.cpu_percent(interval=None)
        out["system/memory_percent"] = psutil.virtual_memory().percent
        out["system/process_rss_gb"] = proc.memory_info().rss / 2**30
    except ImportError:  # psutil comes with mlflow; without it, no host metrics
        pass
    import torch

    if torch.cuda.is_available():
        out["system/gpu_memory_allocated_gb"] = torch.cuda.memory_allocated() / 2**30
        out["system/gpu_max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out
