"""User-facing errors. The CLI prints their message as one line instead of a traceback."""


class RsagentError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ImageError(RsagentError):
    """An image that cannot be read, is corrupt, or is too large."""


class MaskError(RsagentError):
    """A mask that cannot be read or does not fit its image."""


class ModelLoadError(RsagentError):
    """Weights or a config that cannot be found or loaded."""


class DatasetError(RsagentError):
    """A dataset root, split or annotation file that cannot be used as asked."""


class PolicyError(RsagentError):
    """A policy backend that cannot answer: a server that is unreachable, refuses, or answers garbage."""
