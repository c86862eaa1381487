"""Split-inference scheduler (pure logic) and its trace-driven simulator.

The live edge runtime and `scheduler.simulate` drive the same `Scheduler`: report observations
(`observe_upload`, `observe_rtt`, `observe_device`, `observe_cloud`, `observe_failure`,
`observe_success`) with the runtime's own clock and call `decide(now_s)` before each frame.
Nothing in this package reads a clock, does I/O beyond the thin JSON loaders, or imports
TensorFlow.
"""
from scheduler.bundle import Bundle, build_configs, load_bundle
from scheduler.core import (Config, ConfigTable, Metric, Objective, Prediction, Slo, State, Where,
                            choose, estimate, estimate_all)
from scheduler.scheduler import Decision, Scheduler, SchedulerParams

__all__ = ["Bundle", "Config", "ConfigTable", "Decision", "Metric", "Objective", "Prediction",
           "Scheduler", "SchedulerParams", "Slo", "State", "Where", "build_configs", "choose",
           "estimate", "estimate_all", "load_bundle"]
