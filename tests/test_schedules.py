"""tvf.optim.schedules: per-step learning rates fed by Trainer as the step's runtime lr; bad
schedules are clear errors naming the step; a checkpointed run with a schedule, shuffling and
augmentation resumes bit-exactly."""

import math

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.optim import schedules

nn = tvf.nn


def test_closed_forms():
    c = schedules.cosine(0.1, 10, final=0.01)
    # torch.optim.lr_scheduler.CosineAnnealingLR's closed form, and flat after T_max
    assert [c(t) for t in (0, 5, 10, 20)] == pytest.approx(
        [0.1, 0.01 + 0.09 * (1 + math.cos(math.pi * 5 / 10)) / 2, 0.01, 0.01])
    s = schedules.step(1.0, every=3, gamma=0.5)  # torch's StepLR
    assert [s(t) for t in range(7)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    lin = schedules.linear(1.0, 0.0, 4)
    assert [lin(t) for t in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    w = schedules.warmup(2, schedules.cosine(1.0, 4))
    assert [round(w(t), 3) for t in range(7)] == [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    assert [schedules.warmup(4, 0.2, start_factor=0.0)(t) for t in range(6)] == pytest.approx(
        [0.0, 0.2 / 3, 0.4 / 3, 0.2, 0.2, 0.2])
    assert repr(w) == "warmup(2, cosine(1.0, 4, final=0.0), start_factor=0.5)"


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.cosine(0.1, 0), "cosine: steps must be a positive integer, got 0"),
    (lambda: schedules.warmup(2.5, 0.1), "warmup: steps must be a positive integer"),
    (lambda: schedules.step(0.1, every=-1), "step: every must be a positive integer"),
])
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: schedules.warmup(3, lambda t: 0.1), r"warmup|constant: expected a number or a "
                                                 r"schedule, got <function.*per_step"),
    (lambda: schedules.constant("0.1"), "constant: expected a number or a schedule, got '0.1'"),
    (lambda: tvf.Trainer(_module(), lr_schedule=0.01), "Trainer: lr_schedule must be a "
                                                       "schedule.*got 0.01"),
])
def test_a_schedule_of_the_wrong_kind_is_refused_where_it_is_made(make, match):
    """Each was accepted, then failed at the first step: a bare TypeError in the schedule,
    "'float' object is not callable" in fit."""
    with pytest.raises(TypeError, match=match):
        make()


def _module(seed=0, optimizer=None):
    tvf.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    return tvf.compile_training(model, nn.CrossEntropyLoss(), optimizer or tvf.optim.SGD(0.1),
                                inputs=(8, 4), labels=(8,))


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)).astype("float32"), rng.integers(0, 3, n)


def test_trainer_feeds_the_schedule_every_step():
    """fit == a hand loop calling step(lr=schedule(t)) on fit's batches: the lr changes every
    step, not every epoch."""
    x, y = _data()
    calls = []
    sched = schedules.per_step(lambda t: calls.append(t) or 0.3 / (1 + t))
    trainer = tvf.Trainer(_module(), seed=3, lr_schedule=sched, progress=False)
    trainer.fit(x, y, epochs=2)
    assert calls == list(range(10))
    assert trainer.history[1]["lr"] == pytest.approx(0.3 / 10)
    by_hand = _module()
    for e in range(2):
        for xb, yb in tvf.data.batches(x, y, 8, shuffle=True, seed=3 + e):
            by_hand.step(xb, yb, lr=0.3 / (1 + by_hand.step_count))
    for n, v in by_hand.state_dict().items():
        np.testing.assert_array_equal(trainer.module.state_dict()[n], v, err_msg=n)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, None])
def test_schedule_returning_a_bad_lr_names_the_step(bad):
    x, y = _data()
    module = _module()
    sched = schedules.per_step(lambda t: 0.1 if t < 6 else bad)
    with pytest.raises(ValueError, match=rf"lr_schedule\(6\) returned {bad!r} for train step 7 "
                                         rf"\(epoch 2, batch 2\): a learning rate must be a "
                                         rf"(finite )?number"):
        tvf.Trainer(module, lr_schedule=sched, progress=False).fit(x, y, epochs=2)
    assert module.step_count == 6  # stopped before the step, parameters still finite
    assert all(np.isfinite(v).all() for v in module.state_dict().values())


def test_per_epoch_function_still_works():
    x, y = _data()
    trainer = tvf.Trainer(_module(), lr_schedule=lambda epoch: [0.2, 0.0][epoch],
                          progress=False)
    trainer.fit(x, y, epochs=1)
    after_one = trainer.module.state_dict()
    trainer.fit(x, y, epochs=1)  # lr 0: nothing moves
    assert [h["lr"] for h in trainer.history] == [0.2, 0.0]
    for n, v in trainer.module.state_dict().items():
        np.testing.assert_array_equal(v, after_one[n])


def _augment(xb, rng):
    return xb + rng.normal(0, 0.1, xb.shape).astype(xb.dtype)


def test_resume_with_schedule_shuffling_and_augmentation(tmp_path):
    """3 epochs straight == 1 epoch, checkpoint, a fresh trainer (other weights, other seed)
    loading it, 2 more epochs: same losses, lr and parameters, bit for bit."""
    x, y = _data()
    sched = schedules.warmup(3, schedules.cosine(0.05, 12, final=0.005))

    def optimizer():
        return tvf.optim.AdamW(0.05, weight_decay=0.05, max_norm=1.0,
                               groups=[{"params": "*.bias", "weight_decay": 0.0}])

    straight = tvf.Trainer(_module(0, optimizer()), seed=9, lr_schedule=sched, progress=False)
    straight.fit(x, y, epochs=3, augment=_augment)
    first = tvf.Trainer(_module(0, optimizer()), seed=9, lr_schedule=sched, progress=False)
    first.fit(x, y, epochs=1, augment=_augment)
    path = first.save_checkpoint(str(tmp_path / "run.safetensors"))
    resumed = tvf.Trainer(_module(1, optimizer()), seed=0, lr_schedule=sched, progress=False)
    resumed.load_checkpoint(path)
    resumed.fit(x, y, epochs=2, augment=_augment)
    strip = [{k: v for k, v in h.items() if k != "samples_per_s"} for h in straight.history]
    assert [{k: v for k, v in h.items() if k != "samples_per_s"} for h in resumed.history] == strip
    assert len({h["lr"] for h in strip}) == 3  # the schedule moved: the test can tell
    for n, v in straight.module.state_dict().items():
        np.testing.assert_array_equal(resumed.module.state_dict()[n], v, err_msg=n)
    for n, v in straight.module.optimizer_state().items():
        np.testing.assert_array_equal(resumed.module.optimizer_state()[n], v, err_msg=n)
    with pytest.warns(UserWarning, match=r"saved by a run with lr_schedule warmup\(3, "
                                         r"cosine\(0.05, 12, final=0.005\).*this trainer has "
                                         r"None; it continues from train step 5"):
        tvf.Trainer(_module(1, optimizer()), progress=False).load_checkpoint(path)
