"""The one exception type that means "the user gave us something wrong".

Entry points catch it, print ``error: <message>`` on one line and exit with code 2
(see docs/design.md, 'Errors and exit codes'). Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input (config, CLI option, file). The message is one line and names the culprit."""

    exit_code = 2
    same_on_every_rank = False  # an error only this process may have (its shard, its device)

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always exactly one line


class ConfigError(UserError):
    """A bad config, override or option: every process of a launch sees the same one, so under
    a launcher (``accelerate launch``, torchrun) only rank 0 prints it."""

    same_on_every_rank = True


class TrainingFailed(UserError):
    """Training cannot go on; the last good checkpoint is intact. Still one line, but exit
    code 1: a failure, not bad input, and not to be requeued."""

    exit_code = 1


class TrainingDiverged(TrainingFailed):
    """Non-finite losses or gradients train.max_nonfinite iterations in a row."""


class RankStoppedAnswering(TrainingFailed):
    """A collective timed out; the message names the silent rank(s) (watchdog.py)."""
