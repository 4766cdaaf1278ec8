"""Does distillation help? The method's paper-vs-code switches against the student
without distillation on the embedded benchmark, over seeds (tools/study.py)."""
from mlic.study.driver import StudyError, run_study
from mlic.study.pipeline import BASELINE, GRID, PAPER_L2, RELEASED, Arm
from mlic.study.presets import PRESETS, Preset, get_preset

__all__ = ["Arm", "BASELINE", "GRID", "PAPER_L2", "PRESETS", "Preset", "RELEASED", "StudyError", "get_preset",
           "run_study"]
