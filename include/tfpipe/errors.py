"""Errors a person can act on. Each names the file, key or column at fault."""


class TfpipeError(Exception):
    """Base class for expected failures: the message is the whole story, no traceback needed.

    `details` carries small JSON values that outlive the failure, such as the URI of the report
    that explains it, so the Airflow task can still link to it. The stage exits with `exit_code`:
    2 tells Airflow that retrying the same input cannot help.
    """

    exit_code = 2

    def __init__(self, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class ConfigError(TfpipeError):
    """A pipeline config file is missing, unreadable or invalid."""


class DataError(TfpipeError):
    """Input data is missing, unreadable or malformed."""


class StageError(TfpipeError):
    """A stage was called with arguments it cannot work with."""


class TransientError(TfpipeError):
    """A failure a retry can get past (a worker died, a collective hung): the stage exits 1, not 2,
    so the Airflow task uses its retries, and training resumes from its last checkpoint."""

    exit_code = 1
