"""Training loop, hooks, checkpoints and multi-process helpers."""
from mlic.engine.checkpoint import (CheckpointError, CheckpointWriteError, atomic_save,  # noqa: F401
                                    latest_checkpoint, load_checkpoint, load_newest_intact)
from mlic.engine.hooks import DivergenceWatch, EvalHook, HookBase, MetricsWriter, PeriodicCheckpointer  # noqa: F401
from mlic.engine.trainer import Trainer, TrainingDiverged  # noqa: F401
