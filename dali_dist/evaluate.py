"""The evaluation job: metrics of checkpoints, written as metrics.json and attached to the
training run in MLflow at the checkpoint's step.

    dali-dist evaluate --checkpoint RUN/checkpoints/step-20000 --metrics fid,is,mse --out metrics.json
    dali-dist evaluate --run-dir RUN --metrics modes                   # newest complete checkpoint
    dali-dist evaluate --run-dir RUN --all-checkpoints --metrics fid   # a metric curve
    dali-dist evaluate --run-dir RUN --watch --metrics fid,is,mse      # follow a running job
    accelerate launch -m dali_dist.evaluate --run-dir RUN ...          # work split across processes
    python -m dali_dist.evaluate ...                                   # the same as dali-dist evaluate

Metrics (names encode the protocol, docs/design.md, 'Metric protocols'):
    fid    ``fid``: clean-fid protocol (uint8, clean resize, Inception, frechet_distance) on
           --num-samples generated images (default 50,000) against the train split's
           statistics, cached beside the shards in fid_stats/
    is     ``inception_score``, ``inception_score_std`` over 10 splits: ImageNet Inception for
           RGB sets; for 1-channel sets the project's classifier, plus ``fid_classifier``
           (FID in that classifier's feature space)
    kid    ``kid`` (Inception, RGB) or ``kid_classifier`` (1-channel sets): kernel inception
           distance in the feature space of ``is``, clean-fid's estimator, against the train
           split's features (cached beside the statistics)
    mse    ``mse``, ``mse_std``: reconstruction error of G(mu(x)) over the test split, [0, 1] scale
    cycle  ``cycle_mse``, ``cycle_mse_std``, ``latent_mse``: the same round trip on --num-samples
           of G's own samples (x = G(z) -> G(mu(x)), and z against mu(x)): how well E inverts G,
           to compare with ``mse`` (metrics/reconstruction.py)
    modes  ``modes_captured``, ``high_quality_pct`` on generated samples of the 2D grid (Table 2)
    probe  ``probe_accuracy``: logistic regression on mu(x), fitted on train codes, test accuracy
    knn    ``knn_accuracy``: 5-nearest-neighbour label vote of test codes among train codes

Re-running is safe: every evaluated step of a run is recorded in RUN_DIR/eval/step-<N>.json
(values, protocol, what was sent to MLflow). A metric whose protocol is unchanged is reused,
not recomputed, and no metric is logged twice at one step. The record also marks the
checkpoint as evaluated (see ``evaluated_steps``), so pruning can keep unevaluated ones.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import typer

from . import atomic
from .checkpoint import Exported, complete_checkpoints, load_export, newest_checkpoint
from .cli_util import CHECKPOINT_HELP, RUN_DIR_HELP, check_device, exits_cleanly
from .errors import UserError
from .generate import generate
from .metrics.modes import mode_metrics
from .metrics.ranks import Ranks
from .outputs import check_file, write_json
from .tracking import attach_metrics, redact, resolve_uri

FID_DEFAULT_SAMPLES = 50_000
EVAL_DIR = "eval"
DATASET_FAMILY = {"mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar10", "celeba": "celeba"}


@dataclass
class EvalOptions:
    data: Optional[str] = None
    """Shard directory or pattern (default: the checkpoint's data.source)."""
    num_samples: Optional[int] = None
    """Generated samples (default: 50,000 for fid/is, the config's eval.num_samples for modes)."""
    inception_weights: Optional[Path] = None
    """clean-fid's inception-2015-12-05.pt (default: $DALI_DIST_INCEPTION_WEIGHTS or a cache)."""
    classifier: Optional[Path] = None
    """The project's classifier for 1-channel sets (default: beside the shards, trained on first use)."""
    batch_size: Optional[int] = None
    """Generation / feature batch size (default: the config's eval.batch_size)."""
    progress: bool = True


class EvalJob:
    """One checkpoint under evaluation: its data, feature extractors and generated features
    (one generation pass serves every metric that needs one)."""

    def __init__(self, exp: Exported, opts: EvalOptions, ranks: Ranks):
        self.exp, self.opts, self.ranks = exp, opts, ranks
        self.cfg = exp.cfg
        self.batch_size = opts.batch_size or self.cfg.eval.batch_size
        self._info = None
        self._extractors: dict = {}
        self._rows: dict = {}
        self._refs: dict = {}
        self._codes: dict = {}
        self.planned: set[str] = set()

    def codes(self, split: str):
        """(codes, labels) of a whole split (one encoding pass serves probe and knn)."""
        if split not in self._codes:
            from .metrics.codes import split_codes

            self._codes[split] = split_codes(self.exp, self.source, split, batch_size=self.batch_size,
                                             ranks=self.ranks, total=self.info.splits.get(split),
                                             progress=self.opts.progress)
        return self._codes[split]

    # -- data ----------------------------------------------------------------------------
    @property
    def source(self) -> str:
        from .config import saved_source

        src = self.opts.data or saved_source(self.cfg.data.source, str(self.exp.path))
        if src is None:
            raise UserError(f"{self.exp.path}: no data source; pass --data DIR (the shards the model was trained on)")
        return str(src)

    @property
    def info(self):
        if self._info is None:
            from .data import describe

            info = describe(self.source)
            cfg = self.cfg.data
            if info.kind != "image" or (info.channels, info.resolution) != (cfg.channels, cfg.resolution):
                shape = "2D points" if info.kind != "image" else f"{info.resolution}px x{info.channels}"
                raise UserError(f"--data {self.source}: holds {info.dataset} ({shape}) but the checkpoint was trained "
                                f"on {cfg.dataset} at {cfg.resolution}px x{cfg.channels}; pass the shards it was trained on")
            trained = self._trained_dataset()
            a, b = DATASET_FAMILY.get(info.dataset), DATASET_FAMILY.get(cfg.dataset)
            if (trained and info.dataset not in (trained, "unknown")) or (a and b and a != b):
                raise UserError(f"--data {self.source}: holds {info.dataset} but the checkpoint was trained on "
                                f"{trained or cfg.dataset}; pass the shards it was trained on")
            self._info = info
        return self._info

    def _trained_dataset(self) -> Optional[str]:
        """The dataset name in the manifest of the training shards, when they are readable here."""
        src = self.cfg.data.source
        if not src or not self.opts.data or not Path(src, "manifest.json").is_file():
            return None
        try:
            from .data import describe

            return describe(src).dataset
        except UserError:
            return None

    # -- feature extractors -------------------------------------------------------------------
    def extractor(self, name: str):
        if name not in self._extractors:
            from .metrics import extractors as X

            if name == "inception":
                ext = X.TorchScriptInception(X.resolve_inception_weights(self.opts.inception_weights), self.ranks.device)
            elif name == "classifier":
                ext = X.ClassifierExtractor(self._classifier_path(), self.ranks.device)
                meta = ext.meta
                if (int(meta["resolution"]), int(meta["channels"])) != (self.info.resolution, self.info.channels):
                    raise UserError(f"{ext.path}: classifier for {meta['resolution']}px x{meta['channels']} images, "
                                    f"the data is {self.info.resolution}px x{self.info.channels}")
            else:
                raise KeyError(name)
            self._extractors[name] = ext
        return self._extractors[name]

    def _classifier_path(self) -> Path:
        from .classifier import default_classifier_path, train_classifier

        if self.opts.classifier is not None:
            if not Path(self.opts.classifier).is_file():
                raise UserError(f"--classifier {self.opts.classifier}: no such file (train one: dali-dist "
                                f"train-classifier --data DIR --out {self.opts.classifier})")
            return Path(self.opts.classifier)
        path = default_classifier_path(self.source)
        if self.ranks.is_main and not path.is_file():
            print(f"no classifier at {path}: training one on the train split of {self.source} (once)", file=sys.stderr)
            r = train_classifier(self.source, path, device=str(self.ranks.device), progress=self.opts.progress)
            print(f"classifier test accuracy {r['test_accuracy']:.4f}, saved to {path}", file=sys.stderr)
        self.ranks.barrier()
        return path

    def is_extractor(self) -> str:
        """The network behind ``is``: the classifier for 1-channel sets, Inception for RGB."""
        return "classifier" if self.cfg.data.channels == 1 else "inception"

    # -- generated samples and reference statistics --------------------------------------------
    def num_generated(self) -> int:
        return self.opts.num_samples or FID_DEFAULT_SAMPLES

    def generated(self, name: str):
        if name not in self._rows:
            from .metrics.features import generated_features

            names = sorted(self.planned | {name})
            rows = generated_features(self.exp, {n: self.extractor(n) for n in names}, self.num_generated(),
                                      seed=self.cfg.eval.seed, batch_size=self.batch_size, ranks=self.ranks,
                                      progress=self.opts.progress)
            self._rows.update(rows)
        return self._rows[name]

    def reference_key(self, name: str, split: str = "train") -> str:
        from .metrics.fid import stats_key

        return stats_key(self.info.dataset, split, self.info.resolution, self.extractor(name).id)

    def reference(self, name: str, split: str = "train"):
        """Gaussian statistics of ``split`` under extractor ``name`` (main rank; None elsewhere),
        read from the cache beside the shards or computed once and cached there."""
        if name in self._refs:
            return self._refs[name]
        from .metrics.fid import gaussian_stats, load_cached, save_cached, stats_dir

        info = self.info
        if split not in info.splits:
            raise UserError(f"{self.source}: no {split!r} split for reference statistics")
        key = self.reference_key(name, split)
        path = stats_dir(info) / f"{key}.npz"
        stats = load_cached(path, info.manifest_sha256) if self.ranks.is_main else None
        if not self.ranks.broadcast(stats is not None):
            feats = self._split_features(name, split)
            if self.ranks.is_main:
                stats = gaussian_stats(feats)
                try:
                    save_cached(path, stats, {"key": key, "dataset": info.dataset, "split": split,
                                              "resolution": info.resolution, "extractor": self.extractor(name).id,
                                              "manifest_sha256": info.manifest_sha256})
                except OSError as exc:
                    print(f"warning: cannot cache reference statistics at {path} ({exc.strerror or exc})", file=sys.stderr)
        self._refs[name] = stats
        return stats

    def _split_features(self, name: str, split: str):
        """Features of every image of ``split`` under extractor ``name`` (work shared by ranks)."""
        from .metrics.features import dataset_features

        info = self.info
        if split not in info.splits:
            raise UserError(f"{self.source}: no {split!r} split for reference statistics")
        feats, _ = dataset_features(self.source, split, {name: self.extractor(name)}, batch_size=self.batch_size,
                                    ranks=self.ranks, progress=self.opts.progress, total=info.splits[split])[name]
        return feats

    def reference_features(self, name: str, split: str = "train"):
        """Feature rows of ``split`` under extractor ``name`` (main rank; None elsewhere), for
        KID, which needs samples rather than moments; cached beside the statistics."""
        from .metrics.fid import load_cached_features, save_cached_features, stats_dir

        info = self.info
        key = self.reference_key(name, split) + "-features"
        path = stats_dir(info) / f"{key}.npz"
        feats = load_cached_features(path, info.manifest_sha256) if self.ranks.is_main else None
        if not self.ranks.broadcast(feats is not None):
            feats = self._split_features(name, split)
            if self.ranks.is_main:
                try:
                    save_cached_features(path, feats, {"key": key, "extractor": self.extractor(name).id,
                                                       "manifest_sha256": info.manifest_sha256})
                except OSError as exc:
                    print(f"warning: cannot cache reference features at {path} ({exc.strerror or exc})", file=sys.stderr)
        return feats


KNN_K = 5  # neighbours for knn_accuracy

# ------------------------------------------------------------------------------------------
# Metrics: name -> (check, protocol, compute). Checks run before any work, so a bad request
# fails in a second; compute returns {} on non-main ranks (they only help with the work).

def _need_images(job: EvalJob, name: str) -> None:
    if job.cfg.data.dataset == "grid2d":
        raise UserError(f"{job.exp.path}: metric {name!r} applies to images, not the 2D grid (use modes)")


def _check_modes(job: EvalJob) -> None:
    if job.cfg.data.dataset != "grid2d":
        raise UserError(f"{job.exp.path}: metric 'modes' applies to the 2D grid, not {job.cfg.data.dataset}")


def _modes(job: EvalJob) -> dict:
    n = job.opts.num_samples or job.cfg.eval.num_samples
    if not job.ranks.is_main:
        return {}
    samples = generate(job.exp, n, seed=job.cfg.eval.seed, batch_size=job.batch_size)
    return mode_metrics(samples.numpy())


def _check_fid(job: EvalJob) -> None:
    _need_images(job, "fid")
    from .metrics.extractors import cleanfid_modules

    cleanfid_modules()
    job.info
    job.extractor("inception")


def _fid(job: EvalJob) -> dict:
    from .metrics.fid import frechet_distance, gaussian_stats

    feats, _ = job.generated("inception")
    ref = job.reference("inception")
    if not job.ranks.is_main:
        return {}
    return {"fid": frechet_distance(gaussian_stats(feats), ref)}


def _check_is(job: EvalJob) -> None:
    _need_images(job, "is")
    from .metrics.extractors import cleanfid_modules

    cleanfid_modules()
    job.info
    ext = job.extractor(job.is_extractor())
    if not ext.has_logits:
        raise UserError(f"{getattr(ext, 'path', ext.id)}: this network has no classification head (output); "
                        "the Inception score needs logits")


def _is(job: EvalJob) -> dict:
    from .metrics.fid import frechet_distance, gaussian_stats
    from .metrics.inception import inception_score

    name = job.is_extractor()
    feats, logits = job.generated(name)
    ref = job.reference(name) if name == "classifier" else None
    if not job.ranks.is_main:
        return {}
    mean, std = inception_score(logits)
    out = {"inception_score": mean, "inception_score_std": std}
    if name == "classifier":
        out["fid_classifier"] = frechet_distance(gaussian_stats(feats), ref)
    return out


def _kid(job: EvalJob) -> dict:
    """KID in the feature space of ``is`` (the classifier on 1-channel sets, Inception on RGB),
    against the train split, as FID; named kid_classifier for the classifier's space."""
    from .metrics.fid import kernel_distance

    name = job.is_extractor()
    feats, _ = job.generated(name)
    ref = job.reference_features(name)
    if not job.ranks.is_main:
        return {}
    return {"kid_classifier" if name == "classifier" else "kid": kernel_distance(feats, ref, job.cfg.eval.seed)}


def _check_mse(job: EvalJob) -> None:
    _need_images(job, "mse")
    if job.exp.E is None:
        raise UserError(f"{job.exp.path}: metric 'mse' needs an encoder; variant {job.cfg.model.variant!r} has none")
    if "test" not in job.info.splits:
        raise UserError(f"{job.source}: metric 'mse' needs a 'test' split (has {', '.join(sorted(job.info.splits))})")


def _mse(job: EvalJob) -> dict:
    from .metrics.reconstruction import reconstruction_mse

    out = reconstruction_mse(job.exp, job.source, split="test", batch_size=job.batch_size, ranks=job.ranks,
                             progress=job.opts.progress)
    return out if job.ranks.is_main else {}


def _check_cycle(job: EvalJob) -> None:
    _need_images(job, "cycle")
    if job.exp.E is None:
        raise UserError(f"{job.exp.path}: metric 'cycle' needs an encoder; variant {job.cfg.model.variant!r} has none")


def _cycle(job: EvalJob) -> dict:
    from .metrics.reconstruction import cycle_errors

    out = cycle_errors(job.exp, job.num_generated(), seed=job.cfg.eval.seed, batch_size=job.batch_size,
                       ranks=job.ranks, progress=job.opts.progress)
    return out if job.ranks.is_main else {}


def _check_latent(job: EvalJob, name: str) -> None:
    _need_images(job, name)
    if job.exp.E is None:
        raise UserError(f"{job.exp.path}: metric {name!r} needs an encoder; variant {job.cfg.model.variant!r} has none")
    missing = [s for s in ("train", "test") if s not in job.info.splits]
    if missing:
        raise UserError(f"{job.source}: metric {name!r} needs train and test splits (missing {', '.join(missing)})")
    if not job.info.num_classes:
        raise UserError(f"{job.source}: metric {name!r} needs labels, and {job.info.dataset} has none")


def _latent(job: EvalJob, name: str) -> dict:
    """Linear probe (train codes -> test labels) or k-NN retrieval on mu(x) (issue 9)."""
    from .metrics.latent import knn_accuracy, linear_probe_accuracy

    tr, ytr = job.codes("train")
    te, yte = job.codes("test")
    if not job.ranks.is_main:
        return {}
    if name == "probe":
        return {"probe_accuracy": linear_probe_accuracy(tr, ytr, te, yte)}
    return {"knn_accuracy": knn_accuracy(tr, ytr, te, yte, k=KNN_K)}


def _protocol(job: EvalJob, name: str) -> dict:
    """What a metric's value depends on besides the weights; equal protocols mean reusable values."""
    if name == "modes":
        return {"num_samples": job.opts.num_samples or job.cfg.eval.num_samples, "seed": job.cfg.eval.seed}
    if name == "cycle":  # G's own samples: no data involved
        return {"num_samples": job.num_generated(), "seed": job.cfg.eval.seed, "samples": "uint8"}
    proto = {"data": job.info.manifest_sha256 or job.source}
    if name == "mse":
        return {**proto, "split": "test"}
    if name in ("probe", "knn"):
        return {**proto, "fit": "train", "score": "test", **({"k": KNN_K} if name == "knn" else {})}
    ext = job.is_extractor() if name in ("is", "kid") else "inception"
    proto.update({"num_samples": job.num_generated(), "seed": job.cfg.eval.seed, "mode": "clean",
                  "extractor": job.extractor(ext).id})
    if name in ("fid", "kid") or ext == "classifier":
        proto["reference"] = job.reference_key(ext)
    return proto


@dataclass
class Metric:
    check: Callable[[EvalJob], None]
    compute: Callable[[EvalJob], dict]
    extractors: Callable[[EvalJob], set] = field(default=lambda job: set())


METRICS: dict[str, Metric] = {
    "fid": Metric(_check_fid, _fid, lambda job: {"inception"}),
    "is": Metric(_check_is, _is, lambda job: {job.is_extractor()}),
    "kid": Metric(_check_is, _kid, lambda job: {job.is_extractor()}),
    "mse": Metric(_check_mse, _mse),
    "cycle": Metric(_check_cycle, _cycle),
    "modes": Metric(_check_modes, _modes),
    "probe": Metric(lambda job: _check_latent(job, "probe"), lambda job: _latent(job, "probe")),
    "knn": Metric(lambda job: _check_latent(job, "knn"), lambda job: _latent(job, "knn")),
}


def _names(metrics) -> list[str]:
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise UserError(f"--metrics: unknown metric(s) {', '.join(unknown)}; available: {', '.join(METRICS)}")
    if not names:
        raise UserError(f"--metrics: name at least one of {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------
# Records of evaluated steps (RUN_DIR/eval/step-<N>.json)

def _run_dir_of(exp: Exported) -> Optional[Path]:
    ckpt_dir = exp.path.parent  # RUN_DIR/checkpoints/step-<N>
    return ckpt_dir.parent.parent if ckpt_dir.parent.name == "checkpoints" else None


def record_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / EVAL_DIR / f"step-{step}.json"


def read_record(run_dir: Optional[Path], step: int) -> dict:
    if run_dir is None:
        return {}
    path = record_path(run_dir, step)
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        print(f"warning: {path}: unreadable evaluation record; starting a new one", file=sys.stderr)
        return {}
    _check_record(record, path)
    return record


def _check_record(record, path: Path) -> None:
    """The shape evaluate_and_record writes; anything else would fail deep in the merge."""
    if not isinstance(record, dict):
        raise UserError(f"{path}: evaluation record is not a JSON object; move it away to re-evaluate")
    metrics, attached = record.get("metrics", {}), record.get("attached", {})
    if not isinstance(metrics, dict) or not all(isinstance(m, dict) and isinstance(m.get("values"), dict)
                                                for m in metrics.values()):
        raise UserError(f"{path}: evaluation record's metrics is not a mapping of metric records")
    if not isinstance(attached, dict) or not isinstance(record.get("mlflow_run_id", ""), str):
        raise UserError(f"{path}: evaluation record's attached or mlflow_run_id has the wrong type")


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, obj)


def evaluated_steps(run_dir: Path) -> set[int]:
    """Steps with an evaluation record (for pruning: keep checkpoints not in this set)."""
    folder = Path(run_dir) / EVAL_DIR
    return {int(p.stem[5:]) for p in folder.glob("step-*.json") if p.stem[5:].isdigit()} if folder.is_dir() else set()


# ------------------------------------------------------------------------------------------
# Evaluating one checkpoint

def evaluate_export(exp: Exported, metrics, num_samples: Optional[int] = None, *, opts: Optional[EvalOptions] = None,
                    ranks: Optional[Ranks] = None, reuse: Optional[dict] = None) -> dict:
    """Metric values of one loaded checkpoint (on the main rank; {} elsewhere).

    ``reuse``: {metric name: {"protocol": ..., "values": ...}} from an earlier record; a metric
    whose protocol is unchanged is not recomputed. The protocols land in ``out["_protocol"]``.
    """
    names = _names(metrics)
    opts = opts or EvalOptions(num_samples=num_samples)
    if num_samples is not None:
        opts.num_samples = num_samples
    ranks = ranks or Ranks(str(next(exp.G.parameters()).device))
    job = EvalJob(exp, opts, ranks)
    for name in names:  # every check before any work
        METRICS[name].check(job)
    protocols = {name: _protocol(job, name) for name in names}
    todo = [n for n in names if not (reuse and reuse.get(n, {}).get("protocol") == protocols[n])]
    for n in todo:
        job.planned |= METRICS[n].extractors(job)
    out: dict = {"step": exp.meta["step"], "checkpoint": str(exp.path.parent.resolve())}
    values: dict = {}
    for name in names:
        values[name] = reuse[name]["values"] if name not in todo else METRICS[name].compute(job)
        out.update(values[name])
    out["_protocol"] = protocols
    out["_values"] = values
    out["_reused"] = [n for n in names if n not in todo]
    return out if ranks.is_main else {}


def evaluate_checkpoint(path: Path, metrics, num_samples: Optional[int] = None, device: str = "cpu",
                        opts: Optional[EvalOptions] = None) -> dict:
    out = evaluate_export(load_export(path, device), metrics, num_samples, opts=opts)
    return {k: v for k, v in out.items() if not k.startswith("_")}


def _attach(run_dir: Path, exp: Exported, metrics: dict, protocols: dict) -> Optional[str]:
    run_id = attach_metrics(run_dir, exp.cfg.tracking.uri, metrics, exp.meta["step"])
    if run_id and protocols:
        from mlflow.entities import RunTag
        from mlflow.tracking import MlflowClient

        uri, _ = resolve_uri(exp.cfg.tracking.uri, run_dir)
        tags = [RunTag(f"eval.{m}.{k}", redact(str(v))[:5000]) for m, p in protocols.items() for k, v in p.items()]
        MlflowClient(tracking_uri=uri).log_batch(run_id, tags=tags)
    return run_id


def evaluate_and_record(ckpt: Path, names: list[str], opts: EvalOptions, ranks: Ranks, *, track: bool = True,
                        force: bool = False) -> dict:
    """Evaluate one checkpoint, update RUN_DIR/eval/step-<N>.json and attach new values to MLflow."""
    exp = load_export(ckpt, ranks.device)
    run_dir = _run_dir_of(exp)
    step = exp.meta["step"]
    record = ranks.broadcast(read_record(run_dir, step) if ranks.is_main else None)
    out = evaluate_export(exp, names, opts=opts, ranks=ranks, reuse=None if force else record.get("metrics"))
    if not ranks.is_main:
        return {}
    protocols, values, reused = out.pop("_protocol"), out.pop("_values"), out.pop("_reused")
    result = dict(out)
    if reused:
        print(f"step {step}: reusing recorded {', '.join(reused)} (same protocol; --force recomputes)", file=sys.stderr)
    if run_dir is None:
        return result
    record = record or {"step": step}
    record["checkpoint"] = result["checkpoint"]
    record.setdefault("metrics", {}).update({n: {"protocol": protocols[n], "values": values[n]} for n in names})
    attached = record.setdefault("attached", {})
    write_json_atomic(record_path(run_dir, step), record)  # before MLflow: a dead server loses nothing
    if track:
        new = {k: v for n in names for k, v in values[n].items() if isinstance(v, (int, float)) and k not in attached}
        again = sorted(k for n in names for k, v in values[n].items() if k in attached and attached[k] != v)
        if again:
            print(f"step {step}: {', '.join(again)} already in MLflow at this step; the new values are in "
                  f"{record_path(run_dir, step)} and metrics.json only (no duplicate points)", file=sys.stderr)
        if new:
            run_id = _attach(run_dir, exp, new, {n: protocols[n] for n in names if n in ("fid", "is", "kid")})
            if run_id:
                attached.update(new)
                record["mlflow_run_id"] = result["mlflow_run_id"] = run_id
                write_json_atomic(record_path(run_dir, step), record)
        elif record.get("mlflow_run_id"):
            result["mlflow_run_id"] = record["mlflow_run_id"]
    return result


# ------------------------------------------------------------------------------------------
# Modes of the job: one checkpoint, all of them, or following a running job

def _exit_code(run_dir: Path) -> Optional[str]:
    """The trainer's verdict, if it is newer than the newest checkpoint (a resumed session
    writing newer checkpoints makes an old exit_code stale)."""
    f = Path(run_dir) / "exit_code"
    if not f.is_file():
        return None
    ckpts = complete_checkpoints(run_dir)
    if ckpts and ckpts[-1][1].stat().st_mtime > f.stat().st_mtime:
        return None
    code = f.read_bytes()[:100].decode("ascii", "replace").strip()
    if not code.lstrip("-").isdigit():  # the trainer writes an integer; anything else is not its verdict
        raise UserError(f"{f}: not an exit code (the trainer writes an integer)")
    return code


# Slurm job states after which a job will not run again (a requeued job is PENDING, not over)
SLURM_OVER = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
              "DEADLINE", "PREEMPTED"}


def slurm_job_over(job_id: str) -> bool:
    """True once Slurm reports the job in a final state, or has forgotten it."""
    import subprocess

    try:
        r = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False  # no answer is not a verdict: look again at the next poll
    state = next((f.split("=", 1)[1] for f in r.stdout.split() if f.startswith("JobState=")), None)
    return state is None or state in SLURM_OVER


def watch(run_dir: Path, names: list[str], opts: EvalOptions, ranks: Ranks, *, track: bool, force: bool,
          timeout: float, interval: float, on_result: Callable[[dict], None],
          job_over: Optional[Callable[[], bool]] = None) -> None:
    """Evaluate each new complete checkpoint once, until the trainer records a final exit code,
    ``job_over()`` says its job is over (then one last pass), or the timeout."""
    deadline = time.monotonic() + timeout
    done: set[int] = set()
    while True:
        over = ranks.broadcast(bool(job_over and job_over()) if ranks.is_main else None)  # before listing: a last pass
        code = ranks.broadcast(_exit_code(run_dir) if ranks.is_main else None)
        todo = ranks.broadcast([(s, str(p)) for s, p in complete_checkpoints(run_dir) if s not in done]
                               if ranks.is_main else None)
        for step, path in todo:
            try:
                on_result(evaluate_and_record(Path(path), names, opts, ranks, track=track, force=force))
            except UserError as exc:
                if Path(path).exists():
                    raise
                print(f"step {step}: checkpoint pruned before evaluation ({exc})", file=sys.stderr)
            done.add(step)
        if code is not None and code != "75":
            msg = "finished" if code == "0" else f"stopped with exit code {code}"
            print(f"watch: training {msg}; evaluated {len(done)} checkpoint(s)", file=sys.stderr)
            return
        if over:
            print(f"watch: the training job is over; evaluated {len(done)} checkpoint(s)", file=sys.stderr)
            return
        if time.monotonic() >= deadline:
            print(f"watch: --watch-timeout reached; evaluated {len(done)} checkpoint(s)", file=sys.stderr)
            return
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def evaluate_command(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help=RUN_DIR_HELP + " With --all-checkpoints or --watch: every one."),
    all_checkpoints: bool = typer.Option(False, "--all-checkpoints", help="With --run-dir: every complete checkpoint (a metric curve)."),
    watch_run: bool = typer.Option(False, "--watch", help="With --run-dir: evaluate each new checkpoint until RUN_DIR/exit_code says the run is done."),
    watch_timeout: float = typer.Option(7 * 24 * 3600.0, "--watch-timeout", min=0, help="Stop watching after this many seconds."),
    watch_interval: float = typer.Option(60.0, "--watch-interval", min=0, help="Seconds between looks for new checkpoints."),
    slurm_job: Optional[str] = typer.Option(None, "--slurm-job", help="With --watch: also end, after a last pass, when this Slurm job is over."),
    metrics: str = typer.Option("modes", "--metrics", help=f"Comma-separated: {', '.join(METRICS)}."),
    data: Optional[str] = typer.Option(None, "--data", help="Shards to evaluate against (default: the config's data.source)."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", min=1, help="Generated samples (default: 50,000 for fid/is; eval.num_samples for modes)."),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="clean-fid's inception-2015-12-05.pt (or $DALI_DIST_INCEPTION_WEIGHTS)."),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="Classifier for is/fid_classifier on 1-channel sets (default: beside the shards)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Default: the config's eval.batch_size."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics JSON here (default: print only)."),
    device: Optional[str] = typer.Option(None, "--device", help="Default: cuda if available (one GPU per process), else cpu."),
    track: bool = typer.Option(True, "--track/--no-track", help="Attach the metrics to the training run in MLflow."),
    force: bool = typer.Option(False, "--force", help="Recompute metrics already recorded for a step."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out that dali-dist did not write."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars on stderr."),
) -> None:
    """Compute metrics of checkpoints and write metrics.json."""
    if (checkpoint is None) == (run_dir is None):
        raise UserError("give exactly one of --checkpoint or --run-dir")
    if (all_checkpoints or watch_run) and run_dir is None:
        raise UserError("--all-checkpoints and --watch need --run-dir")
    if all_checkpoints and watch_run:
        raise UserError("give at most one of --all-checkpoints and --watch")
    if slurm_job is not None and not (watch_run and re.fullmatch(r"\d+(_\d+)?", slurm_job)):
        raise UserError(f"--slurm-job {slurm_job!r}: a Slurm job id (1234 or 1234_5), with --watch")
    if out is not None:
        check_file(out, overwrite=overwrite)  # before minutes of sampling, not after
    names = _names(metrics)
    check_device(device)
    ranks = Ranks(device)
    opts = EvalOptions(data=data, num_samples=num_samples, inception_weights=inception_weights,
                       classifier=classifier, batch_size=batch_size, progress=progress)
    results: list[dict] = []
    if ranks.is_main:
        print(f"evaluate: {', '.join(names)} on {ranks.world} process(es), device {ranks.device}", file=sys.stderr)

    def emit(result: dict) -> None:
        if not ranks.is_main:
            return
        results.append(result)
        typer.echo(json.dumps(result))
        if out is not None:  # rewritten after every checkpoint, so a long watch leaves a usable file
            latest = max(results, key=lambda r: r["step"])
            history = sorted(results, key=lambda r: r["step"])
            write_json(out, latest if len(results) == 1 and not (all_checkpoints or watch_run)
                       else {**latest, "history": history}, "evaluate")

    if watch_run:
        if not run_dir.is_dir():
            raise UserError(f"--run-dir {run_dir}: no such directory")
        watch(run_dir, names, opts, ranks, track=track, force=force, timeout=watch_timeout,
              interval=watch_interval, on_result=emit,
              job_over=(lambda: slurm_job_over(slurm_job)) if slurm_job else None)
    elif all_checkpoints:
        ckpts = complete_checkpoints(run_dir)
        if not ckpts:
            raise UserError(f"{run_dir}: no complete checkpoint under checkpoints/")
        for _, path in ckpts:
            emit(evaluate_and_record(path, names, opts, ranks, track=track, force=force))
    else:
        path = checkpoint if checkpoint is not None else newest_checkpoint(run_dir)
        emit(evaluate_and_record(path, names, opts, ranks, track=track, force=force))
    ranks.close()  # on success only: after an error the launcher takes the other ranks down


def main() -> None:
    exits_cleanly(typer.run)(evaluate_command)


if __name__ == "__main__":
    main()
