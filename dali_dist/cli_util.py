"""Turn bad-input exceptions into one line on stderr and exit code 2 (docs/design.md, 'Errors and exit codes')."""

from __future__ import annotations

import errno
import functools
import sys

from .errors import UserError

# Errors of the place the user pointed us at (a full disk or quota, an unwritable, read-only
# or misnamed run directory), wherever they surface: one line naming the file, no traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
                       errno.ENOTDIR, errno.EISDIR}


def _redacted(message) -> str:
    """An error line never shows credentials (URL user:password@, tokens in queries, secret
    environment values): data sources and tracking URIs may carry them."""
    from .tracking import redact

    return redact(str(message))


def launched_rank() -> int:
    """This process's rank under a launcher that starts several (torchrun sets RANK and
    WORLD_SIZE); 0 otherwise."""
    import os

    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


def _out_of_memory(exc: BaseException) -> bool:
    """An allocator failure (host or GPU) from sizes someone asked for, not a bug."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower()


def _click_exceptions() -> tuple[tuple, tuple, tuple]:
    """(usage errors, 'no arguments: show help', abort) of click and of the copy of click that
    newer Typer versions carry inside themselves."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(__import__(name, fromlist=["ClickException"]))
        except ImportError:
            pass
    pick = lambda attr: tuple(getattr(m, attr) for m in mods if hasattr(m, attr))  # noqa: E731
    return pick("ClickException"), pick("NoArgsIsHelpError"), pick("Abort")


def _run_click(fn, args, kwargs):
    """Run a Typer app (or ``typer.run(function)``) without click's standalone mode, so that a
    bad option value reaches us as an exception instead of being printed as a usage box."""
    import typer

    if fn is typer.run:
        app = typer.Typer(add_completion=False)
        app.command()(args[0])
        argv = kwargs.get("args")
    else:
        app = fn
        argv = args[0] if args else kwargs.get("args")
    command = typer.main.get_command(app)
    code = command.main(args=None if argv is None else list(argv), standalone_mode=False)
    sys.exit(code if isinstance(code, int) else 0)


def exits_cleanly(fn):
    """Wrap a Typer app or ``typer.run``: bad input of any kind, Typer's option checks included,
    ends as one ``error: ...`` line with exit code 2."""
    import typer

    clickish = fn is typer.run or isinstance(fn, typer.Typer)
    click_error, no_args_help, abort = _click_exceptions()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if clickish:
                return _run_click(fn, args, kwargs)
            return fn(*args, **kwargs)
        except no_args_help as exc:  # a bare group: its help, as usual
            print(exc.ctx.get_help(), file=sys.stderr)
            sys.exit(2)
        except click_error as exc:
            print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(UserError.exit_code)
        except abort:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except UserError as exc:
            if not (exc.same_on_every_rank and launched_rank() > 0):
                print(f"error: {_redacted(exc)}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {_redacted(f'{where}{exc.strerror or exc}')}", file=sys.stderr)
            sys.exit(UserError.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            first = (str(exc).strip().splitlines() or ["out of memory"])[0][:300]
            print(f"error: out of memory ({first}); lower the sizes (batch, widths, samples)", file=sys.stderr)
            sys.exit(UserError.exit_code)

    return wrapper


def check_device(name: str | None):
    """--device as a torch.device this machine has, else one line (before any work: torch
    would fail later with a traceback, or on the first tensor moved)."""
    if name is None:
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {name!r}: not a device (cpu, cuda, cuda:N, mps)") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if device.type not in available:
        raise UserError(f"--device {name!r}: {device.type} is not supported here (cpu, cuda, cuda:N, mps)")
    if not available[device.type]():
        raise UserError(f"--device {name!r}: no {device.type} device is available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


# One way to name what to load, on every command that reads a checkpoint.
CHECKPOINT_HELP = "A step-<N>/ folder or its export/ (or give --run-dir)."
RUN_DIR_HELP = "A run directory: its newest complete checkpoint (or give --checkpoint)."


def checkpoint_options():
    """The (--checkpoint, --run-dir) pair, the same help text everywhere."""
    import typer

    return (typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP),
            typer.Option(None, "--run-dir", help=RUN_DIR_HELP))


def chosen_checkpoint(checkpoint, run_dir):
    """The checkpoint named by exactly one of --checkpoint and --run-dir."""
    from .checkpoint import newest_checkpoint

    if (checkpoint is None) == (run_dir is None):
        raise UserError("give exactly one of --checkpoint or --run-dir")
    return checkpoint if checkpoint is not None else newest_checkpoint(run_dir)


def run_single(command) -> None:
    """One Typer command as a whole program (``python -m data_prep.<name>``)."""
    import typer

    app = typer.Typer(add_completion=False)
    app.command()(command)
    exits_cleanly(app)()
