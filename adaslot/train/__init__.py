"""Training: `run_train(cfg)` (loop.py), one run's state (run.py), its inputs (inputs.py), the step (step.py),
the log (runlog.py), resume rules (resume.py) and periodic validation (validate.py)."""

from adaslot.train.inputs import CacheSource, OnlineSource, SampleStream, build_source
from adaslot.train.loop import run_train
from adaslot.train.resume import changed_settings
from adaslot.train.run import Run, checked_settings
from adaslot.train.runlog import MetricsLog, read_metrics
from adaslot.train.step import NoiseSampler, NonFiniteError, TrainForward, optimisation_step

__all__ = ["CacheSource", "MetricsLog", "NoiseSampler", "NonFiniteError", "OnlineSource",
           "Run", "SampleStream", "TrainForward", "build_source", "changed_settings", "checked_settings",
           "optimisation_step", "read_metrics", "run_train"]
