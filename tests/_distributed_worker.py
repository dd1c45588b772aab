"""What each rank runs in tests/test_distributed_mpi.py (under mpiexec): a scenario by name,
its results written as JSON to OUT/rank<r>.json.

    mpiexec -n 2 python tests/_distributed_worker.py equivalence OUT
"""

import json
import os
import signal
import sys
import time

import numpy as np

import tvmfront as tvf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import lenet_digits  # noqa: E402

STEPS = 20      # the equivalence run: one step per epoch of 64 samples
LOCAL = 32      # each rank's batch; the one-process reference steps on 64


def digits64():
    x, y, _, _ = tvf.data.load_digits()
    return tvf.data.upsample(x[:64], 2), y[:64]


def blobs(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 8)) + 2.0 * np.eye(3, 8)[y]).astype("float32")
    return x, y


def lenet(seed):
    tvf.manual_seed(seed)
    return tvf.compile_training(lenet_digits.make_model(), tvf.nn.CrossEntropyLoss(),
                                lenet_digits.make_optimizer(), inputs=("batch", 1, 16, 16),
                                labels=("batch",), accumulate=True)


def mlp(seed, norm=True):
    """norm: BatchNorm first, so that its running statistics are those of the data itself.
    Without it, a step's gradients do not depend on how its batch is split among ranks."""
    nn = tvf.nn
    tvf.manual_seed(seed)
    model = nn.Sequential(*[nn.BatchNorm1d(8)] * norm, nn.Linear(8, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                inputs=("batch", 8), labels=("batch",), accumulate=True)


def traced_fit(trainer, x, y, epochs, batch_size):
    """fit, recording the state hash before every step (augment runs right before it)."""
    hashes = []

    def trace(xb, rng):
        hashes.append(tvf.distributed.state_hash(trainer.module))
        return xb

    history = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, augment=trace)
    hashes.append(tvf.distributed.state_hash(trainer.module))
    return [h["loss"] for h in history[-epochs:]], hashes


def equivalence(world, out):
    # Every rank initialises differently: rank 0's parameters must reach the others.
    x, y = digits64()
    trainer = tvf.Trainer(lenet(100 + world.rank), seed=0, distributed=True, progress=False)
    losses, hashes = traced_fit(trainer, x, y, STEPS, LOCAL)
    bx, by = blobs(64)
    bn = tvf.Trainer(mlp(200 + world.rank), seed=0, distributed=True, progress=False)
    bn_losses, bn_hashes = traced_fit(bn, bx, by, 1, LOCAL)
    buffers = {k: v.tolist() for k, v in bn.module.state_dict().items() if "running" in k}
    more, more_hashes = traced_fit(bn, bx, by, 4, LOCAL)
    return {"losses": losses, "hashes": hashes, "bn_losses": bn_losses + more,
            "bn_hashes": bn_hashes + more_hashes, "bn_buffers_step1": buffers,
            "bn_state": {k: v.tolist() for k, v in bn.module.state_dict().items()},
            "allreduce_bytes": trainer._parallel.message_bytes}


def kill(world, out):
    """Two epochs, rank 0 checkpoints, then rank 1 dies of SIGKILL in the third."""
    x, y = blobs()
    trainer = tvf.Trainer(mlp(0, norm=False), seed=0, distributed=True, progress=False)
    trainer.fit(x, y, epochs=2, batch_size=16)
    trainer.save_checkpoint(os.path.join(out, "ckpt.safetensors"))
    steps = []

    def die(xb, rng):
        steps.append(1)
        if world.rank == 1 and len(steps) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return xb

    trainer.fit(x, y, epochs=1, augment=die)
    return {"survived": True}


def exit(world, out):
    """Rank 1's script ends early (sys.exit in the third step): rank 0, in that step's
    allreduce, must stop waiting at once, not after TVMFRONT_DIST_TIMEOUT."""
    x, y = blobs()
    trainer = tvf.Trainer(mlp(0, norm=False), seed=0, distributed=True, progress=False)
    steps = []

    def leave(xb, rng):
        steps.append(1)
        if world.rank == 1 and len(steps) == 3:
            sys.exit(3)
        return xb

    trainer.fit(x, y, epochs=1, batch_size=16, augment=leave)
    return {"survived": True}


def hang(world, out):
    """Rank 1 stops answering (not dead: the launcher sees nothing); rank 0's allreduce must
    give up after TVMFRONT_DIST_TIMEOUT and end the job."""
    x, y = blobs()
    trainer = tvf.Trainer(mlp(0, norm=False), seed=0, distributed=True, progress=False)

    def stall(xb, rng):
        if world.rank == 1:
            time.sleep(3600)
        return xb

    trainer.fit(x, y, epochs=1, batch_size=16, augment=stall)
    return {"survived": True}


def resume(world, out):
    """Continue from rank 0's checkpoint (read on rank 0 alone) for two epochs."""
    trainer = tvf.Trainer(mlp(300 + world.rank, norm=False), seed=5, distributed=True, progress=False)
    trainer.load_checkpoint(os.path.join(out, "ckpt.safetensors"))
    x, y = blobs()
    losses, hashes = traced_fit(trainer, x, y, 2, int(os.environ.get("LOCAL_BATCH", 16)))
    return {"losses": losses, "hashes": hashes, "step": trainer.module.step_count,
            "epochs": len(trainer.history)}


if __name__ == "__main__":
    scenario, out = sys.argv[1], sys.argv[2]
    world = tvf.distributed.init()
    result = globals()[scenario](world, out)
    result.update(rank=world.rank, size=world.size)
    with open(os.path.join(out, f"rank{world.rank}.json"), "w") as f:
        json.dump(result, f)
