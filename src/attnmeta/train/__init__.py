"""Training: trainer, checkpoints, configs, distributed."""

from attnmeta.train.averaging import ParameterAverage
from attnmeta.train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, save_checkpoint
from attnmeta.train.config import RunConfig, load_config_file, parse_overrides
from attnmeta.train.memory import retain_freed_memory
from attnmeta.train.run_folder import RunExistsError, RunLock, RunLockedError, load_run_config
from attnmeta.train.trainer import NonFiniteLossError, TrainResult, train

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "load_checkpoint",
    "save_checkpoint",
    "RunConfig",
    "load_config_file",
    "parse_overrides",
    "NonFiniteLossError",
    "RunExistsError",
    "RunLock",
    "RunLockedError",
    "load_run_config",
    "TrainResult",
    "train",
    "retain_freed_memory",
    "ParameterAverage",
]
