"""Errors meant for people: one clear sentence that says what is wrong and what to do."""


class MlxSpecError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""


class ModelFilesError(MlxSpecError):
    """A model folder or hub repo is missing, incomplete or corrupt."""


class ConfigError(MlxSpecError):
    """A config.json that this runtime cannot use."""


class PairMismatchError(MlxSpecError):
    """A drafter that was not made for this target."""
