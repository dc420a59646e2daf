"""Typed exceptions of the method; the CLI maps them to messages and exit codes."""


class EnhanceError(Exception):
    """Base class of every error the method raises on purpose."""


class InvalidInputError(EnhanceError, ValueError):
    """The image cannot be enhanced as given (NaN, wrong dimensionality, empty...)."""


class CheckpointError(EnhanceError):
    """A prior weights file is missing, corrupt, or not usable by this version."""


class DeviceError(EnhanceError):
    """The requested compute device is not available."""


class MissingDependencyError(EnhanceError, ImportError):
    """An optional package (e.g. bm3d) is needed for the requested method."""


class RegistrationError(EnhanceError):
    """Stacks meant to be fused could not be aligned; ``stacks`` holds what registration found for each."""

    def __init__(self, message: str, stacks: list[dict]):
        super().__init__(message)
        self.stacks = stacks
