"""Training loop, hooks, checkpoints and multi-process helpers."""
from mlic.engine.checkpoint import atomic_save, latest_checkpoint, load_checkpoint  # noqa: F401
from mlic.engine.hooks import EvalHook, HookBase, MetricsWriter, PeriodicCheckpointer  # noqa: F401
from mlic.engine.trainer import Trainer  # noqa: F401
