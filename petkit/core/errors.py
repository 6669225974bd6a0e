"""The errors petkit raises on bad input.

Every user-facing failure is a `PetkitError` with a one-sentence message that says what is wrong
and, where there is one, how to fix it. The CLI prints the message alone, without a traceback.
"""


class PetkitError(Exception):
    """Base class: a user-facing error with a plain-language message."""


class ConfigError(PetkitError, ValueError):
    """A method config or run config holds an invalid value or an unknown method."""


class TargetError(PetkitError, ValueError):
    """Targets that match no module, or match a layer type the method cannot wrap."""


class AdapterFileError(PetkitError, ValueError):
    """An adapter file that is missing, truncated, corrupt, or does not fit the model."""


class BaseModelMismatch(AdapterFileError):
    """An adapter saved for another base model (fingerprint differs)."""


class StateError(PetkitError, RuntimeError):
    """An operation that is not valid in the model's current state (e.g. unmerge with nothing merged)."""


class MissingExtra(PetkitError, ImportError):
    """A feature whose optional dependencies are not installed; the message names the pip extra."""


class KernelUnavailable(PetkitError, RuntimeError):
    """A native (C++) kernel that cannot be built or loaded here; the message says why and names the
    pure-PyTorch fallback."""
