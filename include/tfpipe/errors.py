"""Errors a person can act on. Each names the file, key or column at fault."""


class TfpipeError(Exception):
    """Base class for expected failures: the message is the whole story, no traceback needed."""


class ConfigError(TfpipeError):
    """A pipeline config file is missing, unreadable or invalid."""


class DataError(TfpipeError):
    """Input data is missing, unreadable or malformed."""


class StageError(TfpipeError):
    """A stage was called with arguments it cannot work with."""
