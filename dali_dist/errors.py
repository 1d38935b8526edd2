"""The one exception type that means "the user gave us something wrong".

Entry points catch it, print ``error: <message>`` on one line and exit with code 2
(see DESIGN.md section 6). Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input (config, CLI option, file). The message is one line and names the culprit."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always exactly one line


class TrainingDiverged(UserError):
    """Training cannot go on (e.g. non-finite gradients K iterations in a row); the last good
    checkpoint is intact. Exit code 1: a failure, not bad input, and not to be requeued."""

    exit_code = 1
