"""A model author's mistakes with layers, compile, Trainer, data helpers and the CLI (the
twenty-third session's sweep of 431 probes): each is an error that names the argument, where
it had been silently dropped (a Sequential without its ReLU, a weight turned constant), had
cropped the input (a negative pooling padding), had deleted every record (--min-speedup nan)
or failed deep inside with an unrelated message."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import cli, nn
from tvmfront.errors import ShapeError


@pytest.mark.parametrize("layer, hint", [("relu", ""), (tvf.ops.relu, "an op"),
                                         (nn.ReLU, "call it"), (None, "")])
def test_sequential_refuses_what_is_not_a_module(layer, hint):
    with pytest.raises(TypeError, match=f"Sequential: layer 1 is a .*not a Module instance.*{hint}"):
        nn.Sequential(nn.Linear(8, 4), layer)


def test_assigning_an_array_to_a_parameter_is_refused_as_in_pytorch():
    lin = nn.Linear(4, 3)
    with pytest.raises(TypeError, match="cannot assign a ndarray as parameter 'weight'"):
        lin.weight = np.zeros((3, 4), "float32")
    lin.weight = tvf.nn.Parameter(np.zeros((3, 4), "float32"))  # a Parameter is fine
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    with pytest.raises(TypeError, match="requires_grad must be a bool"):
        tvf.nn.Parameter(np.zeros(3), requires_grad="no")


@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.MaxPool2d(2, padding=-1), ValueError, "MaxPool2d: padding must be at least 0"),
    (lambda: nn.AvgPool2d(2, stride=0), ValueError, "AvgPool2d: stride must be at least 1"),
    (lambda: nn.MaxPool2d(0), ValueError, "MaxPool2d: kernel_size must be at least 1"),
    (lambda: nn.Conv2d(1, 4, 3, padding="same"), TypeError,
     "Conv2d: padding must be an int or a pair of ints, got 'same'"),
    (lambda: nn.Conv2d(1, 4, 3, stride=1.5), TypeError, "Conv2d: stride must be an int"),
    (lambda: nn.Conv2d(1, 4, (3, 0)), ValueError, "Conv2d: kernel_size must be at least 1"),
    (lambda: nn.Conv2d(0, 4, 3), ValueError, "Conv2d: in_channels must be at least 1, got 0"),
    (lambda: nn.Linear(0, 10), ValueError, "Linear: in_features must be at least 1, got 0"),
    (lambda: nn.Linear(4.0, 10), TypeError, "Linear: in_features must be an int, got 4.0"),
    (lambda: nn.LayerNorm(8.5), TypeError, "LayerNorm: normalized_shape must be an int"),
    (lambda: nn.GroupNorm(-2, 8), ValueError, "GroupNorm: num_groups must be at least 1"),
    (lambda: nn.BatchNorm2d(0), ValueError, "BatchNorm2d: num_features must be at least 1"),
    (lambda: nn.SelfAttention(8, 0), ValueError, "SelfAttention: heads must be at least 1"),
    (lambda: nn.Embedding(10, 4, padding_idx=1.5), TypeError,
     "Embedding: padding_idx must be an int or None"),
])
def test_layer_arguments_are_checked_when_the_layer_is_made(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_negative_pooling_padding_no_longer_crops_the_input():
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype("float32")
    with pytest.raises(ValueError, match="max_pool2d: padding must be at least 0"):
        tvf.ops.max_pool2d(x, kernel=2, padding=-1)
    assert nn.MaxPool2d(2)(x).shape == (4, 1, 4, 4)
    assert nn.MaxPool2d((2, 2), stride=np.int64(2))(x).shape == (4, 1, 4, 4)


def test_compile_names_a_class_or_object_passed_for_an_instance():
    model = nn.Sequential(nn.Linear(4, 3))
    for kw, match in (({"loss": nn.CrossEntropyLoss}, "loss is the class CrossEntropyLoss"),
                      ({"optimizer": None}, "optimizer must be a tvf.optim optimizer"),
                      ({"model": nn.Linear}, "model is the class Linear"),
                      ({"model": lambda x: x}, "model must be an nn.Module")):
        args = {"model": model, "loss": nn.CrossEntropyLoss(), "optimizer": tvf.optim.SGD(0.1),
                **kw}
        with pytest.raises(TypeError, match=match):
            tvf.compile_training(args["model"], args["loss"], args["optimizer"],
                                 inputs=(2, 4), labels=(2,))


def test_an_integer_parameter_to_train_is_named():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.k = tvf.nn.Parameter(np.zeros(3, "int64"))

        def forward(self, x):
            return self.lin(x)
    with pytest.raises(TypeError, match="parameter 'k' is int64; only float parameters"):
        tvf.compile_training(Counter(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                             inputs=(2, 4), labels=(2,))


def test_fit_refuses_a_negative_epoch_count_and_uncallable_hooks():
    module = tvf.compile_training(nn.Sequential(nn.Linear(4, 3)), nn.CrossEntropyLoss(),
                                  tvf.optim.SGD(0.1), inputs=(2, 4), labels=(2,))
    trainer = tvf.Trainer(module, progress=False)
    x, y = np.zeros((4, 4), "float32"), np.zeros(4, "int64")
    with pytest.raises(ValueError, match="fit: epochs must be an int >= 0, got -1"):
        trainer.fit(x, y, epochs=-1)  # was: [] and nothing trained
    with pytest.raises(ValueError, match="epochs must be an int"):
        trainer.fit(x, y, epochs=1.5)
    with pytest.raises(TypeError, match="fit: on_step must be callable"):
        trainer.fit(x, y, on_step=3)
    assert trainer.fit(x, y, epochs=0) == []


def test_data_helpers_refuse_degenerate_splits_and_windows():
    with pytest.raises(ValueError, match="leaves no test sample"):
        tvf.data.load_digits(test_fraction=1e-4)
    with pytest.raises(ValueError, match="leaves no training sample"):
        tvf.data.load_digits(test_fraction=0.9999)
    with pytest.raises(ValueError, match="dtype must be a float dtype"):
        tvf.data.load_digits(dtype="int8")
    ids = np.arange(50)
    with pytest.raises(ValueError, match="lm_windows: length must be an int >= 1"):
        tvf.data.lm_windows(ids, 2, -3, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng must be a numpy Generator"):
        tvf.data.lm_windows(ids, 2, 4, 0)


def test_tensor_spec_names_a_missing_dtype_and_a_bare_size():
    with pytest.raises(ShapeError, match="dtype None"):
        tvf.TensorSpec((4,), None)
    with pytest.raises(ShapeError, match="shape must be a tuple of sizes, got 5"):
        tvf.TensorSpec(5)


@pytest.mark.parametrize("argv, match", [
    (["records", "check", "--prune", "--min-speedup", "nan"], "--min-speedup must be a finite"),
    (["records", "check", "--rounds", "0"], "--rounds must be at least 1"),
    (["tune", "x.py", "--seconds", "-1"], "--seconds must be a finite number > 0"),
    (["tune", "x.py", "--budget", "-5"], "--budget must be at least 1"),
    (["tune", "x.py", "--target", "{bad"], "--target: Expecting property name"),
    (["tune", "x.py", "--size", "batch=0"], "--size 'batch=0': expected NAME=N, N >= 1"),
])
def test_cli_refuses_nonsense_flags_before_touching_a_record(argv, match, capsys):
    """--min-speedup nan made every comparison false: `records check --prune` deleted every
    record."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("make", [
    lambda dt: nn.Linear(4, 3, dtype=dt), lambda dt: nn.Conv2d(1, 2, 3, dtype=dt),
    lambda dt: nn.LayerNorm(4, dtype=dt), lambda dt: nn.GroupNorm(2, 4, dtype=dt),
    lambda dt: nn.BatchNorm2d(4, dtype=dt), lambda dt: nn.Embedding(5, 2, dtype=dt),
    lambda dt: nn.MultiheadAttention(4, 2, dtype=dt),
])
def test_layers_take_float_parameter_dtypes_only(make):
    """int32 weights were drawn from a uniform (-0.5, 0.5) and truncated to zeros (a layer
    that learns nothing, compiled without a word; PyTorch refuses them); bfloat16 was numpy's
    "data type 'bfloat16' not understood"."""
    for bad in ("int32", "uint8", "bfloat16", "bool"):
        with pytest.raises(TypeError, match=f"dtype must be one of float16, float32, float64 "
                                            f".*got '{bad}'"):
            make(bad)
    floats = {str(v.dtype) for v in make(np.float64).state_dict().values() if v.dtype.kind == "f"}
    assert floats == {"float64"}


def test_records_check_names_a_missing_records_folder(tmp_path, capsys):
    """It said "nothing to check" with exit status 0: a typo passed for a clean store."""
    assert cli.main(["records", "check", "--records", str(tmp_path / "typo")]) == 2
    assert f"--records {tmp_path / 'typo'} does not exist" in capsys.readouterr().err


def test_numpy_scalars_are_accepted_where_python_ones_are():
    assert nn.Dropout(np.float32(0.5)).p == 0.5
    assert tvf.optim.schedules.cosine(0.1, np.int64(10))(10) == pytest.approx(0.0)
    sparsity = tvf.nn.pruning.PolynomialSparsity(0.5, end_step=np.int64(10))
    assert sparsity(10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="PolynomialSparsity: power must be a number > 0"):
        tvf.nn.pruning.PolynomialSparsity(0.5, power=-1)


def test_trainer_names_an_uncompiled_model():
    with pytest.raises(TypeError, match="Trainer takes a compiled training module, got "
                                        "Sequential \\(an nn.Module: compile it"):
        tvf.Trainer(nn.Sequential(nn.Linear(4, 3)))


def test_an_unknown_mcpu_is_refused_not_built_for_generic():
    with pytest.raises(tvf.TargetError, match="unknown mcpu 'nonsense'"):
        tvf.target.resolve_target({"kind": "llvm", "mcpu": "nonsense"})
    assert tvf.target.resolve_target({"kind": "llvm", "mcpu": "znver3",
                                      "mtriple": "x86_64-linux-gnu"})


@pytest.mark.parametrize("argv, match", [
    (["launch", "-n", "0", "x.py"], "-n must be at least 1, got 0"),
    (["launch", "-n", "2", "--hosts", "/nonexistent/hosts", "x.py"], "is not a file"),
])
def test_cli_launch_refuses_nonsense_as_a_usage_error(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert match in capsys.readouterr().err


def test_load_state_dict_and_self_attention_name_the_mistake():
    with pytest.raises(TypeError, match="expected a dict-like state_dict"):
        nn.Linear(4, 3).load_state_dict(None)
    with pytest.raises(ValueError, match=r"SelfAttention\(8\): expected x \[B, T, 8\], got "
                                         r"shape \[4, 8\]"):
        tvf.compile_inference(nn.SelfAttention(8, 2), inputs=(4, 8))


def test_a_size_0_input_axis_is_a_shape_error_naming_the_input():
    with pytest.raises(ShapeError, match=r"inputs: x \(0, 4\) has a size-0 axis"):
        tvf.compile_inference(nn.Sequential(nn.Linear(4, 3)), inputs=(0, 4))
    with pytest.raises(ShapeError, match="size-0 axis"):
        tvf.compile_training(nn.Sequential(nn.Linear(4, 3)), nn.CrossEntropyLoss(),
                             tvf.optim.SGD(0.1), inputs=(0, 4), labels=(0,))


def test_seeds_and_huge_sizes_are_named():
    tvf.manual_seed(-1)  # as torch.manual_seed: taken modulo 2**64
    a = nn.Linear(2, 2).state_dict()["weight"]
    tvf.manual_seed(2 ** 64 - 1)
    np.testing.assert_array_equal(nn.Linear(2, 2).state_dict()["weight"], a)
    module = tvf.compile_training(nn.Sequential(nn.Linear(4, 3)), nn.CrossEntropyLoss(),
                                  tvf.optim.SGD(0.1), inputs=(2, 4), labels=(2,))
    for bad in (-1, None, 1.5):
        with pytest.raises(ValueError, match="Trainer: seed must be an int >= 0"):
            tvf.Trainer(module, seed=bad)
    with pytest.raises(ShapeError, match="too large for int64"):
        tvf.TensorSpec((2 ** 70, 4))


def test_cli_tune_names_a_directory_given_for_its_file(tmp_path, capsys):
    assert cli.main(["tune", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err


def test_cli_loads_a_model_file_without_the_py_suffix(tmp_path, capsys):
    # importlib's spec_from_file_location gave None for it: a raw AttributeError ('loader')
    model = tmp_path / "model_noext"
    model.write_text("def tvmfront_modules():\n    return {}\n")
    assert cli.main(["tune", str(model)]) == 2
    assert "must return a non-empty dict" in capsys.readouterr().err


def _pruned_mlp():
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return tvf.nn.pruning.prune(model, 0.5)


def test_pruning_masks_only_grow_and_an_int_amount_is_named():
    """A second prune(0.3) after prune(0.5) revived pruned weights; amount=1 (an int, a count
    in PyTorch) pruned every weight."""
    model = _pruned_mlp()
    with pytest.raises(ValueError, match="amount 0.3 is below the sparsity 0.5"):
        tvf.nn.pruning.prune(model, 0.3)
    assert tvf.nn.pruning.sparsity(model)["global"] == pytest.approx(0.5)
    tvf.nn.pruning.prune(model, 0.7)  # further: fine
    assert tvf.nn.pruning.sparsity(model)["global"] == pytest.approx(0.7, abs=0.01)
    with pytest.raises(ValueError, match="the int 1 would prune every weight"):
        tvf.nn.pruning.prune(model, 1)


def test_prepare_qat_ranges_hold_zero_and_fit_8_bits():
    model = nn.Sequential(nn.Linear(8, 4))
    for kw in ({"weight_range": (-2 ** 40, 2 ** 40)}, {"activation_range": (0, 300)},
               {"activation_range": (5, 255)}):
        with pytest.raises(ValueError, match="must hold 0 and fit 8 bits"):
            tvf.nn.quantization.prepare_qat(model, **kw)
    with pytest.raises(ValueError, match="qmin and qmax must be integers"):
        tvf.nn.quantization.prepare_qat(model, weight_range=(True, 127))


def test_next_token_refuses_logits_that_are_not_finite():
    rng = np.random.default_rng(0)
    gen = tvf.generate.next_token
    with pytest.raises(ValueError, match="logits are nan at row 0, id 1"):
        gen(np.array([[1.0, np.nan, 3.0]]), 1.0, None, rng)  # was: token 0, no error
    with pytest.raises(ValueError, match="logits are inf at row 0, id 1"):
        gen(np.array([[1.0, np.inf, 3.0]]), 1.0, None, rng)
    with pytest.raises(ValueError, match="temperature 1e-310 overflows it"):
        gen(np.array([[1.0, 2.0, 3.0]]), 1e-310, None, rng)
    with pytest.raises(ValueError, match="every logit is -inf"):
        gen(np.array([[-np.inf, -np.inf]]), 1.0, None, rng)
    assert gen(np.array([[-np.inf, 0.0, -np.inf]]), 1.0, None, rng)[0] == 1  # a mask is fine


def test_quantize_reduce_range_must_be_a_bool():
    with pytest.raises(TypeError, match="reduce_range must be True, False or None, got 'no'"):
        tvf.quantize(nn.Sequential(nn.Linear(8, 4)), np.zeros((4, 8), "float32"),
                     inputs=(4, 8), reduce_range="no")


def test_whole_number_arguments_refuse_bools_and_take_numpy_ints():
    """One predicate (_checks.is_whole) decides "an int" everywhere: a bool is refused (axis=True
    had quantized along axis 1, an int_inputs bound of True drew only zeros) and numpy's ints
    are taken (ModuleList[np.int64(0)] had been a TypeError; PyTorch indexes with it)."""
    x = np.ones((2, 3), "float32")
    with pytest.raises(ValueError, match="fake_quant: axis True out of range"):
        tvf.ops.fake_quant(x, np.ones(3, "float32"), np.zeros(3, "int32"), axis=True)
    with pytest.raises(ValueError, match="symmetric_scale: axis True out of range"):
        tvf.ops.quant.symmetric_scale(x, axis=True)
    with pytest.raises(ValueError, match="int_inputs= bound for input 1 must be an int >= 1"):
        tvf.opcheck(tvf.ops.take, int_inputs={1: True})
    layers = nn.ModuleList([nn.ReLU(), nn.Tanh()])
    assert isinstance(layers[np.int64(-1)], nn.Tanh)
    with pytest.raises(TypeError, match="ModuleList indices must be integers or slices, not bool"):
        layers[True]
    scale = np.float32([1, 0.5, 0.25])
    np.testing.assert_array_equal(
        tvf.ops.fake_quant(x * 0.3, scale, np.zeros(3, "int32"), axis=np.int64(1)),
        np.float32([0, 0.5, 0.25]) * np.ones((2, 1), "float32"))


def _int8_entry(**change):
    entry = {"weight_scale": np.full(3, 0.01, np.float32), "input_scale": 0.05,
             "input_zero_point": 0, "input_qmin": -128, "input_qmax": 127}
    entry.update(change)
    return {k: v for k, v in entry.items() if v is not None}


@pytest.mark.parametrize("change, match", [
    ({"weight_scale": -np.full(3, 0.01)}, "weight_scale must be finite numbers > 0"),
    ({"weight_scale": np.full(3, np.nan)}, "weight_scale must be finite numbers > 0"),
    ({"weight_scale": np.ones(4)}, r"one per output channel \(3\)"),
    ({"input_scale": 0.0}, "input_scale must be a finite number > 0"),
    ({"input_zero_point": 300}, r"input_zero_point must be an int in .* \[-128, 127\], got 300"),
    ({"input_qmin": 5, "input_qmax": 2}, "input_qmin, input_qmax must be ints"),
    ({"input_scale": None}, r"lacks \['input_scale'\]"),
])
def test_int8_convert_checks_the_scales_it_is_given(change, match):
    """A negative or NaN scale or a zero point out of range had converted into a model giving
    wrong outputs; a missing key was a bare KeyError."""
    model = nn.Sequential(nn.Linear(4, 3))
    tvf.nn.int8.convert(model, {"0": _int8_entry()})  # the unchanged entry converts
    with pytest.raises(ValueError, match=r"int8.convert: scales\['0'\].*" + match):
        tvf.nn.int8.convert(model, {"0": _int8_entry(**change)})


def test_qat_and_pruning_arguments_are_named():
    """Each had failed with an unrelated message: len() of an int, 'no Linear or Conv2d' for a
    model prepared already, isinstance() of a class, calling a float."""
    qat = tvf.nn.quantization
    with pytest.raises(ValueError, match=r"activation_range must be \(qmin, qmax\), got 8"):
        qat.prepare_qat(nn.Sequential(nn.Linear(8, 4)), activation_range=8)
    prepared = qat.prepare_qat(nn.Sequential(nn.Linear(8, 4)))
    with pytest.raises(ValueError, match="it is prepared already"):
        qat.prepare_qat(prepared)
    pruning = tvf.nn.pruning
    model = pruning.prune(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)), 0.5,
                          layers=nn.Linear)  # one class, as isinstance takes it
    assert pruning.sparsity(model)["global"] == pytest.approx(0.5, abs=0.03)
    with pytest.raises(TypeError, match="layers must be a layer class or a tuple of them"):
        pruning.prune(model, 0.6, layers="Linear")
    with pytest.raises(TypeError, match="schedule must be callable"):
        pruning.fit(None, np.zeros((4, 8)), np.zeros(4), 0.5)
    with pytest.raises(ValueError, match="epochs must be an int >= 0, got -1"):
        pruning.fit(None, np.zeros((4, 8)), np.zeros(4), lambda step: 0.5, epochs=-1)


def test_call_boundary_arguments_are_checked_on_every_path():
    """From the sweep of the call boundary: a fixed batch's predict ignored batch_size (0,
    2.5, an array passed in its place), lr='0.1' went through float(), an explicit
    max_norm=None was 'no default' though the optimizer has one, and next_token failed with
    a bare AttributeError (rng=None) or IndexError (logits [V])."""
    tvf.manual_seed(0)
    x = np.zeros((4, 8), "float32")
    module = tvf.compile_training(nn.Sequential(nn.Linear(8, 3)), nn.MSELoss(),
                                  tvf.optim.AdamW(0.01, max_norm=0.5), inputs=(4, 8),
                                  labels=(4, 3))
    for bad in (0, 2.5, True, x):
        with pytest.raises(ValueError, match="predict: batch_size must be a positive int"):
            module.predict(x, bad)
    with pytest.raises(ValueError, match="learning rate must be a number, got '0.1'"):
        module.step(x, np.zeros((4, 3), "float32"), lr="0.1")
    assert module.step(x, np.zeros((4, 3), "float32"), max_norm=None) >= 0  # the default
    logits = np.array([0.0, 3.0, 1.0])
    assert tvf.generate.next_token(logits, top_k=1) == 1
    token = tvf.generate.next_token(logits, rng=None)
    assert isinstance(token, int) and 0 <= token < 3
    with pytest.raises(ValueError, match=r"logits must be \[batch, vocabulary\] or "
                                         r"\[vocabulary\], got shape \(1, 2, 3\)"):
        tvf.generate.next_token(logits.reshape(1, 1, 3) * np.ones((1, 2, 1)))


def test_load_state_dict_takes_tvm_tensors():
    """Another module's tensors on the device had been 0-d object arrays: 'got shape ()'."""
    from tvmfront._tvm import to_device
    module = tvf.compile_inference(nn.Sequential(nn.Linear(3, 2)), inputs=(1, 3))
    state = {k: v + 1 for k, v in module.state_dict().items()}
    module.load_state_dict({k: to_device(v) for k, v in state.items()})
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def test_cross_entropy_skips_ignored_rows_and_checks_eager_labels():
    """An ignored row with logits all -inf (a padded position's) or NaN made the loss NaN
    (0 * NaN; PyTorch skips the row); eagerly, a label out of range gave logsumexp alone as
    its loss where PyTorch raises and the compiled step refuses it."""
    loss = nn.CrossEntropyLoss()
    row0 = np.log(1 + np.exp(-1.5))  # -log softmax([0.5, -1])[0]
    for bad in ([-np.inf, -np.inf], [np.nan, np.nan]):
        logits = np.array([[0.5, -1.0], bad])
        assert float(loss(logits, np.array([0, -100]))) == pytest.approx(row0, rel=1e-12)
    with pytest.raises(ShapeError, match=r"labels must lie in \[0, 4\) or ignore_index -100, "
                                         r"got values in \[-1, 4\]"):
        loss(np.zeros((2, 4)), np.array([4, -1]))


def test_a_checkpoint_path_that_is_a_directory_is_named(tmp_path):
    """os.replace's IsADirectoryError had named the internal temporary file."""
    from tvmfront import checkpoint
    with pytest.raises(IsADirectoryError, match=f"checkpoint path {tmp_path} is a directory"):
        checkpoint.write_atomic(tmp_path, b"data")
    assert list(tmp_path.iterdir()) == []
