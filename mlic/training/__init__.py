"""Training and testing of the method's stages, as a library and behind tools/train.py,
tools/test.py and the demo: `train(TrainConfig)` returns the final weights' path,
`evaluate(EvalConfig)` the metrics (see mlic.training.config for an example)."""
from mlic.errors import UserInputError  # noqa: F401
from mlic.training.config import (DataConfig, EvalConfig, RunConfig, SolverConfig,  # noqa: F401
                                  TrainConfig)
from mlic.training.tasks import Switches  # noqa: F401
from mlic.training.test import evaluate  # noqa: F401
from mlic.training.train import train  # noqa: F401
