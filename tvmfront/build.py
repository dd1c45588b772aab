"""IRModule + target (+ tuning records) -> compiled executable.

Scheduling is its own stage: tuning records (a MetaSchedule database directory) are applied
first, then default schedules for whatever they do not cover.
"""

from . import pipeline
from ._tvm import relax, tvm
from .target import resolve_target


def schedule_stage(target, records=None):
    """The stage that gives TIR kernels their schedules for `target`."""

    def schedule(mod):
        with target:
            if records is not None:
                mod = relax.transform.MetaScheduleApplyDatabase(str(records))(mod)
            if target.kind.name == "cuda":
                from tvm.s_tir import dlight as dl  # GPU kernels cannot run unscheduled

                mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                              dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
            # CPU kernels keep their naive loop nests until default CPU schedules land.
        return mod

    return schedule


def build(mod, target, records=None, dump_dir=None):
    """Lower `mod` through the pipeline, schedule it and compile it for `target`."""
    target = resolve_target(target)
    stages = pipeline.LOWERING + [("schedule", schedule_stage(target, records))]
    mod = pipeline.run(mod, stages, dump_dir)
    # Our stages already legalized and fused; TVM's build pipeline only lowers to the VM.
    return tvm.compile(mod, target=target,
                       relax_pipeline=relax.pipeline.default_build_pipeline()), target
