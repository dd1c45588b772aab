"""One data-parallel train step: gradients on this rank's shard, one allreduce of everything
packed in one buffer, the same optimizer step on every rank."""

import hashlib
import time

import numpy as np

from .._checks import is_float_dtype
from .comm import DistributedError
from .pack import Packed

_REDUCIBLE = (np.dtype("float32"), np.dtype("float64"))


class DataParallel:
    """Runs a TrainingModule's steps data-parallel over the ranks of `world` (init()'s).

    Every step: this rank's gradients (module.compute_gradients), each weighted by the rank's
    sample count; one allreduce of one buffer holding all of them, the floating-point buffers
    (BatchNorm's running statistics), the loss and the count; division by the global count;
    then module.apply_gradients on every rank. Ranks start from the same state
    (broadcast_state) and apply the same update, so they stay identical.

    BatchNorm normalises with each rank's own batch statistics (as PyTorch's DDP without
    SyncBatchNorm; the compiled forward cannot pause for a collective), and its running
    statistics are averaged across ranks in the same allreduce: the running mean is then
    exactly the one-process value, the running variance the mean of the ranks' variances.

    >>> world = tvf.distributed.init()
    >>> parallel = DataParallel(module, world)   # compile_training(..., accumulate=True)
    >>> parallel.broadcast_state()
    >>> loss = parallel.step(x_shard, y_shard)   # the global batch's loss
    """

    def __init__(self, module, world):
        if not module.manifest.get("accumulate"):
            raise ValueError("data-parallel training runs the gradients and the update as two "
                             "calls: compile_training(..., accumulate=True)")
        self.module, self.world = module, world
        grads = [(tuple(s["shape"]), s["dtype"]) for s in module.gradient_specs()]
        buffers = module.manifest.get("buffers", [])
        # integer buffers (BatchNorm's batch counter) are counters every rank advances alike
        self._averaged = [i for i, b in enumerate(buffers) if is_float_dtype(b["dtype"])]
        specs = grads + [(tuple(buffers[i]["shape"]), buffers[i]["dtype"])
                         for i in self._averaged]
        odd = sorted({str(d) for _, d in specs if np.dtype(d) not in _REDUCIBLE})
        if odd:
            raise ValueError(f"data-parallel training averages float32 and float64 tensors "
                             f"(MPI sums no other float type); this module has {odd}")
        scalar = specs[0][1] if specs else "float32"
        # the loss and the sample count ride in the first buffer: no extra message
        self._packed = Packed(specs + [((), scalar), ((), scalar)])
        self._grads = len(grads)
        self.timings = {"steps": 0, "compute_s": 0.0, "allreduce_s": 0.0, "apply_s": 0.0}

    @property
    def message_bytes(self):
        """Bytes each rank sends into the allreduce of one step."""
        return sum(b.nbytes for b in self._packed.buffers.values())

    def step(self, x, y, lr=None, extras=None, **scalars):
        """One train step on this rank's shard (x, y[, extras]) of the global batch; returns
        the global batch's mean loss (the same on every rank). A rank whose shard is empty
        (a last batch smaller than the number of ranks) passes y of length 0."""
        m, views = self.module, self._packed.views
        n = len(y)
        t0 = time.perf_counter()
        buffers = None
        if n:
            loss, grads = m.compute_gradients(x, y, extras, stream=self.world.rank)
            buffers = m.buffer_arrays()
            local = grads + [buffers[i] for i in self._averaged] + [loss]
            for view, value in zip(views, local):
                np.multiply(value, n, out=view)  # weighted: shards may differ by a sample
            views[-1][...] = n
        else:
            for b in self._packed.buffers.values():
                b[...] = 0
        t1 = time.perf_counter()
        for buffer in self._packed.buffers.values():
            self.world.allreduce_sum(buffer, f"the gradient allreduce of train step "
                                             f"{m.step_count + 1}")
        t2 = time.perf_counter()
        total = float(views[-1])
        if total <= 0:
            raise ValueError(f"train step {m.step_count + 1}: no rank had a sample")
        loss = float(views[-2]) / total
        for b in self._packed.buffers.values():
            b /= total
        if self._averaged:
            buffers = buffers or m.buffer_arrays()
            for i, view in zip(self._averaged, views[self._grads:]):
                buffers[i] = view
            m.set_buffer_arrays(buffers)
        m.apply_gradients(views[:self._grads], lr=lr, **scalars)
        t3 = time.perf_counter()
        self.timings["steps"] += 1
        for key, seconds in (("compute_s", t1 - t0), ("allreduce_s", t2 - t1),
                             ("apply_s", t3 - t2)):
            self.timings[key] += seconds
        return loss

    def broadcast_state(self):
        """Rank 0's parameters, buffers, optimizer state, step count and lr on every rank, after
        checking that every rank holds the same model (names, shapes, dtypes)."""
        m, world = self.module, self.world
        state, optim = m.state_dict(), m.optimizer_state()
        layout = [[n, list(a.shape), str(a.dtype)] for n, a in [*state.items(), *optim.items()]]
        if world.broadcast_json(layout, "the model check") != layout:
            raise DistributedError(f"rank {world.rank}'s model differs from rank 0's (parameter "
                                   f"names, shapes or dtypes): every rank must compile the same "
                                   f"model")
        arrays = [*state.values(), *optim.values()]
        packed = Packed([(a.shape, a.dtype) for a in arrays])
        packed.pack(arrays)
        for buffer in packed.buffers.values():
            world.broadcast(buffer, "the broadcast of rank 0's parameters")
        m.load_state_dict(dict(zip(state, packed.views)))
        m.load_optimizer_state(dict(zip(optim, packed.views[len(state):])))
        scalars = world.broadcast_json({"step": m.step_count, "lr": m.lr}, "the step count")
        m.step_count, m.lr = int(scalars["step"]), float(scalars["lr"])


def state_hash(module):
    """SHA-256 of a module's parameters and buffers: equal on every rank after each step."""
    h = hashlib.sha256()
    for name, array in module.state_dict().items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
