"""Train DALI (Algorithm 1) on one CPU, one GPU or many, through Accelerate.

    dali-dist train --config grid2d --run-dir runs/grid
    python -m dali_dist.train --config mnist --data data/fmnist --set train.steps=2000
    accelerate launch -m dali_dist.train --config cifar10 --data /shards/cifar10
    dali-dist train --config grid2d --run-dir runs/grid --resume auto    # continue

Exit codes: 0 finished, 2 bad input, 75 stopped (RUN_DIR/STOP, SIGTERM or SIGUSR1) after a
checkpoint, to be requeued. Under `accelerate launch` a stopped run exits 0 (the launcher
would turn 75 into a failure); RUN_DIR/exit_code always holds the trainer's own code.
"""
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Optional

import torch
import typer
from tqdm import tqdm

from . import atomic
from .algorithm import DaliStep, Networks
from .batches import DeviceBatches, check_data_matches
from .batchnorm import precise_bn_copy
from .checkpoint import (
    TrainState, complete_checkpoints, load_checkpoint, prune_checkpoints, resolve_resume, save_checkpoint,
)
from .cli_util import exits_cleanly
from .config import Config, dump_yaml, load_config
from .distributed import (
    any_rank, autocast_factory, check_world_size, make_accelerator, per_rank_batch, phase_updates, replicas_agree,
)
from .ema import EMA
from .errors import RankStoppedAnswering, TrainingDiverged, UserError
from .models import build_models
from .precision import make_adam
from .previews import fixed_test_batch, write_reconstructions, write_samples
from .run_setup import (
    LR_RULE, RESUME_MAY_CHANGE, next_steps, prepare_run_dir, start_run_tracking, use_sync_batchnorm,
    warn_if_world_size_changed,
)
from .schedule import learning_rate_plan, ramp_factor, set_learning_rates
from .seeding import derive_seed, latent, reseed_step_generators
from .threads import configure_threads
from .tracking import NullTracker, check_store, system_metrics
from .watchdog import RankWatchdog

# what callers and tests have always imported from here
__all__ = ["train", "train_command", "main", "EXIT_REQUEUE", "StopRequest", "DeviceBatches", "check_data_matches",
           "LR_RULE", "RESUME_MAY_CHANGE", "prepare_run_dir", "start_run_tracking", "learning_rate_plan",
           "set_learning_rates"]

EXIT_REQUEUE = 75
STOP_POLL_EVERY = 10  # steps between stop-request checks when several processes must agree


class StopRequest:
    """Set by SIGTERM/SIGUSR1 or by the file RUN_DIR/STOP; acted on at a step boundary."""

    def __init__(self, run_dir: Path):
        self.stop_file = run_dir / "STOP"
        self.signalled = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def requested(self) -> bool:
        return self.signalled or self.stop_file.exists()


def train(cfg: Config, run_dir: Path, resume: Optional[str] = None) -> int:
    """Run training to ``cfg.train.steps``; returns the process exit code."""
    # -- setup -------------------------------------------------------------------------------
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir}: exists and is not a directory")
    accelerator = make_accelerator(cfg)
    threads = configure_threads()
    rank, world = accelerator.process_index, accelerator.num_processes
    check_world_size(world)
    batch = per_rank_batch(cfg, world)
    ckpt = resolve_resume(run_dir, resume)
    if resume is None and any((run_dir / "checkpoints").glob("step-*")):
        raise UserError(f"{run_dir}: already holds checkpoints; pass --resume auto to continue or choose a new --run-dir")
    if accelerator.is_main_process:
        if cfg.tracking.enabled:  # a bad or silent store is refused before config.yaml is rewritten
            check_store(cfg.tracking.uri, run_dir)
        prepare_run_dir(run_dir, cfg, resuming=ckpt is not None)
    accelerator.wait_for_everyone()

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    G, D, E = build_models(cfg)
    if cfg.train.sync_bn:
        use_sync_batchnorm(accelerator, G, D, E)
    if cfg.train.compile:  # in place: state-dict keys, DDP wrapping and export stay as they are
        for net in (G, D, E):
            if net is not None:
                net.compile()
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    lr_plan = learning_rate_plan(cfg, E is not None)
    ge_groups = [{"params": list(G.parameters()), "lr": cfg.optim.lr_g}]
    if E is not None:  # E's own group: its own rate, and maybe no decay (optim.lr_e, optim.schedule_e)
        ge_groups.append({"params": list(E.parameters()), "lr": lr_plan["ge"][1][0]})
    if cfg.train.strategy == "ddp":
        # fused Adam on CUDA wants its parameters there when it is built (prepare would move them anyway)
        for net in (G, D, E):
            if net is not None:
                net.to(accelerator.device)
        opt_d = make_adam(D.parameters(), cfg.optim.lr_d, betas, accelerator.device)
        opt_ge = make_adam(ge_groups, cfg.optim.lr_g, betas, accelerator.device)
    else:  # ZeRO wraps a plain torch Adam and skips by itself
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.lr_d, betas=betas)
        opt_ge = torch.optim.Adam(ge_groups, lr=cfg.optim.lr_g, betas=betas)
    ema_g = EMA(G, cfg.train.ema_beta) if cfg.train.ema_beta > 0 else None
    ema_e = EMA(E, cfg.train.ema_beta) if cfg.train.ema_beta > 0 and E is not None else None

    zero_stage = {"zero1": 1, "zero2": 2}.get(cfg.train.strategy)
    state = TrainState()
    if ckpt is not None:
        state = load_checkpoint(
            ckpt,
            {"G": G, "D": D, "E": E, "G_ema": ema_g and ema_g.shadow, "E_ema": ema_e and ema_e.shadow},
            {} if zero_stage else {"d": opt_d, "ge": opt_ge},  # ZeRO partitions load below
        )
        accelerator.print(f"resumed from {ckpt} at step {state.step}")
        warn_if_world_size_changed(accelerator, cfg, state, world, batch)

    fp16 = cfg.train.mixed_precision == "fp16"
    plain = {"G": G, "D": D, "E": E}  # the unwrapped modules, for export and replica checks
    if zero_stage:
        from . import zero

        engine_d, engine_ge, _ = zero.build_engines(zero_stage, G, D, E, opt_d, opt_ge, batch, world, accelerator.device)
        G, D = engine_ge, engine_d  # called through their engines; E as a module of engine_ge
        updates = (zero.ZeroPhase("d", engine_d), zero.ZeroPhase("ge", engine_ge))
        if ckpt is not None:
            for upd in updates:
                zero.load_partition(ckpt, upd.name, upd.engine, rank, world)
    else:
        G, D, opt_d, opt_ge = accelerator.prepare(G, D, opt_d, opt_ge)
        if E is not None:
            E = accelerator.prepare(E)
        updates = phase_updates(accelerator, cfg, opt_d, opt_ge)
    if ema_g is not None:
        ema_g.shadow.to(accelerator.device)
    if ema_e is not None:
        ema_e.shadow.to(accelerator.device)
    nets = Networks(G, D, E, opt_d, opt_ge, D_frozen=plain["D"] if zero_stage else None)
    for upd in updates:
        upd.load_state_dict(state.phases.get(upd.name, {}))
    step_fn = DaliStep(
        nets, variant=cfg.model.variant, lambda_e=cfg.lambda_e, update_order=cfg.train.update_order,
        adversarial=cfg.model.adversarial, gp_weight=cfg.model.gp_weight,
        autocast=autocast_factory(accelerator.device, cfg), updates=updates,
    )
    device = accelerator.device
    data = DeviceBatches(cfg, rank, world, batch, device)
    batches = data.start(state.batches_consumed)
    d = cfg.model.latent_dim
    z_fixed = latent(min(cfg.eval.num_samples, 2500) if cfg.data.dataset == "grid2d" else 64, d, "fixed", cfg.train.seed, device=device)
    x_recon = fixed_test_batch(cfg) if accelerator.is_main_process else None
    if x_recon is not None:
        x_recon = x_recon.to(device)
    tracker = start_run_tracking(cfg, run_dir, world, batch, data.info) if accelerator.is_main_process else NullTracker()
    stopper = StopRequest(run_dir)
    is_2d = cfg.data.dataset == "grid2d"
    accelerator.print(f"run directory: {run_dir}")
    accelerator.print(
        f"training {cfg.model.variant} on {cfg.data.dataset}: {world} process(es), device {device}, "
        f"global batch {cfg.train.batch_size} ({batch} per process), steps {state.step}->{cfg.train.steps}, "
        f"precision {cfg.train.mixed_precision}, {threads} CPU thread(s)\nlearning-rate rule: {LR_RULE}"
    )
    kimg = int(cfg.train.checkpoint_kimg * 1000)

    def checkpoint_due(step: int) -> bool:
        if kimg:  # the image count crossed a multiple of checkpoint_kimg during this step
            return step * cfg.train.batch_size // kimg != (step - 1) * cfg.train.batch_size // kimg
        return step % cfg.train.checkpoint_every == 0

    def unwrap(m):
        for name, wrapped in (("G", G), ("D", D), ("E", E)):
            if m is not None and m is wrapped:
                return plain[name]
        return None if m is None else accelerator.unwrap_model(m)

    def checkpoint() -> None:
        diverged = replicas_agree(accelerator, {n: unwrap(m) for n, m in (("G", G), ("D", D), ("E", E)) if m is not None})
        if diverged:
            raise RuntimeError(f"step {state.step}: weights of {', '.join(diverged)} differ between ranks")
        state.world_size = world
        state.phases = {upd.name: upd.state_dict() for upd in updates}
        staged = {}
        if zero_stage:  # every rank writes its optimizer partition, then rank 0 commits
            staging = run_dir / "checkpoints" / f".zero-step-{state.step}"
            if accelerator.is_main_process and staging.exists():
                shutil.rmtree(staging)
            accelerator.wait_for_everyone()
            for upd in updates:
                zero.save_partition(staging, upd.name, upd.engine, rank)
            accelerator.wait_for_everyone()
            staged = {zero.ZERO_DIR: staging}
        if accelerator.is_main_process:
            export_g = precise_bn_copy(ema_g.shadow if ema_g else unwrap(G), d, batches=cfg.train.export_bn_batches,
                                       batch_size=batch, seed=cfg.train.seed)
            export_e = ema_e.shadow if ema_e else unwrap(E)
            save_checkpoint(
                run_dir, cfg, state,
                {"G": unwrap(G), "D": unwrap(D), "E": unwrap(E),
                 "G_ema": ema_g and ema_g.shadow, "E_ema": ema_e and ema_e.shadow},
                {} if zero_stage else {"d": opt_d, "ge": opt_ge},
                {"G": export_g, "D": unwrap(D), "E": export_e},
                staged=staged,
            )
            protect = frozenset()
            if cfg.train.keep_unevaluated:
                from .evaluate import evaluated_steps

                protect = frozenset(s for s, _ in complete_checkpoints(run_dir)) - evaluated_steps(run_dir)
            prune_checkpoints(run_dir, cfg.train.keep_checkpoints, cfg.train.keep_every, protect)
        accelerator.wait_for_everyone()

    # -- the loop: per-step work first, per-tick upkeep after -------------------------------
    stats_file = open(run_dir / "stats.jsonl", "a") if accelerator.is_main_process else None
    tick_sum: Optional[torch.Tensor] = None  # per-step statistics summed on the device, read once per tick
    tick_n, tick_start, session_start = 0, time.perf_counter(), time.perf_counter()
    elapsed_before = state.elapsed_s
    bar = tqdm(total=cfg.train.steps, initial=state.step, disable=not accelerator.is_main_process,
               dynamic_ncols=True, desc="train")
    exit_code = 0
    status = "FAILED"
    # with several processes a stop request costs an all-reduce and a host sync: ask every few steps
    stop_poll_every = 1 if world == 1 else STOP_POLL_EVERY

    def check_divergence() -> None:
        """Stop when a phase was skipped max_nonfinite iterations in a row (skips are agreed
        across ranks, so every rank reaches the same verdict)."""
        longest = max(upd.pop_longest_run() for upd in updates)
        if longest >= cfg.train.max_nonfinite:
            last_good = complete_checkpoints(run_dir)
            raise TrainingDiverged(
                f"{run_dir}: {longest} iterations in a row had non-finite losses or gradients (by step "
                f"{state.step}); stopped without checkpointing, last good checkpoint: "
                f"{last_good[-1][1] if last_good else 'none'}; lower the learning rates or use bf16")

    watchdog = RankWatchdog.for_process_group(rank, world, cfg.train.dist_timeout_s)
    try:
        while state.step < cfg.train.steps:
            watchdog.beat(state.step)
            # learning rates are a pure function of the step (nothing to save)
            lrs = set_learning_rates(state.step, cfg, data.batches_per_epoch, {"d": opt_d, "ge": opt_ge}, lr_plan)
            step_fn.lambda_e = cfg.lambda_e * ramp_factor(state.step, cfg.model.lambda_e_ramp_steps)

            # one Algorithm 1 iteration: d_steps real batches and d_steps + 1 z draws
            n_real = cfg.train.d_steps if cfg.train.update_order == "alternating" else 1
            reals = [next(batches) for _ in range(n_real)]
            state.batches_consumed += n_real
            n_z = n_real + 1 if cfg.train.update_order == "alternating" else 1
            zs = [latent(batch, d, cfg.train.seed, rank, state.step, i, device=device) for i in range(n_z)]
            # randomness inside the step (ALI's encoder noise, WGAN-GP's interpolation weights)
            # uses the global generator: reseed it per (seed, rank, step) for exact resumes
            reseed_step_generators(derive_seed("step", cfg.train.seed, rank, state.step), device)
            stats = step_fn(reals, zs)
            if ema_g is not None:
                ema_g.update(unwrap(G))
                if ema_e is not None:
                    ema_e.update(unwrap(E))
            state.step += 1
            bar.update(1)
            stat_names = list(stats)
            step_vec = torch.stack(list(stats.values()))
            tick_sum = step_vec if tick_sum is None else tick_sum + step_vec
            tick_n += 1
            if device.type != "cuda":  # no launch queue to stall: check every step
                check_divergence()

            # per-tick upkeep (a stop request flushes the tick, checkpoints and leaves)
            last = state.step >= cfg.train.steps
            stopping = not last and state.step % stop_poll_every == 0 and any_rank(accelerator, stopper.requested())
            ticking = state.step % cfg.train.log_every == 0 or last or stopping
            checkpointing = checkpoint_due(state.step) or last or stopping
            if ticking or checkpointing:
                check_divergence()
            if ticking:
                now = time.perf_counter()
                means = (tick_sum / tick_n).tolist()  # the tick's one device-to-host copy
                record = {"step": state.step, **dict(zip(stat_names, means)),
                          **lrs, **({"lambda_e": step_fn.lambda_e} if E is not None else {}),
                          "skipped_d_total": updates[0].skipped, "skipped_ge_total": updates[1].skipped,
                          # data.on_corrupt=skip: samples this rank replaced (rank 0's count)
                          "corrupt_samples_skipped": getattr(data.stream, "corrupt_skipped", 0),
                          **({"loss_scale_d": updates[0].scale, "loss_scale_ge": updates[1].scale} if fp16 else {}),
                          "images_per_s": tick_n * cfg.train.batch_size / max(now - tick_start, 1e-9),
                          "elapsed_s": elapsed_before + now - session_start}
                if stats_file:
                    stats_file.write(json.dumps(record) + "\n")
                    stats_file.flush()
                tracker.log_metrics({**{k: v for k, v in record.items() if k != "step"}, **system_metrics()}, step=state.step)
                bar.set_postfix({"img/s": f"{record['images_per_s']:.0f}",
                                 **{k: f"{record[k]:.3g}" for k in ("loss_d", "loss_g", "loss_e") if k in record}})
                tick_sum, tick_n, tick_start = None, 0, now
            if accelerator.is_main_process and cfg.train.sample_every and (state.step % cfg.train.sample_every == 0 or last):
                sample_g = precise_bn_copy(ema_g.shadow if ema_g else unwrap(G), d, batches=cfg.train.export_bn_batches,
                                           batch_size=batch, seed=cfg.train.seed)
                png = write_samples(run_dir, state.step, sample_g, z_fixed, is_2d)
                tracker.log_artifact(png, "images")
                if x_recon is not None:
                    export_e = ema_e.shadow if ema_e else unwrap(E)
                    png = write_reconstructions(run_dir, state.step, cfg, sample_g, unwrap(D), export_e, x_recon)
                    tracker.log_artifact(png, "images")
            state.elapsed_s = elapsed_before + time.perf_counter() - session_start
            if checkpointing:
                checkpoint()
            if stopping:
                accelerator.print(f"stop requested: checkpointed step {state.step}, exiting {EXIT_REQUEUE} to be requeued")
                exit_code = EXIT_REQUEUE
                break
        status = "KILLED" if exit_code == EXIT_REQUEUE else "FINISHED"
    except RuntimeError as exc:
        if watchdog.report:  # a collective timed out: say who was missing, not just that
            raise RankStoppedAnswering(f"{watchdog.report} ({str(exc).splitlines()[0][:200]})") from None
        raise
    finally:
        watchdog.close()
        bar.close()
        tracker.close(status)
        if stats_file:
            stats_file.close()
    if accelerator.is_main_process:
        # Launchers (torchrun under `accelerate launch`) report any non-zero worker exit as
        # their own exit 1, so batch scripts read the trainer's real verdict from this file.
        atomic.write_text(run_dir / "exit_code", f"{exit_code}\n")
    accelerator.wait_for_everyone()
    accelerator.print(next_steps(cfg, run_dir, exit_code))
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # an explicit teardown: leaving it to interpreter exit aborted a rank now and then
        torch.distributed.destroy_process_group()
    return exit_code


def train_command(
    config: str = typer.Option("grid2d", "--config", "-c", help="Preset name (grid2d, mnist, cifar10, celeba) or a YAML file."),
    data: Optional[str] = typer.Option(None, "--data", help="Shard directory or URL pattern (sets data.source)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>-<time>)."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (sets tracking.uri)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config field: section.field=value (repeatable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="'auto' (newest complete checkpoint) or a checkpoint path."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train DALI (Algorithm 1)."""
    if tracking_uri is not None:
        overrides = [*overrides, f"tracking.uri={tracking_uri}"]
    cfg = load_config(config, overrides, data)
    if dry_run:
        typer.echo(dump_yaml(cfg), nl=False)
        return
    if run_dir is None:
        if resume is not None and resume != "auto":
            run_dir = Path(resume).resolve().parent.parent
        elif resume == "auto":
            raise UserError("--resume auto needs --run-dir (the run to continue)")
        else:
            run_dir = Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    code = train(cfg, run_dir, resume)
    if code == EXIT_REQUEUE and os.environ.get("TORCHELASTIC_RUN_ID"):
        # Under a launcher a non-zero exit becomes a failure with a traceback; exit cleanly
        # and let RUN_DIR/exit_code (75) tell the batch script to requeue.
        code = 0
    raise typer.Exit(code)


def main() -> None:
    exits_cleanly(typer.run)(train_command)


if __name__ == "__main__":
    main()
