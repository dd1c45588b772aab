"""tvf.tune: the public entry of tuning; the work is done in tvmfront.tuning (see tuning.run
for how a run goes)."""

from .tuning.measure import measure_kernels, time_module
from .tuning.run import TuneReport, tune
from .tuning.search import TuneProgress
from .tuning.tasks import Kernel, kernels_of

__all__ = ["Kernel", "TuneProgress", "TuneReport", "kernels_of", "measure_kernels",
           "time_module", "tune"]
