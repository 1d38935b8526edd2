"""Typed run configuration: dataclasses with one docstring per field, YAML presets, overrides.

A config is built in three layers: the dataclass defaults, a preset or YAML file
(``--config grid2d`` or ``--config path/to.yaml``), then ``--set section.field=value``
overrides. Every value is type-checked and range-checked before anything runs, and the
resolved config is saved whole as ``RUN_DIR/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError, UserError

VARIANTS = ("dali", "dali-l2", "dali-f", "gan", "ali")
ENCODER_VARIANTS = ("dali", "dali-l2", "dali-f", "ali")


@dataclass
class DataConfig:
    dataset: Literal["grid2d", "mnist", "fashion-mnist", "cifar10", "celeba", "folder"] = "grid2d"
    """Which dataset family; fixes the sample shape and the metrics that apply."""
    source: Optional[str] = None
    """Shard directory (with manifest.json) or shard URL pattern. None for grid2d means
    samples are drawn on the fly from the exact 25-Gaussian mixture (no files needed)."""
    resolution: Optional[int] = None
    """Image side in pixels (28, 32 or 64); None for the 2D mixture."""
    channels: Optional[int] = None
    """Image channels (1 or 3); None for the 2D mixture."""
    num_workers: int = 0
    """DataLoader worker processes per rank for shard decoding."""
    on_corrupt: Literal["error", "skip"] = "error"
    """A corrupt, truncated or missing shard or sample: error stops with a one-line message
    naming the file; skip drops it with a warning and a count (every rank still yields the
    same number of batches, so no rank waits on another)."""


@dataclass
class ModelConfig:
    variant: Literal["dali", "dali-l2", "dali-f", "gan", "ali"] = "dali"
    """Objective: dali (eq. 9 with learned variance), dali-l2 (identity covariance),
    dali-f (f-divergence KL game of eq. 8 plus eq. 9), gan (same G and D, no encoder),
    ali (BiGAN/ALI: a joint discriminator on (x, z) pairs; the encoder maps x to z)."""
    adversarial: Literal["gan", "hinge", "wgan-gp"] = "gan"
    """Adversarial loss: gan (non-saturating, Algorithm 1), hinge, or wgan-gp (Wasserstein
    with gradient penalty). dali-f always plays the KL game of eq. 8."""
    gp_weight: float = 10.0
    """Gradient-penalty weight for adversarial=wgan-gp."""
    family: Literal["mlp", "dcgan"] = "mlp"
    """Network family: mlp for the 2D mixture, dcgan for images."""
    latent_dim: int = 8
    """Dimension d of z ~ N(0, I_d)."""
    lambda_e: Optional[float] = None
    """Weight of the encoder loss L_e in eq. 10; None means 1/d (paper Section 4)."""
    g_hidden: list[int] = field(default_factory=lambda: [256, 256])
    """MLP generator hidden widths (mlp family)."""
    g_norm: Literal["batch", "none"] = "none"
    """Normalisation after each generator hidden layer (mlp family)."""
    d_hidden: list[int] = field(default_factory=lambda: [256, 256])
    """MLP discriminator trunk widths; the last one is the feature size h (mlp family)."""
    e_hidden: list[int] = field(default_factory=lambda: [256])
    """Encoder hidden widths on top of D's trunk features (mlp family); [] means linear heads."""
    width: int = 64
    """Base channel width of the image networks (doubles at each downsampling)."""
    g_arch: Literal["dcgan", "fc"] = "dcgan"
    """Image generator: dcgan (z -> smallest map by one transposed conv) or fc (the authors'
    MNIST generator: two fully connected layers z -> g_fc_width -> smallest map, with
    BatchNorm and ReLU, then the same transposed convs)."""
    g_fc_width: int = 1024
    """Width of the fc generator's first fully connected layer."""
    d_head: Literal["conv", "mlp"] = "conv"
    """Image discriminator head on the trunk's smallest map: conv (one linear conv over the
    map) or mlp (the authors' MNIST head: FC -> d_head_width, BatchNorm, LeakyReLU, FC -> 1).
    ALI's joint discriminator uses d_head_width for its (x, z) MLP when this is mlp."""
    d_head_width: int = 1024
    """Hidden width of the mlp discriminator head (and of ALI's joint head when d_head=mlp)."""
    d_norm: Literal["batch", "spectral"] = "batch"
    """Image discriminator normalisation: batch (BatchNorm after every conv but the first, as
    DCGAN) or spectral (spectral norm on every D layer and no BatchNorm, as SN-GAN)."""
    lrelu_slope: float = 0.2
    """Negative slope of the LeakyReLUs of the image discriminator and encoder (authors: 0.1
    on MNIST, 0.2 on CIFAR-10)."""
    e_arch: Literal["conv", "conv-bn"] = "conv"
    """Image encoder on D's feature map: conv (3x3 conv keeping the channels, then mu and
    log sigma^2 heads FC -> e_head_width, LeakyReLU, FC) or conv-bn (the authors' MNIST
    encoder: 3x3 conv halving the channels with BatchNorm, heads FC, LeakyReLU, BatchNorm, FC)."""
    e_head_width: Optional[int] = None
    """Hidden width of each encoder head; None means max(2 d, 256)."""
    e_input: Literal["trunk", "image"] = "trunk"
    """What the dali / dali-l2 encoder reads: trunk (D's feature map, which E never updates:
    the authors' design) or image (x itself through a trunk of its own, built like D's, which E
    trains; as ALI's encoder, which always reads x). BENCHMARKS.md compares the two."""
    lambda_e_ramp_steps: int = 0
    """Ramp the encoder weight linearly from 0 to lambda_e over this many steps (0: constant)."""
    g_through_sigma: bool = True
    """Whether G gets eq. 9's gradient through E's log sigma^2 (the paper: true). false holds
    each image's sigma^2(x) constant for G, so G is pulled only through mu's error weighted by
    1/sigma^2(x), while E still trains both heads on the full eq. 9 (an ablation, for variants
    with a learned variance: dali, dali-f). BENCHMARKS.md says what it showed."""
    logvar_min: float = -10.0
    """Lower clamp of the encoder's log-variance, so 1/sigma^2 stays finite."""
    logvar_max: float = 6.0
    """Upper clamp of the encoder's log-variance."""


@dataclass
class OptimConfig:
    lr_g: float = 2e-4
    """Adam learning rate of the generator (G and E share one optimizer step)."""
    lr_d: float = 2e-4
    """Adam learning rate of the discriminator."""
    lr_e: Optional[float] = None
    """Adam learning rate of the encoder; None means lr_g."""
    schedule_e: bool = True
    """Whether the encoder's learning rate follows the schedule (the authors decay G's and
    D's only: false). Warm-up applies to every network either way."""
    beta1: float = 0.5
    """Adam beta1 (the authors use 0.5)."""
    beta2: float = 0.999
    """Adam beta2."""
    schedule: Literal["constant", "cosine", "inv-sqrt-epoch"] = "constant"
    """Learning-rate schedule: constant; cosine decay to min_lr_ratio over train.steps;
    inv-sqrt-epoch is the authors' lr/sqrt(epoch+1), an epoch being one pass over the training
    data (a step reads train.d_steps real batches)."""
    warmup_steps: int = 0
    """Linear warm-up steps before the schedule."""
    min_lr_ratio: float = 0.0
    """Final learning rate of the cosine schedule, as a fraction of the initial one."""


@dataclass
class TrainConfig:
    seed: int = 0
    """Run seed: initialisation, z draws and data order derive from it."""
    steps: int = 10000
    """Total training iterations of Algorithm 1."""
    batch_size: int = 256
    """Global batch size (divided evenly across processes)."""
    update_order: Literal["alternating", "simultaneous"] = "alternating"
    """alternating: after D steps, draw a fresh z and forward again for the G+E step (the
    authors' code). simultaneous: reuse the z, G(z) of the D step (Algorithm 1 as printed)."""
    d_steps: int = 1
    """Discriminator updates per generator update."""
    ema_beta: float = 0.0
    """Exponential moving average of G's weights used for export (E is exported live: an
    averaged E reconstructs worse); 0 disables."""
    export_bn_batches: int = 100
    """Before export, re-estimate G's BatchNorm statistics as the average over this many prior
    batches of the per-process batch size (precise BN; 0 keeps the moving averages)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision for forward passes. bf16 needs no loss scaling (CPU and GPU);
    fp16 (GPU) scales each phase's loss with its own scaler and skips that phase's step on
    overflow, agreed across ranks and counted."""
    compile: bool = False
    """Compile G, D and E with torch.compile (inductor) before training; needs a C++ compiler
    on CPU and costs about a minute at start-up. Measured on the mnist networks on a 2-core
    CPU: a few per cent faster than eager bf16 (BENCHMARKS.md, "Training step"); numbers
    agree with eager to rounding, not bit for bit."""
    strategy: Literal["ddp", "zero1", "zero2"] = "ddp"
    """How processes share the work: ddp (Accelerate's DistributedDataParallel, the default),
    or DeepSpeed ZeRO stage 1 or 2 (one engine for D and one for G+E; bf16 or fp32 only;
    `pip install dali-dist[deepspeed]`). Launch all of them as plain multi-process runs."""
    sync_bn: bool = False
    """Convert BatchNorm layers to SyncBatchNorm (statistics over the global batch; GPU/NCCL)."""
    max_nonfinite: int = 20
    """Iterations in a row with a skipped phase (non-finite loss or gradient) before training
    stops with an error; the last good checkpoint stays intact. fp16 overflow skips count too."""
    dist_timeout_s: int = 1800
    """Process-group timeout: a collective that waits longer than this on a silent rank fails
    instead of hanging the job (short values suit tests)."""
    log_every: int = 100
    """Steps between log lines and RUN_DIR/stats.jsonl records."""
    sample_every: int = 1000
    """Steps between sample images written to RUN_DIR/images (0 disables)."""
    checkpoint_every: int = 2000
    """Steps between checkpoints (a final one is always written)."""
    checkpoint_kimg: float = 0.0
    """Thousands of training images between checkpoints; when > 0 it replaces checkpoint_every
    (so the interval means the same data whatever the batch size)."""
    keep_checkpoints: int = 2
    """Newest complete checkpoints kept; older ones are deleted unless kept by keep_every."""
    keep_every: int = 0
    """Also keep every checkpoint whose step is a multiple of this (0 disables)."""
    keep_unevaluated: bool = False
    """Also keep checkpoints the evaluation job has not recorded yet (RUN_DIR/eval/step-N.json);
    turn on when an evaluation job follows the run (`dali-dist evaluate --watch`)."""


@dataclass
class EvalConfig:
    num_samples: int = 2500
    """Generated samples for sample metrics (2,500 for the 2D grid protocol)."""
    seed: int = 12345
    """Seed of the evaluation z draws (fixed, so metrics of two checkpoints compare)."""
    batch_size: int = 500
    """Generation batch size during evaluation."""


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log to MLflow (from the main process only)."""
    uri: Optional[str] = None
    """Tracking URI; None means MLFLOW_TRACKING_URI, else sqlite at <parent of RUN_DIR>/mlflow.db.
    SQLite on a shared file system is unsafe for concurrent jobs: use a server on clusters."""
    experiment: Optional[str] = None
    """MLflow experiment; None means the dataset as the shards' manifest names it."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    name: str = "run"
    """Run name (defaults to the preset's name)."""

    def __post_init__(self) -> None:
        validate(self)

    @property
    def lambda_e(self) -> float:
        return self.model.lambda_e if self.model.lambda_e is not None else 1.0 / self.model.latent_dim

    @property
    def has_encoder(self) -> bool:
        return self.model.variant in ENCODER_VARIANTS

    @property
    def encoder_reads_image(self) -> bool:
        """E takes x itself (ALI, or model.e_input=image) rather than D's feature map."""
        return self.model.variant == "ali" or self.model.e_input == "image"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------
# Validation: one readable message per inconsistent option (docs/design.md, 'Config validation').

_POSITIVE_INT = {
    "train.dist_timeout_s", "train.steps", "train.batch_size", "train.d_steps", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.max_nonfinite", "model.latent_dim", "model.width",
    "eval.num_samples", "eval.batch_size", "model.g_fc_width", "model.d_head_width",
}
# Upper limits on sizes, so that a typo is a config error instead of an allocator failure.
MAX_WIDTH = 16384
MAX_PARAMETERS = 2**31  # G, D and E together
# Sizes whose typo would exhaust memory or overflow a C integer further down.
_UPPER_LIMITS = {
    "model.latent_dim": MAX_WIDTH, "train.batch_size": 1 << 20, "eval.batch_size": 1 << 20,
    "eval.num_samples": 10_000_000, "train.d_steps": 1000, "train.dist_timeout_s": 365 * 24 * 3600,
    "train.seed": 2**63 - 1, "eval.seed": 2**63 - 1, "data.num_workers": 256,
}
_WIDTHS = ("model.width", "model.g_fc_width", "model.d_head_width", "model.e_head_width")
_NON_NEGATIVE_INT = {"model.lambda_e_ramp_steps", "train.export_bn_batches", "train.sample_every", "train.keep_every", "optim.warmup_steps", "data.num_workers"}


def validate(cfg: Config) -> None:
    """Every rule a resolved config must meet (after presets and overrides); the first rule
    broken is one `config:` error line naming the field."""
    _check_ranges(cfg)
    _check_combinations(cfg)
    _check_networks(cfg)
    _check_data(cfg)
    _check_network_size(cfg)


def _check_ranges(cfg: Config) -> None:
    """Numbers on their own: signs, [0, 1) rates, and upper limits on sizes."""
    for dotted in _POSITIVE_INT:
        if _get(cfg, dotted) <= 0:
            raise UserError(f"config: {dotted} must be a positive integer, got {_get(cfg, dotted)}")
    for dotted in _NON_NEGATIVE_INT:
        if _get(cfg, dotted) < 0:
            raise UserError(f"config: {dotted} must be >= 0, got {_get(cfg, dotted)}")
    for dotted in ("optim.lr_g", "optim.lr_d", "optim.lr_e"):
        if _get(cfg, dotted) is not None and not 0 < _get(cfg, dotted) < float("inf"):
            raise UserError(f"config: {dotted} must be > 0, got {_get(cfg, dotted)}")
    for dotted in ("optim.beta1", "optim.beta2", "train.ema_beta", "optim.min_lr_ratio"):
        v = _get(cfg, dotted)
        if not 0.0 <= v < 1.0 and not (dotted == "optim.min_lr_ratio" and v == 1.0):
            raise UserError(f"config: {dotted} must be in [0, 1), got {v}")
    if not cfg.train.checkpoint_kimg >= 0:
        raise UserError(f"config: train.checkpoint_kimg must be >= 0, got {cfg.train.checkpoint_kimg}")
    for dotted, limit in _UPPER_LIMITS.items():
        if _get(cfg, dotted) > limit:
            raise UserError(f"config: {dotted} must be at most {limit:,}, got {_get(cfg, dotted):,}")


def _check_combinations(cfg: Config) -> None:
    """Settings that are valid alone but not together (strategy, variant, update order)."""
    if cfg.train.strategy != "ddp":
        if cfg.train.mixed_precision == "fp16":
            raise UserError(f"config: train.strategy={cfg.train.strategy} runs bf16 or fp32 only (DeepSpeed's fp16 "
                            "loss scaler cannot skip one phase of a GAN step); use train.mixed_precision=bf16")
        if cfg.train.update_order != "alternating":
            raise UserError(f"config: train.strategy={cfg.train.strategy} needs train.update_order=alternating "
                            "(a DeepSpeed engine cannot take gradients for only some of its inputs)")
        if cfg.train.sync_bn:
            raise UserError("config: train.sync_bn is for train.strategy=ddp")
    if cfg.model.lambda_e is not None and not cfg.model.lambda_e >= 0:
        raise UserError(f"config: model.lambda_e must be >= 0 or null, got {cfg.model.lambda_e}")
    if cfg.model.variant == "dali-f" and cfg.model.adversarial != "gan":
        raise UserError("config: model.variant=dali-f plays the KL game of eq. 8; leave model.adversarial=gan")
    if cfg.model.variant == "ali" and cfg.model.adversarial != "gan":
        raise UserError("config: model.variant=ali supports model.adversarial=gan only")
    if cfg.model.variant == "ali" and cfg.train.update_order != "alternating":
        raise UserError("config: model.variant=ali needs train.update_order=alternating")
    if cfg.model.adversarial == "wgan-gp" and cfg.train.update_order != "alternating":
        raise UserError("config: model.adversarial=wgan-gp needs train.update_order=alternating")
    if not cfg.model.gp_weight >= 0:
        raise UserError(f"config: model.gp_weight must be >= 0, got {cfg.model.gp_weight}")
    if cfg.train.update_order == "simultaneous" and cfg.train.d_steps != 1:
        raise UserError("config: train.update_order=simultaneous takes train.d_steps=1")
    if not cfg.model.g_through_sigma and cfg.model.variant not in ("dali", "dali-f"):
        raise UserError(f"config: model.g_through_sigma=false needs a learned variance (variant dali or dali-f), "
                        f"not variant={cfg.model.variant}")
    if not cfg.model.logvar_min < cfg.model.logvar_max:
        raise UserError("config: model.logvar_min must be below model.logvar_max")


def _check_networks(cfg: Config) -> None:
    """Layer widths, the LeakyReLU slope, and image-network fields left alone for the MLP family."""
    for dotted in ("model.g_hidden", "model.d_hidden", "model.e_hidden"):
        widths = _get(cfg, dotted)
        if (not widths and dotted != "model.e_hidden") or any(w <= 0 for w in widths):
            raise UserError(f"config: {dotted} must be a non-empty list of positive widths, got {widths}")
        if any(w > MAX_WIDTH for w in widths):
            raise UserError(f"config: {dotted} widths must be at most {MAX_WIDTH}, got {widths}")
    for dotted in _WIDTHS:
        v = _get(cfg, dotted)
        if v is not None and not 1 <= v <= MAX_WIDTH:
            raise UserError(f"config: {dotted} must be between 1 and {MAX_WIDTH}, got {v}")
    if not 0.0 <= cfg.model.lrelu_slope < 1.0:
        raise UserError(f"config: model.lrelu_slope must be in [0, 1), got {cfg.model.lrelu_slope}")
    image_defaults = ModelConfig()
    if cfg.model.family == "mlp":
        changed = [f"model.{k}" for k in ("g_arch", "g_fc_width", "d_head", "d_head_width", "d_norm", "e_arch",
                                          "e_head_width", "lrelu_slope")
                   if getattr(cfg.model, k) != getattr(image_defaults, k)]
        if changed:
            raise UserError(f"config: {', '.join(changed)} apply to image networks (model.family=dcgan), "
                            "not to model.family=mlp")


def _check_data(cfg: Config) -> None:
    """The dataset against the network family, image resolution and channels, and the schedule."""
    is_2d = cfg.data.dataset == "grid2d"
    if is_2d and cfg.model.family != "mlp":
        raise UserError("config: data.dataset=grid2d needs model.family=mlp")
    if not is_2d:
        if cfg.model.family != "dcgan":
            raise UserError(f"config: data.dataset={cfg.data.dataset} needs model.family=dcgan")
        if cfg.data.resolution not in (28, 32, 64):
            raise UserError(f"config: data.resolution must be 28, 32 or 64 for images, got {cfg.data.resolution}")
        n_down = 2 if cfg.data.resolution == 28 else {32: 3, 64: 4}[cfg.data.resolution]
        deepest = cfg.model.width * 2 ** (n_down - 1)
        if deepest > MAX_WIDTH:
            raise UserError(f"config: model.width={cfg.model.width} at {cfg.data.resolution} px gives {deepest} channels "
                            f"in the deepest layer (limit {MAX_WIDTH}); lower model.width")
        if cfg.data.channels not in (1, 3):
            raise UserError(f"config: data.channels must be 1 or 3 for images, got {cfg.data.channels}")
        if cfg.data.source is None:
            raise UserError(
                f"config: data.source is required for {cfg.data.dataset} (a shard directory "
                "made by `dali-dist prep`, or pass --data DIR)"
            )
    if cfg.optim.warmup_steps >= cfg.train.steps:
        raise UserError(
            f"config: optim.warmup_steps ({cfg.optim.warmup_steps}) must be below train.steps ({cfg.train.steps})"
        )


def _check_network_size(cfg: Config) -> None:
    """Each width is bounded on its own, but the fully connected layers multiply them (the FC
    generator's and the MLP head's 7x7 maps): count the weights the config describes."""
    from .models import parameter_count  # models imports this module

    n = parameter_count(cfg)
    if n > MAX_PARAMETERS:
        raise UserError(
            f"config: these networks would hold {n:,} weights (limit {MAX_PARAMETERS:,}, 8 GiB in fp32 before "
            "gradients and Adam's moments); lower model.width, model.g_fc_width, model.d_head_width or "
            "model.e_head_width")


def _get(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------------------
# Building a Config from nested dicts with type checks and typo hints.

def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in args):
            # YAML 1.1 reads an unquoted `no` (or off/false) as False: `mixed_precision: no`
            spelled = ("yes", "on", "true") if value else ("no", "off", "false")
            value = next((a for a in args if a in spelled), value)
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(f"config: {where} must be one of {', '.join(map(str, args))}; got {value!r}{extra}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config: {where} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config: {where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise UserError(f"config: {where} must be an integer, got {value!r}")
        if not -(2**63) <= value < 2**63:
            raise UserError(f"config: {where} must fit in 64 bits, got {value}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 4e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config: {where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config: {where} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def _unknown_key(key: str, known: list[str], where: str) -> UserError:
    hint = difflib.get_close_matches(key, known, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
    return UserError(f"config: unknown key {where + key!r}{extra}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    if not isinstance(values, dict):
        raise UserError(f"config: {prefix.rstrip('.') or 'top level'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(str(key), names, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def preset_names() -> list[str]:
    files = resources.files("dali_dist") / "configs"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


MAX_DEPTH = 32  # a config is a few sections deep; anything far deeper is not a config


def _check_depth(value: Any, where: str) -> None:
    """Refuse deeply nested values before anything recurses into them (iteratively)."""
    stack = [(value, 0)]
    seen = 0
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UserError(f"{where}: values nested deeper than {MAX_DEPTH} levels")
        seen += 1
        if seen > 1_000_000:
            raise UserError(f"{where}: more than a million values; not a config")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, depth + 1) for x in v)


def _plain_data(value: Any, where: str) -> Any:
    """YAML anchors can build values that contain themselves; a config holds plain trees only."""
    _check_depth(value, where)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: values must be plain scalars, lists or mappings ({exc})") from None
    return value


def _read_yaml(text: str, where: str) -> dict:
    try:
        data = _plain_data(yaml.safe_load(text), where)
    except RecursionError:
        raise UserError(f"{where}: values nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{where}:{pos} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: the top level must be a mapping of sections")
    return data


def load_raw(name_or_path: str) -> tuple[dict, str]:
    """Return (dict, default run name) for a preset name or a YAML path."""
    path = Path(name_or_path)
    if name_or_path in preset_names():
        text = (resources.files("dali_dist") / "configs" / f"{name_or_path}.yaml").read_text()
        return _read_yaml(text, f"preset {name_or_path}"), name_or_path
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read config ({exc})") from None
        return _read_yaml(text, str(path)), path.stem
    hint = difflib.get_close_matches(name_or_path, preset_names(), n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise UserError(
        f"config: {name_or_path!r} is neither a preset ({', '.join(preset_names())}) nor a YAML file{extra}"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value); values are YAML scalars or lists."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.field=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: expected section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except RecursionError:
        raise UserError(f"--set {key}: value nested too deeply") from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), _plain_data(value, f"--set {key}")


def load_config(name_or_path: str, overrides: list[str] = (), data: Optional[str] = None) -> Config:
    try:
        return _load_config(name_or_path, overrides, data)
    except UserError as exc:  # the same on every rank of a launch: said once (errors.ConfigError)
        raise exc if isinstance(exc, ConfigError) else ConfigError(str(exc)) from None


def _load_config(name_or_path: str, overrides: list[str], data: Optional[str]) -> Config:
    raw, default_name = load_raw(name_or_path)
    raw = _merge({"name": default_name}, raw)
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        raw = _merge(raw, nested)
    if data is not None:
        raw = _merge(raw, {"data": {"source": data}})
    return _build(Config, raw)


def runs_a_command(source: Optional[str]) -> bool:
    """Whether opening ``source`` would run a program (webdataset's ``pipe:`` URLs, anywhere in
    a ``::``-joined list or a brace pattern)."""
    return source is not None and "pipe:" in str(source).lower()


def saved_source(source: Optional[str], where: str) -> Optional[str]:
    """A data source read from a saved config (a checkpoint's export, RUN_DIR/config.yaml):
    data, never code. A command-running source there is refused; only a person may type one
    (--data, --set, or a --config file they pass)."""
    if runs_a_command(source):
        raise UserError(f"{where}: the saved data.source runs a command (pipe:), and a source read from a "
                        "checkpoint or run directory is never executed; pass --data with the shards to read")
    return source


def config_from_dict(raw: dict) -> Config:
    """Rebuild a Config saved with a run (checkpoint export, config.yaml)."""
    return _build(Config, raw)


def read_saved_config(path: Path) -> dict:
    """RUN_DIR/config.yaml as a plain mapping, checked like a config (someone else may have
    written it); one line naming the file when it is unreadable, not a mapping or invalid."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the saved config ({exc})") from None
    raw = _read_yaml(text, str(path))
    if not raw:
        raise UserError(f"{path}: the saved config is empty")
    try:
        config_from_dict(raw)
    except UserError as exc:
        raise UserError(f"{path}: invalid saved config ({str(exc)[:300]})") from None
    return raw


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
