"""The training loop: a Trainer is built once from the config, then ``run()`` takes steps and,
between them, does the per-tick upkeep (log, samples, checkpoint, stop).

One batch's path: the data stream -> ``DeviceBatches`` (on the device, float in [-1, 1]) ->
``DaliStep``'s phases (algorithm.py) -> the strategy's phase updates (strategy.py) -> the
statistics summed on the device, read once per tick.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from . import atomic
from .algorithm import DaliStep
from .batches import DeviceBatches
from .batchnorm import precise_bn_copy
from .checkpoint import TrainState, complete_checkpoints, resolve_resume
from .config import Config
from .distributed import any_rank, autocast_factory, check_world_size, make_accelerator, per_rank_batch
from .ema import EMA
from .errors import RankStoppedAnswering, TrainingDiverged, UserError
from .models import build_models
from .previews import fixed_test_batch, write_reconstructions, write_samples
from .run_checkpoints import Protect, RunCheckpoints
from .run_setup import (
    LR_RULE, check_run_config, next_steps, start_run_tracking, use_sync_batchnorm, warn_if_world_size_changed,
    write_run_config,
)
from .schedule import learning_rate_plan, ramp_factor, set_learning_rates
from .seeding import derive_seed, latent, reseed_step_generators
from .strategy import make_strategy
from .threads import configure_threads
from .tracking import NullTracker, check_store, system_metrics
from .watchdog import RankWatchdog

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


class Trainer:
    """Everything one training run needs, built once (``build``); ``run()`` trains."""

    @classmethod
    def build(cls, cfg: Config, run_dir: Path, resume: Optional[str] = None, *,
              protect: Optional[Protect] = None, data=None) -> "Trainer":
        """Check the run directory, build the networks, optimizers and strategy, restore the
        checkpoint ``resume`` names, open the data and tracking. ``data`` replaces the
        configured ``DeviceBatches`` (benchmarks feed synthetic batches)."""
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--run-dir {run_dir}: exists and is not a directory")
        for sub in ("checkpoints", "images"):  # found now, not at the first checkpoint or picture
            if (run_dir / sub).exists() and not (run_dir / sub).is_dir():
                raise UserError(f"{run_dir / sub}: exists and is not a directory (the run keeps its {sub} there)")
        accelerator = make_accelerator(cfg)
        threads = configure_threads()
        world = accelerator.num_processes
        check_world_size(world)
        batch = per_rank_batch(cfg, world)
        ckpt = resolve_resume(run_dir, resume)
        if resume is None and any((run_dir / "checkpoints").glob("step-*")):
            raise UserError(f"{run_dir}: already holds checkpoints; pass --resume auto to continue or choose a new --run-dir")
        if accelerator.is_main_process:
            if cfg.tracking.enabled:  # a bad or silent store is refused before anything is written
                check_store(cfg.tracking.uri, run_dir)
            check_run_config(run_dir, cfg, resuming=ckpt is not None)
        accelerator.wait_for_everyone()
        return cls(cfg, run_dir, accelerator, ckpt, threads=threads, batch=batch, protect=protect, data=data)

    def __init__(self, cfg: Config, run_dir: Path, accelerator, ckpt: Optional[Path], *, threads: int, batch: int,
                 protect: Optional[Protect] = None, data=None):
        self.cfg, self.run_dir, self.accelerator = cfg, run_dir, accelerator
        self.threads, self.batch = threads, batch
        self.rank, self.world, self.device = accelerator.process_index, accelerator.num_processes, accelerator.device
        self.is_main = accelerator.is_main_process
        self._build_networks(protect)
        self._restore_and_wrap(ckpt)
        # opening the stream checks the shards against the config: refused before RUN_DIR is made
        self.data = data if data is not None else DeviceBatches(cfg, self.rank, self.world, self.batch, self.device)
        if self.is_main:  # only now: a checkpoint that fails to load leaves RUN_DIR as it was
            write_run_config(run_dir, cfg)
        accelerator.wait_for_everyone()
        self._open_data_and_upkeep()
        self.lrs: dict[str, float] = {}
        self._reset_tick(time.perf_counter())

    def _build_networks(self, protect: Optional[Protect]) -> None:
        """The plain networks, their optimizers (through the strategy), EMA shadows, and what a
        checkpoint of them holds."""
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        G, D, E = build_models(cfg)
        if cfg.train.sync_bn:
            use_sync_batchnorm(self.accelerator, G, D, E)
        if cfg.train.compile:  # in place: state-dict keys, DDP wrapping and export stay as they are
            for net in (G, D, E):
                if net is not None:
                    net.compile()
        self.G, self.D, self.E = G, D, E  # the plain modules: EMA, export, samples, checkpoints
        self.lr_plan = learning_rate_plan(cfg, E is not None)
        ge_groups = [{"params": list(G.parameters()), "lr": cfg.optim.lr_g}]
        if E is not None:  # E's own group: its own rate, and maybe no decay (optim.lr_e, optim.schedule_e)
            ge_groups.append({"params": list(E.parameters()), "lr": self.lr_plan["ge"][1][0]})
        self.strategy = make_strategy(self.accelerator, cfg)
        self.strategy.build_optimizers(G, D, E, ge_groups)
        # Only G is averaged: beside the averaged G the live E reconstructs far better than an
        # averaged one (Fashion-MNIST at 6,000 steps, test MSE: DALI 0.030 against 0.041, ALI
        # 0.041 against 0.062; BENCHMARKS.md, "EMA of the generator on images").
        self.ema_g = EMA(G, cfg.train.ema_beta) if cfg.train.ema_beta > 0 else None
        self.checkpoints = RunCheckpoints(
            self.run_dir, cfg, self.accelerator, self.strategy,
            {"G": G, "D": D, "E": E, "G_ema": self.ema_g and self.ema_g.shadow},
            export=lambda: dict(zip("GDE", self.exported_networks())), protect=protect,
        )

    def _restore_and_wrap(self, ckpt: Optional[Path]) -> None:
        """Load the checkpoint (weights and whole optimizer states first, the strategy's
        per-rank partitions once wrapped), wrap the networks, and set up the step."""
        cfg, acc = self.cfg, self.accelerator
        self.state = TrainState()
        if ckpt is not None:
            self.state = self.checkpoints.load(ckpt)
            acc.print(f"resumed from {ckpt} at step {self.state.step}")
            warn_if_world_size_changed(acc, cfg, self.state, self.world, self.batch)
        self.nets = self.strategy.wrap(self.G, self.D, self.E)
        if ckpt is not None:
            self.strategy.load_partitions(ckpt)
        if self.ema_g is not None:
            self.ema_g.shadow.to(self.device)
        self.updates = self.strategy.updates
        for upd in self.updates:
            upd.load_state_dict(self.state.phases.get(upd.name, {}))
        self.step_fn = DaliStep(
            self.nets, variant=cfg.model.variant, lambda_e=cfg.lambda_e, update_order=cfg.train.update_order,
            adversarial=cfg.model.adversarial, gp_weight=cfg.model.gp_weight,
            autocast=autocast_factory(self.device, cfg), updates=self.updates,
            encoder_reads_image=cfg.encoder_reads_image, g_through_sigma=cfg.model.g_through_sigma,
        )

    def _open_data_and_upkeep(self) -> None:
        """The batch stream (from where the checkpoint left it), the fixed preview inputs,
        tracking, stop requests and the rank watchdog."""
        cfg = self.cfg
        self.batches = self.data.start(self.state.batches_consumed)
        self.is_2d = cfg.data.dataset == "grid2d"
        self.z_fixed = latent(min(cfg.eval.num_samples, 2500) if self.is_2d else 64, cfg.model.latent_dim, "fixed",
                              cfg.train.seed, device=self.device)
        # reconstruction grids show test images of the shards the run reads
        self.x_recon = fixed_test_batch(cfg) if self.is_main and self.data.info is not None else None
        if self.x_recon is not None:
            self.x_recon = self.x_recon.to(self.device)
        self.tracker = (start_run_tracking(cfg, self.run_dir, self.world, self.batch, self.data.info) if self.is_main
                        else NullTracker())
        self.stopper = StopRequest(self.run_dir)
        self.watchdog = RankWatchdog.for_process_group(self.rank, self.world, cfg.train.dist_timeout_s)

    # -- the loop: per-step work first, per-tick upkeep after -------------------------------
    def run(self) -> int:
        """Train to ``cfg.train.steps``; returns 0, or EXIT_REQUEUE after a requested stop."""
        cfg, state, acc = self.cfg, self.state, self.accelerator
        self._print_banner()
        stats_file = open(self.run_dir / "stats.jsonl", "a") if self.is_main else None
        self.session_start = time.perf_counter()
        self._reset_tick(self.session_start)
        self.elapsed_before = state.elapsed_s
        bar = tqdm(total=cfg.train.steps, initial=state.step, disable=not self.is_main, dynamic_ncols=True, desc="train")
        exit_code, status = 0, "FAILED"
        # with several processes a stop request costs an all-reduce and a host sync: ask every few steps
        stop_poll_every = 1 if self.world == 1 else STOP_POLL_EVERY
        try:
            while state.step < cfg.train.steps:
                self.watchdog.beat(state.step)
                self.step()
                bar.update(1)
                if self.device.type != "cuda":  # no launch queue to stall: check every step
                    self.check_divergence()

                # per-tick upkeep (a stop request flushes the tick, checkpoints and leaves)
                last = state.step >= cfg.train.steps
                stopping = not last and state.step % stop_poll_every == 0 and any_rank(acc, self.stopper.requested())
                ticking = state.step % cfg.train.log_every == 0 or last or stopping
                checkpointing = self.checkpoint_due(state.step) or last or stopping
                if ticking or checkpointing:
                    self.check_divergence()
                if ticking:
                    self.log_tick(stats_file, bar)
                if self.is_main and cfg.train.sample_every and (state.step % cfg.train.sample_every == 0 or last):
                    self.write_previews()
                state.elapsed_s = self.elapsed_before + time.perf_counter() - self.session_start
                if checkpointing:
                    self.checkpoints.save(state, self.updates)
                if stopping:
                    acc.print(f"stop requested: checkpointed step {state.step}, exiting {EXIT_REQUEUE} to be requeued")
                    exit_code = EXIT_REQUEUE
                    break
            status = "KILLED" if exit_code == EXIT_REQUEUE else "FINISHED"
        except RuntimeError as exc:
            if self.watchdog.report:  # a collective timed out: say who was missing, not just that
                raise RankStoppedAnswering(f"{self.watchdog.report} ({str(exc).splitlines()[0][:200]})") from None
            raise
        finally:
            # shut the data workers down now: they ignore SIGTERM (data.py), so one left to
            # interpreter exit would hang the process there
            self.batches.close()
            self.watchdog.close()
            bar.close()
            self.tracker.close(status)
            if stats_file:
                stats_file.close()
        return exit_code

    # -- one step ----------------------------------------------------------------------------
    def step(self) -> None:
        """One Algorithm 1 iteration; its statistics are summed on the device for the tick."""
        cfg, state = self.cfg, self.state
        # learning rates are a pure function of the step (nothing to save)
        self.lrs = set_learning_rates(state.step, cfg, self.data.batches_per_epoch,
                                      {"d": self.nets.opt_d, "ge": self.nets.opt_ge}, self.lr_plan)
        self.step_fn.lambda_e = cfg.lambda_e * ramp_factor(state.step, cfg.model.lambda_e_ramp_steps)

        # d_steps real batches and d_steps + 1 z draws
        n_real = cfg.train.d_steps if cfg.train.update_order == "alternating" else 1
        reals = [next(self.batches) for _ in range(n_real)]
        state.batches_consumed += n_real
        n_z = n_real + 1 if cfg.train.update_order == "alternating" else 1
        zs = [latent(self.batch, cfg.model.latent_dim, cfg.train.seed, self.rank, state.step, i, device=self.device)
              for i in range(n_z)]
        # randomness inside the step (ALI's encoder noise, WGAN-GP's interpolation weights)
        # uses the global generator: reseed it per (seed, rank, step) for exact resumes
        reseed_step_generators(derive_seed("step", cfg.train.seed, self.rank, state.step), self.device)
        stats = self.step_fn(reals, zs)
        if self.ema_g is not None:
            self.ema_g.update(self.G)
        state.step += 1
        self.stat_names = list(stats)
        step_vec = torch.stack(list(stats.values()))
        self.tick_sum = step_vec if self.tick_sum is None else self.tick_sum + step_vec
        self.tick_n += 1

    def check_divergence(self) -> None:
        """Stop when a phase was skipped max_nonfinite iterations in a row (skips are agreed
        across ranks, so every rank reaches the same verdict)."""
        longest = max(upd.pop_longest_run() for upd in self.updates)
        if longest >= self.cfg.train.max_nonfinite:
            last_good = complete_checkpoints(self.run_dir)
            raise TrainingDiverged(
                f"{self.run_dir}: {longest} iterations in a row had non-finite losses or gradients (by step "
                f"{self.state.step}); stopped without checkpointing, last good checkpoint: "
                f"{last_good[-1][1] if last_good else 'none'}; lower the learning rates or use bf16")

    # -- per-tick upkeep ---------------------------------------------------------------------
    def checkpoint_due(self, step: int) -> bool:
        kimg = int(self.cfg.train.checkpoint_kimg * 1000)
        if kimg:  # the image count crossed a multiple of checkpoint_kimg during this step
            return step * self.cfg.train.batch_size // kimg != (step - 1) * self.cfg.train.batch_size // kimg
        return step % self.cfg.train.checkpoint_every == 0

    def read_tick(self) -> dict[str, float]:
        """The tick's mean statistics (its one device-to-host copy); starts the next tick."""
        now = time.perf_counter()
        means = dict(zip(self.stat_names, (self.tick_sum / self.tick_n).tolist()))
        means["images_per_s"] = self.tick_n * self.cfg.train.batch_size / max(now - self.tick_start, 1e-9)
        self._reset_tick(now)
        return means

    def _reset_tick(self, now: float) -> None:
        self.tick_sum: Optional[torch.Tensor] = None  # per-step statistics summed on the device
        self.tick_n, self.tick_start = 0, now

    def log_tick(self, stats_file, bar) -> None:
        """One stats.jsonl record, the same metrics to MLflow, and the progress bar's numbers."""
        cfg, state, upd_d, upd_ge = self.cfg, self.state, *self.updates
        means = self.read_tick()
        images_per_s = means.pop("images_per_s")
        record = {"step": state.step, **means,
                  **self.lrs, **({"lambda_e": self.step_fn.lambda_e} if self.E is not None else {}),
                  "skipped_d_total": upd_d.skipped, "skipped_ge_total": upd_ge.skipped,
                  # data.on_corrupt=skip: samples this rank replaced (rank 0's count)
                  "corrupt_samples_skipped": getattr(self.data.stream, "corrupt_skipped", 0),
                  **({"loss_scale_d": upd_d.scale, "loss_scale_ge": upd_ge.scale}
                     if cfg.train.mixed_precision == "fp16" else {}),
                  "images_per_s": images_per_s,
                  "elapsed_s": self.elapsed_before + self.tick_start - self.session_start}
        if stats_file:
            stats_file.write(json.dumps(record) + "\n")
            stats_file.flush()
        self.tracker.log_metrics({**{k: v for k, v in record.items() if k != "step"}, **system_metrics()}, step=state.step)
        bar.set_postfix({"img/s": f"{record['images_per_s']:.0f}",
                         **{k: f"{record[k]:.3g}" for k in ("loss_d", "loss_g", "loss_e") if k in record}})

    def exported_networks(self):
        """(G, D, E) as exported and sampled: G's EMA weights when EMA is on, its BatchNorm
        statistics re-estimated (train.export_bn_batches); D and E live."""
        cfg = self.cfg
        G = precise_bn_copy(self.ema_g.shadow if self.ema_g else self.G, cfg.model.latent_dim,
                            batches=cfg.train.export_bn_batches, batch_size=self.batch, seed=cfg.train.seed)
        return G, self.D, self.E

    def write_previews(self) -> None:
        """Samples of G (and reconstructions of the fixed test batch), logged as artifacts."""
        G, D, E = self.exported_networks()
        png = write_samples(self.run_dir, self.state.step, G, self.z_fixed, self.is_2d)
        self.tracker.log_artifact(png, "images")
        if self.x_recon is not None:
            png = write_reconstructions(self.run_dir, self.state.step, self.cfg, G, D, E, self.x_recon)
            self.tracker.log_artifact(png, "images")

    # -- start and end -------------------------------------------------------------------------
    def _print_banner(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        acc.print(f"run directory: {self.run_dir}")
        acc.print(
            f"training {cfg.model.variant} on {cfg.data.dataset}: {self.world} process(es), device {self.device}, "
            f"global batch {cfg.train.batch_size} ({self.batch} per process), steps {self.state.step}->{cfg.train.steps}, "
            f"precision {cfg.train.mixed_precision}, {self.threads} CPU thread(s)\nlearning-rate rule: {LR_RULE}"
        )

    def finish(self, exit_code: int) -> int:
        """Record the verdict, say what to run next, and take the processes down together."""
        acc = self.accelerator
        if self.is_main:
            # Launchers (torchrun under `accelerate launch`) report any non-zero worker exit as
            # their own exit 1, so batch scripts read the trainer's real verdict from this file.
            atomic.write_text(self.run_dir / "exit_code", f"{exit_code}\n")
        acc.wait_for_everyone()
        acc.print(next_steps(self.cfg, self.run_dir, exit_code))
        acc.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # an explicit teardown: leaving it to interpreter exit aborted a rank now and then
            torch.distributed.destroy_process_group()
        return exit_code
