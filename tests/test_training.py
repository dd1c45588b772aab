"""End-to-end checks of compiled training steps.

1. Gradients of every layer through the compiled step, against central finite differences
   of the compiled loss (float64), for CrossEntropyLoss and MSELoss; lr=0 and plain-SGD steps.
2. SGD / Adam updates against an independent numpy transcription of torch.optim's rules,
   with a learning rate that changes from step to step (a runtime input, no recompiling).
3. Training an MLP on the digits data lowers the loss and classifies the test split.
4. Two compiles of the same seeded model train identically.

Compiled modules are shared through module-scoped fixtures to keep the number of compiles
(about 2 s each) small.
"""

from types import SimpleNamespace

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn
from tvmfront.nn.layers import BatchNorm1d

from _fd import finite_difference_grads

F64 = "float64"


def _rng(seed=0):
    return np.random.default_rng(seed)


# ================================================================================================
# 1. Layer gradients vs finite differences (float64)
# ================================================================================================

BATCH = 3
N_OUT = 3

# name -> (model builder, input shape). Every model ends in a Linear to N_OUT outputs, and every
# parameter-free layer sits after a parametrised one so that its backward is on the gradient
# path of some parameter.
GRAD_CASES = {
    "Linear": (lambda: nn.Sequential(nn.Linear(5, 4, dtype=F64), nn.Linear(4, N_OUT, dtype=F64)),
               (BATCH, 5)),
    "Conv2d": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype=F64),
                                     nn.Flatten(), nn.Linear(3 * 3 * 3, N_OUT, dtype=F64)),
               (BATCH, 2, 5, 5)),
    "MaxPool2d": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, dtype=F64),
                                        nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
                                        nn.Linear(2 * 3 * 3, N_OUT, dtype=F64)),
                  (BATCH, 1, 6, 6)),
    "AvgPool2d": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, dtype=F64),
                                        nn.AvgPool2d(3, stride=2, padding=1), nn.Flatten(),
                                        nn.Linear(2 * 3 * 3, N_OUT, dtype=F64)),
                  (BATCH, 1, 6, 6)),
    "Flatten": (lambda: nn.Sequential(nn.Conv2d(2, 2, 2, dtype=F64), nn.Flatten(),
                                      nn.Linear(2 * 3 * 3, N_OUT, dtype=F64)),
                (BATCH, 2, 4, 4)),
    "ReLU": (lambda: nn.Sequential(nn.Linear(5, 6, dtype=F64), nn.ReLU(),
                                   nn.Linear(6, N_OUT, dtype=F64)),
             (BATCH, 5)),
    "Sigmoid": (lambda: nn.Sequential(nn.Linear(5, 6, dtype=F64), nn.Sigmoid(),
                                      nn.Linear(6, N_OUT, dtype=F64)),
                (BATCH, 5)),
    "Tanh": (lambda: nn.Sequential(nn.Linear(5, 6, dtype=F64), nn.Tanh(),
                                   nn.Linear(6, N_OUT, dtype=F64)),
             (BATCH, 5)),
    # Layers whose gradients are derived from their TE forward.
    "GELU": (lambda: nn.Sequential(nn.Linear(5, 6, dtype=F64), nn.GELU(),
                                   nn.Linear(6, N_OUT, dtype=F64)),
             (BATCH, 5)),
    "LayerNorm": (lambda: nn.Sequential(nn.Linear(5, 6, dtype=F64), nn.LayerNorm(6, dtype=F64),
                                        nn.Linear(6, N_OUT, dtype=F64)),
                  (BATCH, 5)),
    "GroupNorm": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype=F64),
                                        nn.GroupNorm(2, 4, dtype=F64), nn.Flatten(),
                                        nn.Linear(4 * 3 * 3, N_OUT, dtype=F64)),
                  (BATCH, 1, 3, 3)),
    # (a conv bias right before batch norm has an exactly zero gradient: leave it out)
    "BatchNorm2d": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False, dtype=F64),
                                          nn.BatchNorm2d(2, dtype=F64), nn.Flatten(),
                                          nn.Linear(2 * 3 * 3, N_OUT, dtype=F64)),
                    (BATCH, 1, 3, 3)),
    "BatchNorm1d": (lambda: nn.Sequential(nn.Linear(5, 6, bias=False, dtype=F64),
                                          BatchNorm1d(6, momentum=None, dtype=F64),
                                          nn.Linear(6, N_OUT, dtype=F64)),
                    (BATCH, 5)),
    "SelfAttention": (lambda: nn.Sequential(nn.SelfAttention(4, heads=2, dtype=F64), nn.Flatten(),
                                            nn.Linear(2 * 4, N_OUT, dtype=F64)),
                      (BATCH, 2, 4)),
}
LOSSES = ["cross_entropy", "mse"]
GRAD_PARAMS = [(case, loss) for case in GRAD_CASES for loss in LOSSES]
SGD_LR = 0.1


@pytest.fixture(scope="module", params=GRAD_PARAMS, ids=[f"{c}-{l}" for c, l in GRAD_PARAMS])
def grad_model(request):
    """A float64 model compiled with plain SGD, its initial parameters and one batch."""
    case, loss_name = request.param
    build, in_shape = GRAD_CASES[case]
    tvf.manual_seed(1234)
    model = build()
    rng = _rng(42)
    x = rng.standard_normal(in_shape)
    if loss_name == "cross_entropy":
        loss, labels = nn.CrossEntropyLoss(), tvf.TensorSpec((BATCH,), "int64")
        y = rng.integers(0, N_OUT, size=BATCH).astype(np.int64)
    else:
        loss, labels = nn.MSELoss(), tvf.TensorSpec((BATCH, N_OUT), F64)
        y = rng.standard_normal((BATCH, N_OUT))
    tm = tvf.compile_training(model, loss, tvf.optim.SGD(SGD_LR),
                              inputs=tvf.TensorSpec(in_shape, F64), labels=labels)
    return SimpleNamespace(tm=tm, init=model.state_dict(), x=x, y=y, case=case)


def _reset(g):
    g.tm.load_state_dict(g.init)
    return g.tm


def test_gradients_match_finite_differences(grad_model):
    g = grad_model
    tm = _reset(g)
    assert all(tm.state_dict()[n].dtype == np.float64 for n in tm.param_names)
    loss, grads = tm.loss_and_grads(g.x, g.y)
    assert loss == pytest.approx(tm.loss(g.x, g.y), rel=1e-12)
    assert list(grads) == tm.param_names
    fd = finite_difference_grads(tm, g.x, g.y)
    for name in tm.param_names:
        assert grads[name].shape == g.init[name].shape and grads[name].dtype == np.float64
        # a vanishing gradient would make the comparison vacuous
        assert np.abs(grads[name]).max() > 1e-4, f"{name}: gradient is (almost) zero"
        np.testing.assert_allclose(grads[name], fd[name], rtol=1e-6, atol=1e-8,
                                   err_msg=f"{g.case}: gradient of {name}")
    # the finite differences restored the parameters
    for name, p in tm.state_dict().items():
        np.testing.assert_array_equal(p, g.init[name])


def test_step_with_zero_lr_changes_nothing(grad_model):
    g = grad_model
    tm = _reset(g)
    before = tm.loss(g.x, g.y)
    count = tm.step_count
    assert tm.step(g.x, g.y, lr=0.0) == pytest.approx(before, rel=1e-12)
    assert tm.step_count == count + 1
    after = tm.state_dict()
    for name in tm.param_names:
        np.testing.assert_array_equal(after[name], g.init[name], err_msg=name)
    # buffers are training state, not parameters: the step still updates running statistics
    for name in tm.buffer_names:
        if name.endswith("num_batches_tracked"):
            assert after[name] == g.init[name] + 1
        else:
            assert not np.array_equal(after[name], g.init[name]), name
    assert tm.loss(g.x, g.y) == before  # training mode: batch statistics, not the running ones


def test_plain_sgd_step_is_p_minus_lr_grad(grad_model):
    g = grad_model
    tm = _reset(g)
    loss, grads = tm.loss_and_grads(g.x, g.y)
    for lr in (None, 0.37):  # None: the optimizer's lr
        tm = _reset(g)
        assert tm.step(g.x, g.y, lr=lr) == pytest.approx(loss, rel=1e-12)
        used = SGD_LR if lr is None else lr
        after = tm.state_dict()
        for name in tm.param_names:
            p = g.init[name]
            np.testing.assert_allclose(after[name], p - used * grads[name], rtol=1e-12,
                                       atol=1e-14, err_msg=f"lr={lr}: {name}")
    # the step moved downhill: a small step lowers the loss
    tm = _reset(g)
    tm.step(g.x, g.y, lr=1e-3)
    assert tm.loss(g.x, g.y) < loss


# ================================================================================================
# 2. Optimizers vs a numpy transcription of torch.optim (float32 model)
# ================================================================================================

def _torch_sgd(lr_ignored=None, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
    """torch.optim.SGD (_single_tensor_sgd), in float64 numpy."""
    bufs = {}

    def update(params, grads, lr):
        out = {}
        for n, p in params.items():
            g = grads[n].astype(np.float64)
            if weight_decay:
                g = g + weight_decay * p
            if momentum:
                if n not in bufs:  # torch: the first buffer is the gradient, undampened
                    bufs[n] = g.copy()
                else:
                    bufs[n] = momentum * bufs[n] + (1 - dampening) * g
                g = g + momentum * bufs[n] if nesterov else bufs[n]
            out[n] = p - lr * g
        return out

    return update


def _torch_adam(lr_ignored=None, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """torch.optim.Adam (_single_tensor_adam, amsgrad=False), in float64 numpy."""
    b1, b2 = betas
    m, v, t = {}, {}, [0]

    def update(params, grads, lr):
        t[0] += 1
        out = {}
        for n, p in params.items():
            g = grads[n].astype(np.float64)
            if weight_decay:
                g = g + weight_decay * p
            m[n] = b1 * m.get(n, 0.0) + (1 - b1) * g
            v[n] = b2 * v.get(n, 0.0) + (1 - b2) * g * g
            step_size = lr / (1 - b1 ** t[0])
            denom = np.sqrt(v[n]) / np.sqrt(1 - b2 ** t[0]) + eps
            out[n] = p - step_size * m[n] / denom
        return out

    return update


OPTIMIZERS = [
    pytest.param("SGD", {}, [0.1, 0.05, 0.2, 0.01, 0.15], id="sgd"),
    pytest.param("SGD", {"momentum": 0.9}, [0.1, 0.05, 0.2, 0.01, 0.15], id="sgd-momentum"),
    pytest.param("SGD", {"momentum": 0.9, "nesterov": True}, [0.1, 0.05, 0.2, 0.01, 0.15],
                 id="sgd-nesterov"),
    pytest.param("SGD", {"weight_decay": 1e-2}, [0.1, 0.05, 0.2, 0.01, 0.15],
                 id="sgd-weight-decay"),
    pytest.param("SGD", {"momentum": 0.9, "dampening": 0.5}, [0.1, 0.05, 0.2, 0.01, 0.15],
                 id="sgd-dampening"),
    pytest.param("Adam", {}, [1e-2, 5e-3, 2e-2, 1e-3, 1e-2], id="adam"),
    pytest.param("Adam", {"weight_decay": 1e-2}, [1e-2, 5e-3, 2e-2, 1e-3, 1e-2],
                 id="adam-weight-decay"),
]


def _small_model():
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _batch(rng, n=4):
    return (rng.standard_normal((n, 6)).astype(np.float32),
            rng.integers(0, 3, size=n).astype(np.int64))


@pytest.mark.parametrize("name,kwargs,lrs", OPTIMIZERS)
def test_optimizer_matches_torch_rule(name, kwargs, lrs):
    tvf.manual_seed(7)
    model = _small_model()
    default_lr = lrs[0] * 3  # never used: every step passes its own lr
    if name == "SGD":
        opt, ref = tvf.optim.SGD(default_lr, **kwargs), _torch_sgd(**kwargs)
    else:
        opt, ref = tvf.optim.Adam(default_lr, **kwargs), _torch_adam(**kwargs)
    tm = tvf.compile_training(model, nn.CrossEntropyLoss(), opt, inputs=(4, 6), labels=(4,))
    params = {n: p.astype(np.float64) for n, p in tm.state_dict().items()}
    rng = _rng(3)
    for i, lr in enumerate(lrs):
        x, y = _batch(rng)
        loss, grads = tm.loss_and_grads(x, y)
        assert tm.step(x, y, lr=lr) == pytest.approx(loss, rel=1e-5)
        assert tm.step_count == i + 1
        params = ref(params, grads, lr)
        got = tm.state_dict()
        for n, p in params.items():
            assert got[n].dtype == np.float32
            np.testing.assert_allclose(got[n], p, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}{kwargs} step {i + 1} (lr={lr}): {n}")


def test_optimizer_state_layout():
    """The momentum / moment buffers are exposed and hold the reference values."""
    tvf.manual_seed(7)
    tm = tvf.compile_training(_small_model(), nn.CrossEntropyLoss(),
                              tvf.optim.Adam(1e-2), inputs=(4, 6), labels=(4,))
    state = tm.optimizer_state()
    names = list(tm.state_dict())
    assert len(state) == 2 * len(names)
    assert all(np.all(s == 0) for s in state.values())
    x, y = _batch(_rng(5))
    _, grads = tm.loss_and_grads(x, y)
    tm.step(x, y)
    state = tm.optimizer_state()
    for n in names:
        (mu,) = [v for k, v in state.items() if k.endswith(f"mu.{n}")]
        (nu,) = [v for k, v in state.items() if k.endswith(f"nu.{n}")]
        np.testing.assert_allclose(mu, 0.1 * grads[n], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(nu, 0.001 * grads[n] ** 2, rtol=1e-4, atol=1e-12)


def test_learning_rate_is_a_runtime_input(monkeypatch):
    """One compiled module; different lr values give proportionally different updates."""
    tvf.manual_seed(11)
    tm = tvf.compile_training(_small_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                              inputs=(4, 6), labels=(4,))
    vm = tm._vm

    def no_compiling(*args, **kwargs):
        raise AssertionError("step() must not compile anything")

    import tvmfront.compile as compile_mod

    monkeypatch.setattr(compile_mod, "build_lowered", no_compiling)
    start = tm.state_dict()
    x, y = _batch(_rng(9))
    _, grads = tm.loss_and_grads(x, y)
    deltas = {}
    for lr in (0.1, 0.3, 0.025, None):
        tm.load_state_dict(start)
        tm.step(x, y, lr=lr)
        after = tm.state_dict()
        deltas[lr] = {n: after[n] - start[n] for n in start}
    assert tm._vm is vm
    for n in start:
        np.testing.assert_allclose(deltas[0.1][n], -0.1 * grads[n], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(deltas[0.3][n], 3 * deltas[0.1][n], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(deltas[0.025][n], deltas[0.1][n] / 4, rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(deltas[None][n], deltas[0.1][n])  # default: optimizer lr
        assert not np.allclose(deltas[0.3][n], deltas[0.1][n])


# ================================================================================================
# 3. Training on digits lowers the loss
# ================================================================================================

@pytest.mark.slow
def test_mlp_learns_digits():
    from tvmfront.data import batches, load_digits

    x_train, y_train, x_test, y_test = load_digits(seed=0)
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    bs = 32
    tm = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(5e-3),
                              inputs=(bs, 1, 8, 8), labels=(bs,))
    epochs = []
    for epoch in range(3):
        epochs.append([tm.step(xb, yb) for xb, yb in batches(x_train, y_train, bs, shuffle=True,
                                                             seed=epoch)])
    assert all(np.isfinite(l) for e in epochs for l in e)
    assert tm.step_count == sum(len(e) for e in epochs) == 3 * (len(x_train) // bs)
    first = np.mean(epochs[0][:5])
    assert first > 1.5  # ~ln(10) at initialisation
    assert np.mean(epochs[-1]) < 0.5 * first
    logits = tm.predict(x_test)
    assert logits.shape == (len(x_test), 10)
    accuracy = np.mean(logits.argmax(axis=1) == y_test)
    assert accuracy > 0.9, f"test accuracy {accuracy:.3f}"


# ================================================================================================
# 4. Determinism
# ================================================================================================

def _seeded_cnn(seed):
    tvf.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 10))


def test_seed_controls_initialisation():
    a, b, c = _seeded_cnn(5).state_dict(), _seeded_cnn(5).state_dict(), _seeded_cnn(6).state_dict()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])
    assert any(not np.array_equal(a[n], c[n]) for n in a)


@pytest.mark.slow
def test_two_compiles_of_a_seeded_model_train_identically():
    from tvmfront.data import load_digits

    x, y, _, _ = load_digits(seed=0)
    runs = []
    for _ in range(2):
        tm = tvf.compile_training(_seeded_cnn(5), nn.CrossEntropyLoss(),
                                  tvf.optim.SGD(0.05, momentum=0.9), inputs=(16, 1, 8, 8),
                                  labels=(16,))
        losses = [tm.step(x[16 * i:16 * (i + 1)], y[16 * i:16 * (i + 1)]) for i in range(5)]
        runs.append((losses, tm.state_dict(), tm.optimizer_state()))
    (l1, p1, s1), (l2, p2, s2) = runs
    assert l1 == l2
    assert len(set(l1)) > 1  # the steps changed something
    for n in p1:
        np.testing.assert_array_equal(p1[n], p2[n])
    for n in s1:
        np.testing.assert_array_equal(s1[n], s2[n])
