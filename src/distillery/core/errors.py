"""Errors a user can fix. Entry scripts print them as one line, without a traceback."""


class DistilleryError(Exception):
    """Base class: the message is meant for the user and names what to change."""


class ConfigError(DistilleryError):
    """A value in params.yaml is missing, unknown or out of range."""


class DataError(DistilleryError):
    """The input data cannot be used as it is."""


class TrainingError(DistilleryError):
    """Training cannot go on (for example the loss became NaN)."""


class TrackingError(DistilleryError):
    """The MLflow tracking server or database cannot be used."""
