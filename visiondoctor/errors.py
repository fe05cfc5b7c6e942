"""Exceptions that are the user's input, not our bug: the CLI prints them as a message and exits 2."""
from visiondoctor.config import ConfigError
from visiondoctor.data.samples import DataError
from visiondoctor.engine.checkpoint import CheckpointError
from visiondoctor.models.detection import WeightsUnavailable
from visiondoctor.report.compare import ComparisonError
from visiondoctor.tasks.export import ExportError

USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError, ConfigError, ComparisonError, ExportError, CheckpointError, WeightsUnavailable, FileNotFoundError, ValueError, KeyError,
)
