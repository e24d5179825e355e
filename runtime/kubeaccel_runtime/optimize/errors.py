"""The optimizer's error vocabulary; the CLI maps every one of them to exit 1 in one place."""

from __future__ import annotations


class OptimizeError(Exception):
    """Base of every expected optimization failure; the message is shown to the user."""

    reason = "OptimizationFailed"


class SourceError(OptimizeError):
    """The model source cannot be resolved or fetched."""

    reason = "SourceUnavailable"


class DigestMismatch(SourceError):
    """The fetched source does not have the sha256 the spec names."""

    reason = "DigestMismatch"

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{uri}: sha256 mismatch: spec says {expected}, the file has {actual}; "
            "refusing to use it"
        )
        self.expected = expected
        self.actual = actual


class UnsupportedModel(OptimizeError):
    """The model cannot be loaded, exported or optimized as asked."""

    reason = "UnsupportedModel"


class DataError(OptimizeError):
    """Validation or calibration data is missing or does not fit the model."""

    reason = "InvalidData"


class PartitionError(OptimizeError):
    """The graph cannot be split into the requested number of shards."""

    reason = "PartitionFailed"


class BudgetExceeded(OptimizeError):
    """The optimized model is outside the accuracy budget; it is never written."""

    reason = "AccuracyBudgetExceeded"


class ArtifactError(OptimizeError):
    """The artifact cannot be written."""

    reason = "ArtifactWriteFailed"


class ContractMismatch(OptimizeError):
    """The spec's inputs/outputs contract does not describe the model."""

    reason = "ContractMismatch"


class ProviderUnavailable(OptimizeError):
    """The execution provider the spec targets does not run where the optimizer runs."""

    reason = "ProviderUnavailable"
