"""cli_util.py: every kind of bad input ends as exactly one ``error: ...`` line on stderr and
exit code 2 (1 for a failed run, 130 for an interrupt); bugs keep their traceback; credentials
never reach the line; --device and the --checkpoint/--run-dir pair are checked up front."""

from __future__ import annotations

import errno

import pytest
import torch
import typer

from dali_dist.checkpoint import TrainState
from dali_dist.cli_util import check_device, chosen_checkpoint, exits_cleanly, launched_rank, run_single
from dali_dist.errors import ConfigError, TrainingFailed, UserError


def _raising(exc):
    def fn():
        raise exc
    return fn


def _run(capsys, fn, *args, **kwargs):
    """(exit code, stdout, stderr) of the wrapped call."""
    with pytest.raises(SystemExit) as info:
        exits_cleanly(fn)(*args, **kwargs)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


# ------------------------------------------------------------------------------------------ plain functions


@pytest.mark.parametrize("exc, code, line", [
    (UserError("data/x: no manifest.json"), 2, "error: data/x: no manifest.json"),
    (UserError("two\nlines   of  text"), 2, "error: two lines of text"),
    (ConfigError("config: train.steps must be a positive integer"), 2, "error: config: train.steps must be a positive integer"),
    (TrainingFailed("training diverged at step 5"), 1, "error: training diverged at step 5"),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/a/stats.jsonl"), 2,
     "error: /runs/a/stats.jsonl: No space left on device"),
    (OSError(errno.EACCES, "Permission denied"), 2, "error: Permission denied"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (MemoryError(), 2, "error: out of memory (out of memory); lower the sizes (batch, widths, samples)"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"), 2,
     "error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); lower the sizes (batch, widths, samples)"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried"), 2,
     "error: out of memory ([enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
     "you tried); lower the sizes (batch, widths, samples)"),
])
def test_bad_input_is_one_line_and_an_exit_code(capsys, exc, code, line):
    got, out, err = _run(capsys, _raising(exc))
    assert (got, out, err) == (code, "", line + "\n")


def test_torch_out_of_memory_error(capsys):
    assert _run(capsys, _raising(torch.OutOfMemoryError("x")))[::2] == (2, "error: out of memory (x); lower the "
                                                                         "sizes (batch, widths, samples)\n")


@pytest.mark.parametrize("exc", [ValueError("a bug"), RuntimeError("shape mismatch"), KeyError("k"),
                                 OSError(errno.ECONNREFUSED, "Connection refused")])
def test_bugs_keep_their_traceback(capsys, exc):
    with pytest.raises(type(exc)):
        exits_cleanly(_raising(exc))()
    assert capsys.readouterr().err == ""


def test_the_return_value_passes_through():
    assert exits_cleanly(lambda a, b=0: a + b)(2, b=3) == 5


def test_credentials_never_reach_the_line(capsys):
    code, _, err = _run(capsys, _raising(UserError("https://alice:hunter2@example.com/shards/{0..3}.tar: cannot open")))
    assert code == 2 and "hunter2" not in err and err.startswith("error: https://") and "example.com" in err


def test_a_config_error_is_printed_by_rank_zero_only(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _run(capsys, _raising(ConfigError("config: bad"))) == (2, "", "")
    # an error only this process may have is printed on every rank
    assert _run(capsys, _raising(UserError("shard-7.tar: truncated"))) == (2, "", "error: shard-7.tar: truncated\n")
    monkeypatch.setenv("RANK", "0")
    assert _run(capsys, _raising(ConfigError("config: bad"))) == (2, "", "error: config: bad\n")


@pytest.mark.parametrize("env, rank", [({}, 0), ({"RANK": "3"}, 0), ({"RANK": "3", "WORLD_SIZE": "4"}, 3),
                                       ({"RANK": "3", "WORLD_SIZE": "1"}, 0), ({"RANK": "x", "WORLD_SIZE": "4"}, 0),
                                       ({"RANK": "1", "WORLD_SIZE": "many"}, 0)])
def test_launched_rank(monkeypatch, env, rank):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert launched_rank() == rank


# ------------------------------------------------------------------------------------------ Typer apps


def _app():
    app = typer.Typer(add_completion=False, no_args_is_help=True)

    @app.command("go")
    def go(n: int = typer.Option(..., "--n"), name: str = typer.Option("x", "--name")):
        if n < 0:
            raise UserError(f"--n {n}: must be >= 0")
        typer.echo(f"{name} {n}")

    @app.command("other")
    def other():
        pass

    return app


@pytest.mark.parametrize("argv, fragment", [
    (["go", "--n", "abc"], "Invalid value for '--n'"),
    (["go"], "Missing option '--n'"),
    (["go", "--n", "1", "--bogus"], "No such option: --bogus"),
    (["nope"], "No such command 'nope'"),
    (["go", "--n", "-1"], "--n -1: must be >= 0"),
])
def test_typer_usage_errors_are_one_line(capsys, argv, fragment):
    code, out, err = _run(capsys, _app(), argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err


def test_a_typer_app_that_succeeds_exits_zero(capsys):
    assert _run(capsys, _app(), ["go", "--n", "4", "--name", "y"]) == (0, "y 4\n", "")


def test_a_bare_group_shows_its_help(capsys):
    code, out, err = _run(capsys, _app(), [])
    shown = out + err  # Typer's rich help goes to stdout, click's plain help to stderr
    assert code == 2 and "Usage:" in shown and "go" in shown and "other" in shown and "error:" not in shown


def test_typer_run_and_run_single(capsys, monkeypatch):
    def command(k: int = typer.Option(1, "--k")):
        typer.echo(f"k={k}")

    assert _run(capsys, typer.run, command, args=["--k", "3"]) == (0, "k=3\n", "")
    code, _, err = _run(capsys, typer.run, command, args=["--k", "three"])
    assert code == 2 and err.startswith("error: Invalid value for '--k'") and err.count("\n") == 1
    monkeypatch.setattr("sys.argv", ["prog", "--k", "nine"])
    with pytest.raises(SystemExit) as info:
        run_single(command)
    assert info.value.code == 2 and capsys.readouterr().err.startswith("error: Invalid value for '--k'")


# ------------------------------------------------------------------------------------------ up-front checks


def test_check_device():
    assert check_device(None) is None
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^--device 'gpu0': not a device \(cpu, cuda, cuda:N, mps\)$"):
        check_device("gpu0")
    with pytest.raises(UserError, match=r"^--device 'meta': meta is not supported here"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"^--device 'cuda:1': no cuda device is available on this machine$"):
            check_device("cuda:1")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(UserError, match=rf"^--device 'cuda:{n}': this machine has {n} CUDA device\(s\)$"):
            check_device(f"cuda:{n}")


def test_chosen_checkpoint(tmp_path):
    for both in ((None, None), (tmp_path / "c", tmp_path)):
        with pytest.raises(UserError, match="^give exactly one of --checkpoint or --run-dir$"):
            chosen_checkpoint(*both)
    assert chosen_checkpoint(tmp_path / "c", None) == tmp_path / "c"
    with pytest.raises(UserError, match="no complete checkpoint"):
        chosen_checkpoint(None, tmp_path)
    for s in (3, 12):
        p = tmp_path / "checkpoints" / f"step-{s}"
        p.mkdir(parents=True)
        (p / "train_state.json").write_text(TrainState(step=s).to_json())
    assert chosen_checkpoint(None, tmp_path) == tmp_path / "checkpoints" / "step-12"
