"""AdamW, RMSprop, Adagrad, parameter groups and global-norm clipping, compiled into the step
and checked against numpy written from PyTorch's documented update rules (test_optim_torch.py
compares with PyTorch itself)."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


def _model():
    tvf.manual_seed(4)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _batches(steps=4):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((6, 5)).astype("float32"), rng.integers(0, 3, 6))
            for _ in range(steps)]


def _clip(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_."""
    norm = np.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads.values()))
    coef = min(1.0, max_norm / (norm + 1e-6))
    return {n: g * coef for n, g in grads.items()}


def _adamw(p, g, s, t, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    p = p * (1 - lr * wd)
    s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
    return p - lr * (s["m"] / (1 - b1 ** t)) / (np.sqrt(s["v"] / (1 - b2 ** t)) + eps)


def _rmsprop(p, g, s, t, lr, wd, alpha=0.9, eps=1e-8, momentum=0.5):
    g = g + wd * p
    s["v"] = alpha * s.get("v", 0) + (1 - alpha) * g * g
    s["g"] = alpha * s.get("g", 0) + (1 - alpha) * g  # centered
    s["b"] = momentum * s.get("b", 0) + g / (np.sqrt(s["v"] - s["g"] ** 2) + eps)
    return p - lr * s["b"]


def _adagrad(p, g, s, t, lr, wd, lr_decay=0.05, eps=1e-10):
    g = g + wd * p
    s["sum"] = s.get("sum", 0.1) + g * g
    return p - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s["sum"]) + eps)


GROUPS = [{"params": ["*.bias"], "weight_decay": 0.0}, {"params": "2.weight", "lr_scale": 0.5}]
CASES = {
    "adamw": (tvf.optim.AdamW(0.05, weight_decay=0.1, groups=GROUPS, max_norm=0.3), _adamw, 0.1),
    "rmsprop": (tvf.optim.RMSprop(0.01, alpha=0.9, momentum=0.5, centered=True,
                                  weight_decay=0.02, groups=GROUPS), _rmsprop, 0.02),
    "adagrad": (tvf.optim.Adagrad(0.1, lr_decay=0.05, weight_decay=0.02,
                                  initial_accumulator_value=0.1, groups=GROUPS), _adagrad, 0.02),
    # a beta of 0 (GANs' Adam): no bias correction to make; it raised at compile time
    # (one_minus_pow refuses the base 0)
    "adamw-beta1-0": (tvf.optim.AdamW(0.05, betas=(0.0, 0.99), weight_decay=0.1,
                                      groups=GROUPS),
                      lambda *a: _adamw(*a, b1=0.0, b2=0.99), 0.1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_with_groups_matches_numpy(case):
    optimizer, rule, wd = CASES[case]
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), optimizer, inputs=(6, 5),
                                  labels=(6,))
    params = {n: v.astype("float64") for n, v in module.state_dict().items()}
    state = {n: {} for n in NAMES}
    # max_norm is a runtime input: the default (0.3), then other values on the same build
    norms = [None, 1e3, 0.05, 0.2]
    for t, ((x, y), max_norm) in enumerate(zip(_batches(), norms), 1):
        _, grads = module.loss_and_grads(x, y)
        if case == "adamw":
            grads = _clip(grads, 0.3 if max_norm is None else max_norm)
            module.step(x, y, **({} if max_norm is None else {"max_norm": max_norm}))
        else:
            module.step(x, y)
        for n in NAMES:
            scale = 0.5 if n == "2.weight" else 1.0
            decay = 0.0 if n.endswith("bias") else wd
            params[n] = rule(params[n], grads[n].astype("float64"), state[n], t,
                             optimizer.lr * scale, decay)
        for n, v in module.state_dict().items():
            np.testing.assert_allclose(v, params[n], rtol=2e-5, atol=1e-6,
                                       err_msg=f"{case}: {n} after step {t}")


def test_clipping_scales_to_the_runtime_max_norm():
    """A tiny max_norm leaves an SGD step of exactly lr * max_norm in global norm."""
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(),
                                  tvf.optim.SGD(1.0, max_norm=1.0), inputs=(6, 5), labels=(6,))
    assert module.scalar_inputs == ["lr", "step", "max_norm"]
    (x, y), = _batches(1)
    for max_norm in (1e-3, 2e-3):
        before = module.state_dict()
        module.step(x, y, max_norm=max_norm)
        moved = np.sqrt(sum(((module.state_dict()[n] - before[n]) ** 2).sum() for n in NAMES))
        assert moved == pytest.approx(max_norm, rel=1e-3)


def test_runtime_scalars_are_checked():
    optimizer = tvf.optim.Optimizer("clipped", tvf.optim.chain(
        tvf.optim.clip_by_global_norm(None), tvf.optim.scale_by_learning_rate()), lr=0.1)
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), optimizer, inputs=(6, 5),
                                  labels=(6,))
    (x, y), = _batches(1)
    with pytest.raises(ValueError, match=r"gives max_norm no default; pass step\(x, y, "
                                         r"max_norm=...\)"):
        module.step(x, y)
    with pytest.raises(ValueError, match="step: max_norm must be a number >= 0, got nan"):
        module.step(x, y, max_norm=float("nan"))
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['max_nrom'\]; this step's "
                                        r"runtime scalars are \['lr', 'step', 'max_norm'\]"):
        module.step(x, y, max_nrom=1.0)
    assert module.step_count == 0
    module.step(x, y, max_norm=1.0)
    assert module.step_count == 1


def test_plain_optimizer_takes_no_extra_scalars():
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.Adam(0.01),
                                  inputs=(6, 5), labels=(6,))
    assert module.scalar_inputs == ["lr", "step"]
    assert "scalar_inputs" not in module.manifest["optimizer"]["hyperparameters"]
    (x, y), = _batches(1)
    with pytest.raises(TypeError, match="unknown keyword"):
        module.step(x, y, max_norm=1.0)


SPECS = {n: ((4,), "float32") for n in NAMES}


@pytest.mark.parametrize("groups,error,match", [
    ([{"params": ["0.wieght"]}], ValueError,
     r"group 0 names '0.wieght', which matches no trained parameter; the trained parameters "
     r"are \['0.bias', '0.weight', '2.bias', '2.weight'\]"),
    ([{"params": ["*.bias"]}, {"params": ["2.bias"], "lr_scale": 2.0}], ValueError,
     "group 1 names '2.bias', which matches no trained parameter not taken by an earlier group"),
    ([{"params": ["*.bias"], "momentum": 0.0}], TypeError,
     r"group 0: unknown settings \['momentum'\]; a group may set \['lr_scale', 'weight_decay'\]"),
    ([{"params": ["*.bias"], "weight_decay": -1.0}], ValueError,
     "weight_decay must be a finite number >= 0, got -1.0"),
    ([{"weight_decay": 0.0}], TypeError, "must be a dict with 'params'"),
    ([{"params": []}], TypeError, "non-empty list"),
    ({"params": ["*.bias"]}, TypeError, "groups must be a list of dicts"),
], ids=["unknown-name", "taken", "unknown-setting", "negative", "no-params", "empty", "not-list"])
def test_bad_groups_are_clear_errors(groups, error, match):
    with pytest.raises(error, match=match):
        tvf.optim.AdamW(groups=groups).init(SPECS)


def test_group_naming_an_unknown_parameter_fails_compile():
    with pytest.raises(ValueError, match="AdamW: group 0 names 'head.*'"):
        tvf.compile_training(_model(), nn.CrossEntropyLoss(),
                             tvf.optim.AdamW(groups=[{"params": "head.*"}]),
                             inputs=(6, 5), labels=(6,))


def test_group_without_decay_emits_no_decay():
    """weight_decay 0 for a group costs no kernel: those parameters' updates are pure Adam."""
    from tvmfront.optim.groups import ParamGroups
    groups = ParamGroups("AdamW", GROUPS, weight_decay=0.1, lr_scale=1.0)
    assert [groups.setting("weight_decay")(n) for n in NAMES] == [0.1, 0.0, 0.1, 0.0]
    assert [groups.setting("lr_scale")(n) for n in NAMES] == [1.0, 1.0, 0.5, 1.0]
    g = {n: np.ones(4, "float32") for n in NAMES}
    updates, _ = tvf.optim.add_decayed_weights(groups.setting("weight_decay")).update(
        g, {}, {n: np.full(4, 2.0, "float32") for n in NAMES}, {})
    assert updates["0.bias"] is g["0.bias"]
    np.testing.assert_allclose(updates["0.weight"], 1.2)


def test_exported_bundle_keeps_the_runtime_scalars(tmp_path):
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(),
                                  tvf.optim.AdamW(0.05, max_norm=0.25), inputs=(6, 5),
                                  labels=(6,))
    hyper = module.manifest["optimizer"]["hyperparameters"]
    assert hyper["scalar_inputs"] == ["lr", "step", "max_norm"] and hyper["max_norm"] == 0.25
    (x, y), (x2, y2) = _batches(2)
    module.step(x, y)
    loaded = tvf.load(module.export(str(tmp_path / "bundle")))
    assert loaded.scalar_inputs == module.scalar_inputs
    assert loaded.scalar_defaults == {"max_norm": 0.25}
    assert loaded.step(x2, y2) == module.step(x2, y2)
    assert loaded.step(x, y, max_norm=0.01) == module.step(x, y, max_norm=0.01)
    for n, v in module.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[n], v, err_msg=n)


def test_global_norm_runs_eagerly_on_numpy():
    grads = {"a": np.arange(6, dtype="float32").reshape(2, 3), "b": np.float32([3.0]),
             "c": np.array(4.0, "float32")}
    want = np.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert float(tvf.optim.global_norm(grads)) == pytest.approx(want, rel=1e-6)


def test_adam_bias_correction_is_exact_to_float32():
    """1 - 0.999 ** t cancels three digits: in float32 it was 3e-5 off at t = 1 (1.2e-4 with a
    fast exp), which moved every Adam update by 1.5e-5 relative. The step's updates now agree
    with float64 to float32 rounding (lr = 1, so a parameter's change is the update itself)."""
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), tvf.optim.Adam(1.0),
                                  inputs=(6, 5), labels=(6,))
    state = {n: {} for n in NAMES}
    for t, (x, y) in enumerate(_batches(3), 1):
        _, grads = module.loss_and_grads(x, y)
        before = module.state_dict()
        module.step(x, y)
        for n in NAMES:
            expected = before[n] - _adamw(before[n].astype("float64"), grads[n].astype("float64"),
                                          state[n], t, lr=1.0, wd=0.0)
            moved = (before[n] - module.state_dict()[n]).astype("float64")
            np.testing.assert_allclose(moved, expected, rtol=2e-6, atol=1e-6,
                                       err_msg=f"{n} at step {t}")


@pytest.mark.parametrize("make, match", [
    (lambda: tvf.optim.Adam(1e-3, betas=(1.0, 0.999)), r"Adam: betas\[0\] must be in \[0, 1\), got 1.0"),
    (lambda: tvf.optim.AdamW(1e-3, betas=(0.9, -0.1)), r"AdamW: betas\[1\] must be a finite number >= 0"),
    (lambda: tvf.optim.Adam(1e-3, betas=(0.9,)), r"Adam: betas must be two numbers in \[0, 1\)"),
    (lambda: tvf.optim.Adam(1e-3, eps=-1e-8), "Adam: eps must be a finite number >= 0, got -1e-08"),
    (lambda: tvf.optim.AdamW(1e-3, weight_decay=-0.1), "AdamW: weight_decay must be a finite"),
    (lambda: tvf.optim.SGD(0.1, momentum=-0.5), "SGD: momentum must be a finite number >= 0"),
    (lambda: tvf.optim.SGD(0.1, weight_decay=float("nan")), "SGD: weight_decay must be a finite"),
    (lambda: tvf.optim.RMSprop(0.01, alpha=-0.1), "RMSprop: alpha must be a finite number >= 0"),
    (lambda: tvf.optim.Adagrad(0.01, lr_decay=-1.0), "Adagrad: lr_decay must be a finite"),
    (lambda: tvf.optim.Adagrad(0.01, initial_accumulator_value=-1.0),
     "Adagrad: initial_accumulator_value must be a finite number >= 0"),
    (lambda: tvf.optim.Adam(float("inf")), "Adam: lr must be a finite number >= 0, got inf"),
    (lambda: tvf.optim.SGD(-0.1), "SGD: lr must be a finite number >= 0, got -0.1"),
])
def test_invalid_hyperparameters_are_refused_as_pytorch_refuses_them(make, match):
    # They were accepted: betas of 1 divide by 1 - 1 ** t = 0 (NaN from the first step), a
    # negative eps or decay trains into NaN or divergence without an error
    with pytest.raises(ValueError, match=match):
        make()


def test_a_learning_rate_of_zero_is_accepted_as_in_pytorch():
    # refused at construction before, while module.step(lr=0) took it
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(),
                                  tvf.optim.Adam(0, betas=(np.float32(0.5), 0.9)),
                                  inputs=(6, 5), labels=(6,))
    before = module.state_dict()
    module.step(*_batches(1)[0])
    for n, v in module.state_dict().items():
        np.testing.assert_array_equal(v, before[n])
