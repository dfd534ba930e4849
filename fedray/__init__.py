"""fedray's Python API (engine/api.py): ``fedray.config``, ``fedray.run``, ``fedray.study``,
``fedray.sweep`` and the ``Result`` of a run. The command line is ``python -m engine.run``."""

from engine import __version__
from engine.api import Config, ConfigError, Result, config, run, study, sweep

__all__ = ["Config", "ConfigError", "Result", "__version__", "config", "run", "study", "sweep"]
