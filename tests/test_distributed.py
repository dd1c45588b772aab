"""tvf.distributed in one process: the launcher's environment, packing, sharding, the
gradient/update hooks data-parallel steps are made of, deadlines, and a world of one (no
launcher) training exactly as without distributed. The 2-process tests are in
test_distributed_mpi.py."""

import subprocess
import sys
import time

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.distributed import DistributedError, comm as comm_module, env, world
from tvmfront.distributed.comm import Communicator, Solo, timeout_from_env
from tvmfront.distributed.pack import Packed
from tvmfront.distributed.shard import shard
from tvmfront.errors import ShapeError

LAUNCHER_VARS = ["PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                 "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"]


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(world, "_world", None)


def test_rank_and_size_come_from_the_launchers_environment(no_launcher, monkeypatch):
    assert (env.launched(), tvf.distributed.rank(), tvf.distributed.world_size()) == \
        (False, 0, 1)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "8")
    assert (env.launched(), tvf.distributed.rank(), tvf.distributed.world_size()) == \
        (True, 3, 8)
    assert not tvf.distributed.is_main()
    monkeypatch.setenv("PMI_RANK", "0")  # hydra's variables come first
    monkeypatch.setenv("PMI_SIZE", "2")
    assert (tvf.distributed.rank(), tvf.distributed.world_size()) == (0, 2)


def test_import_tvmfront_loads_no_mpi():
    code = "import sys, tvmfront; tvmfront.distributed.rank(); print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_init_under_a_launcher_without_mpi4py_says_what_to_install(no_launcher, monkeypatch):
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(DistributedError, match=r"rank 1 of 2.*pip install"):
        tvf.distributed.init()
    assert not tvf.distributed.initialized()


def test_init_without_a_launcher_is_a_world_of_one(no_launcher):
    world_ = tvf.distributed.init()
    assert isinstance(world_, Solo) and (world_.rank, world_.size) == (0, 1)
    assert tvf.distributed.init() is world_


def test_timeout_setting(monkeypatch):
    monkeypatch.setenv("TVMFRONT_DIST_TIMEOUT", "2.5")
    assert timeout_from_env() == 2.5
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv("TVMFRONT_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match="TVMFRONT_DIST_TIMEOUT"):
            timeout_from_env()


class _NeverDone:
    def __init__(self):
        self.polled_at = []

    def Test(self):
        self.polled_at.append(time.perf_counter())
        return False


def test_a_collective_that_never_completes_raises_after_the_timeout():
    comm = Communicator.__new__(Communicator)
    comm.rank, comm.size, comm.timeout, comm.waited = 1, 2, 0.05, 0.0
    comm.departures = None
    request = _NeverDone()
    with pytest.raises(DistributedError, match=r"rank 1 of 2: the allreduce waited .* "
                                               r"TVMFRONT_DIST_TIMEOUT"):
        comm._wait(request, "the allreduce")
    # Past its first _SPIN_S it slept between polls instead of spinning all along: ~100
    # polls in the remaining 49 ms, not hundreds of thousands. (The spin itself polls as
    # fast as the CPU goes: 10,372 times in its 1 ms on a 3.5 GHz Xeon.)
    start = request.polled_at[0]
    after_spin = [t for t in request.polled_at if t - start > comm_module._SPIN_S]
    assert after_spin and len(after_spin) < 1_000, len(after_spin)


class _Departed:
    """Departures whose rank 0 left after this rank's wait began (at its 5th poll)."""

    def __init__(self):
        self.departed, self.polls = [], 0

    def poll(self):
        self.polls += 1
        if self.polls == 5:
            self.departed.append(0)
        return self.departed


def test_a_collective_a_rank_left_raises_after_a_grace_not_the_timeout():
    comm = Communicator.__new__(Communicator)
    comm.rank, comm.size, comm.timeout, comm.waited = 1, 2, 600.0, 0.0
    comm.departures = _Departed()
    start = time.perf_counter()
    with pytest.raises(DistributedError, match=r"rank 1 of 2: the allreduce cannot finish: "
                                               r"rank\(s\) 0 left the job"):
        comm._wait(_NeverDone(), "the allreduce")
    # it kept polling the collective for the grace (the rank may have done its part)
    assert comm_module._DEPARTED_GRACE_S <= time.perf_counter() - start < 10


def test_packed_lays_tensors_out_in_one_buffer_per_dtype():
    packed = Packed([((2, 3), "float32"), ((), "int64"), ((4,), "float32")])
    assert {str(d): b.size for d, b in packed.buffers.items()} == {"float32": 10, "int64": 1}
    a, b = np.arange(6, dtype="float32").reshape(2, 3), np.full(4, 7, "float32")
    packed.pack([a, np.int64(5), b])
    np.testing.assert_array_equal(packed.buffers[np.dtype("float32")], np.r_[a.ravel(), b])
    packed.buffers[np.dtype("float32")] *= 2  # views see the buffer
    np.testing.assert_array_equal(packed.views[2], 2 * b)
    assert int(packed.views[1]) == 5


def test_shards_are_strided_and_together_the_batch():
    x = {"a": np.arange(10), "b": np.arange(10) * 10}
    y = np.arange(10) + 100
    parts = [shard((x, y), r, 3) for r in range(3)]
    assert [len(p[1]) for p in parts] == [4, 3, 3]
    np.testing.assert_array_equal(parts[1][0]["b"], [10, 40, 70])
    np.testing.assert_array_equal(np.sort(np.concatenate([p[1] for p in parts])), y)
    assert all(p[0]["a"].flags.c_contiguous for p in parts)


def _mlp(seed=0, accumulate=True):
    nn = tvf.nn
    tvf.manual_seed(seed)
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                inputs=("batch", 4), labels=("batch",), accumulate=accumulate)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)


@pytest.mark.slow  # compiles a small model
def test_compute_then_apply_gradients_is_one_step(data):
    x, y = data
    fused, split = _mlp(), _mlp()
    loss = fused.step(x[:16], y[:16])
    split_loss, grads = split.compute_gradients(x[:16], y[:16])
    assert [g.shape for g in grads] == [tuple(s["shape"]) for s in split.gradient_specs()]
    split.apply_gradients(grads)
    assert split_loss == pytest.approx(loss, rel=1e-6)
    assert split.step_count == fused.step_count == 1
    for (name, a), b in zip(fused.state_dict().items(), split.state_dict().values()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    split.set_buffer_arrays(fused.buffer_arrays())
    np.testing.assert_array_equal(split.buffer_arrays()[0], fused.buffer_arrays()[0])


@pytest.mark.slow  # compiles a small model
def test_hooks_reject_bad_input(data):
    module = _mlp()
    _, grads = module.compute_gradients(*data)
    with pytest.raises(ShapeError, match="6 trainable parameters, got 5"):
        module.apply_gradients(grads[:-1])
    with pytest.raises(ShapeError, match="gradient of '1.weight'"):
        module.apply_gradients([g.astype("float64") if i == 2 else g
                                for i, g in enumerate(grads)])
    with pytest.raises(ShapeError, match="3 buffers, got 1"):
        module.set_buffer_arrays(module.buffer_arrays()[:1])
    module.accumulate(*data)
    with pytest.raises(RuntimeError, match="call apply"):
        module.apply_gradients(grads)


@pytest.mark.slow  # compiles a small model
def test_data_parallel_needs_the_split_update(data):
    with pytest.raises(RuntimeError, match="accumulate=True"):
        _mlp(accumulate=False).apply_gradients([])
    with pytest.raises(ValueError, match="accumulate=True"):
        tvf.distributed.DataParallel(_mlp(accumulate=False), Solo())


@pytest.mark.slow  # compiles a small model
def test_one_rank_of_a_distributed_trainer_trains_as_without(no_launcher, data, tmp_path):
    x, y = data
    plain = tvf.Trainer(_mlp(), seed=3, progress=False)
    solo = tvf.Trainer(_mlp(), seed=3, progress=False, distributed=True)
    assert solo.is_main and solo.world.size == 1
    drop = lambda history: [{k: v for k, v in h.items() if k != "samples_per_s"}  # noqa: E731
                            for h in history]
    assert drop(plain.fit(x, y, epochs=2, batch_size=16)) == \
        drop(solo.fit(x, y, epochs=2, batch_size=16))
    assert tvf.distributed.state_hash(plain.module) == tvf.distributed.state_hash(solo.module)
    assert solo.save_checkpoint(tmp_path / "c.safetensors") is not None
    assert solo.export(tmp_path / "bundle") is not None


def test_launch_builds_the_mpiexec_command_beside_this_python(tmp_path):
    from tvmfront.distributed import launch

    hosts = tmp_path / "hosts.txt"
    hosts.write_text("localhost\n")
    argv = launch.command(4, "train.py", ["--epochs", "2"], hosts=str(hosts))
    assert argv[1:] == ["-f", str(hosts), "-n", "4", sys.executable, "train.py", "--epochs",
                        "2"]
    assert argv[0].endswith("mpiexec")
    with pytest.raises(ValueError, match="at least 1"):
        launch.command(0, "train.py")
