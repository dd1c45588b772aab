"""Trainer.save_checkpoint / load_checkpoint: one safetensors file, written atomically; a
resumed run continues exactly as the uninterrupted one; damaged files are refused."""

import json
import os

import numpy as np
import pytest
from safetensors import safe_open

import tvmfront as tvf

nn = tvf.nn


def _module(seed, hidden=8):
    tvf.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3))
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(0.05),
                                inputs=(8, 4), labels=(8,))


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((40, 4)).astype("float32"), rng.integers(0, 3, 40)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run of 2 epochs checkpointed after the first, and its second epoch's history."""
    path = str(tmp_path_factory.mktemp("ckpt") / "run.safetensors")
    x, y = _data()
    trainer = tvf.Trainer(_module(0), seed=5, progress=False)
    trainer.fit(x, y, epochs=1)
    trainer.save_checkpoint(path)
    trainer.fit(x, y, epochs=1)
    return path, trainer


def test_resume_continues_like_the_uninterrupted_run(saved):
    path, uninterrupted = saved
    x, y = _data()
    resumed = tvf.Trainer(_module(1), seed=0, progress=False)  # other weights, other seed
    resumed.load_checkpoint(path)
    assert resumed.seed == 5 and len(resumed.history) == 1 and resumed.module.step_count == 5
    resumed.fit(x, y, epochs=1)
    assert resumed.history == [dict(h, samples_per_s=r["samples_per_s"])
                               for h, r in zip(uninterrupted.history, resumed.history)]
    assert resumed.history[1]["loss"] == uninterrupted.history[1]["loss"]
    for n, v in uninterrupted.module.state_dict().items():
        assert np.array_equal(resumed.module.state_dict()[n], v), n
    for n, v in uninterrupted.module.optimizer_state().items():
        assert np.array_equal(resumed.module.optimizer_state()[n], v), n
    assert resumed.module.loss(x[:8], y[:8]) == uninterrupted.module.loss(x[:8], y[:8])


def test_checkpoint_is_one_safetensors_file(saved):
    path, _ = saved
    assert sorted(os.listdir(os.path.dirname(path))) == ["run.safetensors"]  # no temp files
    with safe_open(path, "np") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "tvmfront-checkpoint"
    info = json.loads(meta["meta"])
    assert info["step"] == 5 and info["epoch"] == 1 and info["seed"] == 5
    assert len(info["history"]) == 1
    assert {"param/0.weight", "param/2.bias", "optim/0/mu.0.weight"} <= keys


def test_save_replaces_an_existing_checkpoint(saved, tmp_path):
    path = str(tmp_path / "c.safetensors")
    _, trainer = saved
    with open(path, "wb") as f:
        f.write(b"old")
    trainer.save_checkpoint(path)
    fresh = tvf.Trainer(_module(0), progress=False).load_checkpoint(path)
    assert fresh.module.step_count == trainer.module.step_count
    assert os.listdir(tmp_path) == ["c.safetensors"]



def test_save_through_a_symlink_keeps_the_link(saved, tmp_path):
    """A checkpoint saved to a symlink (latest.safetensors -> run/3.safetensors) replaces the
    link's target, as torch.save's open() does; the atomic os.replace had turned the link
    into a plain file, leaving the target stale."""
    _, trainer = saved
    (tmp_path / "run").mkdir()
    target = tmp_path / "run" / "3.safetensors"
    target.write_bytes(b"old")
    link = tmp_path / "latest.safetensors"
    link.symlink_to(os.path.join("run", "3.safetensors"))
    trainer.save_checkpoint(str(link))
    assert link.is_symlink() and os.readlink(link) == os.path.join("run", "3.safetensors")
    fresh = tvf.Trainer(_module(0), progress=False).load_checkpoint(str(target))
    assert fresh.module.step_count == trainer.module.step_count
    assert sorted(os.listdir(tmp_path / "run")) == ["3.safetensors"]

def _damaged(saved, tmp_path, damage):
    with open(saved[0], "rb") as f:
        data = bytearray(f.read())
    path = str(tmp_path / "bad.safetensors")
    with open(path, "wb") as f:
        f.write(damage(data))
    return path


@pytest.mark.parametrize("damage,match", [
    (lambda d: d[:len(d) // 2], "truncated|corrupt"),
    (lambda d: d[:len(d) - 1], "corrupt or truncated"),
    (lambda d: d[:20], "truncated"),
    (lambda d: b"", "too short"),
    (lambda d: d[:-4] + bytes(b ^ 0xFF for b in d[-4:]), "does not match the SHA-256 it records"),
    (lambda d: d[:8] + b"[" + d[9:], "corrupt safetensors header"),
    (lambda d: d[:9] + b"\xff" + d[10:], "corrupt safetensors header"),
], ids=["half", "last-byte", "header-cut", "empty", "bit-flip", "header-not-object",
         "header-not-utf8"])
def test_damaged_checkpoint_is_refused(saved, tmp_path, damage, match):
    path = _damaged(saved, tmp_path, damage)
    trainer = tvf.Trainer(_module(0), progress=False)
    before = trainer.module.state_dict()
    with pytest.raises(tvf.CheckpointError, match=match):
        trainer.load_checkpoint(path)
    assert trainer.module.step_count == 0
    assert all(np.array_equal(before[n], v) for n, v in trainer.module.state_dict().items())


def _with_meta(saved, tmp_path, change, rehash=True):
    """The saved checkpoint with its metadata changed by change(meta) (re-hashed as a writer
    would, unless not `rehash`: a flipped byte)."""
    from safetensors.numpy import load_file, save_file

    from tvmfront import checkpoint
    with safe_open(saved[0], "np") as f:
        header = f.metadata()
    meta = json.loads(header["meta"])
    change(meta)
    tensors = load_file(saved[0])
    if rehash:
        meta["sha256"] = checkpoint._digest(tensors, meta)
    path = str(tmp_path / "meta.safetensors")
    save_file(tensors, path, metadata=dict(header, meta=json.dumps(meta, sort_keys=True)))
    return path


def _refused_unchanged(path, match):
    trainer = tvf.Trainer(_module(0), progress=False)
    before = trainer.module.state_dict()
    with pytest.raises(tvf.CheckpointError, match=match):
        trainer.load_checkpoint(path)
    assert trainer.module.step_count == 0 and trainer.module.lr == 0.05
    assert all(np.array_equal(before[n], v) for n, v in trainer.module.state_dict().items())


def test_the_sha256_covers_the_metadata(saved, tmp_path):
    # one digit of the step count changed, tensors intact: it had loaded as step 9
    path = _with_meta(saved, tmp_path, lambda m: m.update(step=9), rehash=False)
    _refused_unchanged(path, "the data \\(tensors and metadata\\) does not match the SHA-256")


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(step="abc"), "'step' must be an integer in \\[0, 2\\*\\*63\\), got 'abc'"),
    (lambda m: m.update(step=-7), "'step' must be an integer in \\[0, 2\\*\\*63\\), got -7"),
    (lambda m: m.update(step=2**63), "'step' must be an integer in \\[0, 2\\*\\*63\\)"),
    (lambda m: m.update(in_epoch={"steps": 2, "batch": 8, "losses": [1.0], "sizes": [8, 8],
                                  "lr": None}), "'in_epoch' must be fit's position"),
    (lambda m: m.pop("step"), "lacks 'step'"),
    (lambda m: m.pop("lr"), "lacks 'lr'"),
    (lambda m: m.update(lr=float("nan")), "'lr' must be a finite number >= 0"),
    (lambda m: m.update(lr=-5), "'lr' must be a finite number >= 0"),
    (lambda m: m.update(lr=1e39), "lr 1e\\+39 does not fit the step's float32 scalars"),
    (lambda m: m.update(history=5), "'history' must be a list"),
    (lambda m: m.pop("seed"), "lacks 'seed'"),
    (lambda m: m.update(batch_size=0), "'batch_size' must be null or an integer >= 1"),
], ids=["step-str", "step-negative", "step-past-int64", "in-epoch-short", "no-step", "no-lr",
        "lr-nan", "lr-negative", "lr-past-float32", "history-int", "no-seed", "batch-size-0"])
def test_bad_metadata_is_refused_before_anything_changes(saved, tmp_path, change, match):
    # these had raised KeyError/TypeError after the parameters were replaced, or loaded
    _refused_unchanged(_with_meta(saved, tmp_path, change), match)


def test_a_version_1_checkpoint_still_loads(saved, tmp_path):
    # version 1 hashed the tensors alone
    from safetensors.numpy import load_file, save_file

    from tvmfront import checkpoint
    tensors = load_file(saved[0])
    with safe_open(saved[0], "np") as f:
        header = f.metadata()
    meta = dict(json.loads(header["meta"]), sha256=checkpoint._digest(tensors))
    path = str(tmp_path / "v1.safetensors")
    save_file(tensors, path, metadata=dict(header, format_version="1",
                                           meta=json.dumps(meta, sort_keys=True)))
    trainer = tvf.Trainer(_module(0), progress=False).load_checkpoint(path)
    assert trainer.module.step_count == 5 and trainer.seed == 5


def test_checkpoint_of_another_model_is_refused(saved):
    trainer = tvf.Trainer(_module(0, hidden=6), progress=False)
    with pytest.raises(tvf.CheckpointError, match=r"parameter '0.weight' is shape \(8, 4\) "
                                                  r"float32 in the checkpoint, shape \(6, 4\)"):
        trainer.load_checkpoint(saved[0])


def test_a_bundle_file_is_not_a_checkpoint(saved, tmp_path):
    bundle = saved[1].module.export(str(tmp_path / "bundle"))
    with pytest.raises(tvf.CheckpointError, match="not a tvmfront checkpoint"):
        tvf.Trainer(_module(0), progress=False).load_checkpoint(
            os.path.join(bundle, "params.safetensors"))


def test_missing_file(tmp_path):
    with pytest.raises(tvf.CheckpointError, match="cannot read checkpoint"):
        tvf.Trainer(_module(0), progress=False).load_checkpoint(str(tmp_path / "nope"))


def test_checkpoint_of_a_model_with_buffers_resumes_them(tmp_path):
    # BatchNorm's running statistics (num_batches_tracked is 0-d) travel with the checkpoint.
    def compiled():
        tvf.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
        return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(0.01),
                                    inputs=(np.int64(8), 4), labels=(8,))  # numpy ints too

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 4)).astype("float32"), np.arange(32) % 3
    trainer = tvf.Trainer(compiled(), progress=False)
    trainer.fit(x, y, epochs=1)
    trainer.save_checkpoint(tmp_path / "bn.ckpt")
    resumed = tvf.Trainer(compiled(), progress=False).load_checkpoint(tmp_path / "bn.ckpt")
    a, b = trainer.module.state_dict(), resumed.module.state_dict()
    assert int(b["1.num_batches_tracked"]) == 4 and b["1.num_batches_tracked"].shape == ()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert trainer.module.step(x[:8], y[:8]) == resumed.module.step(x[:8], y[:8])


def _save_at(trainer, path, at):
    """on_step saving `trainer`'s checkpoint at train step `at`."""
    def on_step(module):
        if module.step_count == at:
            trainer.save_checkpoint(path)
    return on_step


def _shift(xb, rng):  # an augmentation drawing from the epoch's rng
    return xb + rng.standard_normal(xb.shape).astype(xb.dtype) * 0.1


@pytest.mark.parametrize("at", [7, 10], ids=["mid-epoch", "epoch-end"])
def test_a_checkpoint_saved_within_an_epoch_resumes_there(tmp_path, at):
    """Saved from on_step at step 7 (2 of epoch 2's 5 batches done), the resumed fit replayed
    the whole epoch: 12 steps for 10, other weights (0.03 apart), another epoch loss. At the
    epoch's last step (10) it replayed the whole epoch too."""
    path = str(tmp_path / "mid.safetensors")
    x, y = _data()
    uninterrupted = tvf.Trainer(_module(0), seed=5, progress=False)
    uninterrupted.fit(x, y, epochs=1, augment=_shift)
    uninterrupted.fit(x, y, epochs=2, augment=_shift,
                      on_step=_save_at(uninterrupted, path, at))
    resumed = tvf.Trainer(_module(1), seed=0, progress=False)
    resumed.load_checkpoint(path)
    assert resumed.module.step_count == at and len(resumed.history) == 1
    resumed.fit(x, y, epochs=2, augment=_shift)
    assert resumed.module.step_count == uninterrupted.module.step_count == 15
    for mine, theirs in zip(resumed.history, uninterrupted.history):
        assert {k: v for k, v in mine.items() if k != "samples_per_s"} == \
            {k: v for k, v in theirs.items() if k != "samples_per_s"}
    for n, v in uninterrupted.module.state_dict().items():
        assert np.array_equal(resumed.module.state_dict()[n], v), n


def test_a_mid_epoch_checkpoint_refuses_another_batch_size(tmp_path):
    path = str(tmp_path / "mid.safetensors")
    x, y = _data()
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=("batch", 4), labels=("batch",))
    trainer = tvf.Trainer(module, progress=False)
    trainer.fit(x, y, epochs=1, batch_size=8, on_step=_save_at(trainer, path, 2))
    resumed = tvf.Trainer(module, progress=False).load_checkpoint(path)
    with pytest.raises(ValueError, match="after 2 batches of 8 samples into epoch 1; it "
                                         "resumes only with batches of 8 .*, not 10"):
        resumed.fit(x, y, epochs=1, batch_size=10)


def test_a_checkpoint_of_other_optimizer_settings_warns(saved):
    """Loaded without a word into Adam(betas=(0.5, 0.9), eps=1e-3): its run then differed
    from the saved one's by 0.02."""
    path, _ = saved
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    other = tvf.compile_training(model, nn.CrossEntropyLoss(),
                                 tvf.optim.Adam(0.05, betas=(0.5, 0.9), eps=1e-3),
                                 inputs=(8, 4), labels=(8,))
    with pytest.warns(UserWarning, match=r"Adam had betas=\[0.9, 0.999\], eps=1e-08; this "
                                         r"module's has betas=\[0.5, 0.9\], eps=0.001"):
        tvf.Trainer(other, progress=False).load_checkpoint(path)


@pytest.mark.parametrize("loss, key", [
    (nn.CrossEntropyLoss(label_smoothing=0.5), "label_smoothing=0.5"),
    (nn.CrossEntropyLoss(ignore_index=1), "ignore_index=1"),
])
def test_a_trainer_loss_of_other_settings_is_refused(saved, loss, key):
    """evaluate reported the given loss's value (and the compiled ignore_index's accuracy)."""
    _, trainer = saved
    with pytest.raises(ValueError, match=f"loss has {key}, but this module was compiled"):
        tvf.Trainer(trainer.module, loss=loss)
