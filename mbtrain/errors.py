"""The errors mbtrain raises; the CLI turns each into one `error: ...` line and an exit code.

Every message names the file, the dotted config key or the array at fault, what it
got and what is allowed.
"""


class MbtrainError(Exception):
    """A user's mistake: bad usage, config, data or checkpoint. Exit code 2."""

    exit_code = 2


class ConfigError(MbtrainError):
    """A config file or `--set` override is malformed or out of range."""


class DataError(MbtrainError):
    """A data file is missing, malformed or does not fit the model."""


class CheckpointError(MbtrainError):
    """A checkpoint is missing, corrupt, or does not match its config."""


class Diverged(Exception):
    """Training produced a non-finite loss or gradient. Exit code 3."""

    exit_code = 3


class Interrupted(Exception):
    """Training was interrupted (Ctrl-C / SIGINT / SIGTERM) after a checkpoint was saved. Exit code 130."""

    exit_code = 130
