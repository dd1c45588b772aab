"""take / embedding / one_hot beyond the op table: out-of-range ids (a clear error eagerly and
from a compiled module, clamped inside the kernels, never an out-of-bounds read), the
scatter-add gradient with repeated and clamped ids, padding_idx, and nn.Embedding in a
compiled train step."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.op import bound_checks

from _fd import check_directional_grads

nn, ops = tvf.nn, tvf.ops


# ---- eager: out-of-range ids are a ValueError naming the id, before any kernel runs ---------
@pytest.mark.parametrize("call,match", [
    (lambda: ops.take(np.ones((5, 2)), np.array([0, 5])), r"take: index 5 at position \(1,\)"),
    (lambda: ops.take(np.ones((2, 3)), np.array([[1], [-1]]), axis=1), r"index -1 at .*0\.\.2"),
    (lambda: ops.embedding(np.ones((4, 2)), np.array([[0, 1], [4, 2]], np.int32)),
     r"embedding: id 4 at position \(1, 0\) is out of range: the valid range is 0\.\.3"),
    (lambda: ops.one_hot(np.array([0, 3]), depth=3), r"one_hot: class id 3"),
    (lambda: ops.embedding.vjp(np.ones((1, 2)), np.ones((4, 2)), np.array([9])), r"id 9"),
    # a label out of range had given a loss silently (nn.CrossEntropyLoss refused it)
    (lambda: ops.cross_entropy(np.zeros((3, 5)), np.array([0, 7, 1])),
     r"cross_entropy: label 7 at position \(1,\) is out of range: the valid range is 0\.\.4 "
     r"\(or -100, which is ignored\)"),
    (lambda: ops.cross_entropy.vjp(np.float64(1), np.zeros((2, 5)), np.array([-1, 0])),
     r"label -1"),
    (lambda: ops.cross_entropy(np.zeros((2, 5)), np.array([-100, 5]), ignore_index=-100),
     r"label 5"),
], ids=["take-too-big", "take-negative", "embedding-int32", "one_hot", "embedding-vjp",
        "cross_entropy", "cross_entropy-vjp", "cross_entropy-ignored-beside"])
def test_out_of_range_ids_are_a_clear_eager_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cross_entropy_skips_ignore_index_in_its_label_check():
    x = np.zeros((3, 5), np.float32)
    assert ops.cross_entropy(x, np.array([0, 9, 1]), ignore_index=9) == \
        pytest.approx(np.log(5), rel=1e-6)


def test_float_ids_are_a_type_error():
    with pytest.raises(TypeError, match="take: index.*must be integers"):
        ops.take(np.ones((3, 2)), np.array([0.0, 1.0]))


def test_bad_axis_and_padding_idx():
    with pytest.raises(ValueError, match="take: axis 2 out of range"):
        ops.take(np.ones((3, 2)), np.array([0]), axis=2)
    with pytest.raises(ValueError, match="padding_idx 4 out of range for 4 rows"):
        ops.embedding(np.ones((4, 2)), np.array([0]), padding_idx=4)
    with pytest.raises(ValueError, match="Embedding: padding_idx -6 out of range"):
        nn.Embedding(5, 2, padding_idx=-6)


# ---- compiled semantics: ids clamped into range, bound checks find no out-of-bounds read ----
@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_kernel_clamps_out_of_range_ids_without_reading_out_of_bounds(dtype):
    # `unchecked` runs the very kernel compiled code runs, without the eager check; under
    # bound checks a read outside x would raise OutOfBoundsError.
    x = np.arange(12.0).reshape(4, 3)
    ids = np.array([-7, 0, 3, 4, 2**31 - 1 if dtype == "int32" else 2**40], dtype)
    with bound_checks():
        got = ops.take.unchecked(x, ids, axis=0)
        emb = ops.embedding.unchecked(x, ids.reshape(1, 5))
    np.testing.assert_array_equal(got, x[np.clip(ids, 0, 3)])
    np.testing.assert_array_equal(emb[0], x[np.clip(ids, 0, 3)])


def test_one_hot_of_out_of_range_id_in_kernel_is_a_zero_row():
    with bound_checks():
        got = ops.one_hot.unchecked(np.array([1, 7, -1]), depth=3)
    np.testing.assert_array_equal(got, [[0, 1, 0], [0, 0, 0], [0, 0, 0]])


def test_scatter_add_gradient_sums_repeated_ids():
    x = np.zeros((4, 2))
    ids = np.array([[3, 1], [3, 3]])
    dy = np.arange(8.0).reshape(2, 2, 2)
    (dx, dids) = ops.take.vjp(dy, x, ids)
    expected = np.zeros((4, 2))
    np.add.at(expected, ids, dy)  # numpy's unbuffered scatter-add
    np.testing.assert_array_equal(dx, expected)
    assert dids.shape == ids.shape and not dids.any()


def test_scatter_add_gradient_is_linear_in_the_ids_not_their_product_with_the_table():
    """The gradient adds each id's row of dy into its table row: a loop nest of about
    table + dy iterations. The reduction it replaced scanned every id for every table
    element: 2^31 iterations here, where this kernel makes 2^21 (a word vocabulary's
    embedding gradient)."""
    from tvmfront._tvm import te
    from tvmfront.schedule.analysis import kernel_work
    rows, dim, ids_shape = 1 << 14, 64, (8, 256)
    w = te.placeholder((rows, dim), name="w")
    ids = te.placeholder(ids_shape, "int64", name="ids")
    dy = te.placeholder((*ids_shape, dim), name="dy")
    dw = ops.embedding.te_grad(dy, w, ids)[0]
    work = kernel_work(te.create_prim_func([dy, ids, dw]))
    assert work <= 2 * (rows * dim + 8 * 256 * dim), work
    # a large table, ids in any order and repeated: numpy's unbuffered scatter-add
    rng = np.random.default_rng(2)
    table = np.zeros((rows, 8), "float32")
    ids_np = rng.integers(0, rows, size=(4, 300))
    ids_np[0, :5] = 7
    grad = rng.standard_normal((4, 300, 8)).astype("float32")
    expected = np.zeros_like(table)
    np.add.at(expected, ids_np, grad)
    np.testing.assert_allclose(ops.embedding.vjp(grad, table, ids_np)[0], expected,
                               rtol=1e-6, atol=1e-6)


def test_embedding_padding_row_gets_no_gradient():
    w = np.random.default_rng(0).standard_normal((5, 3))
    ids = np.array([[2, 0, 0], [4, 2, 0]])
    dy = np.random.default_rng(1).standard_normal((2, 3, 3))
    dw = ops.embedding.vjp(dy, w, ids, padding_idx=0)[0]
    expected = np.zeros_like(w)
    np.add.at(expected, ids, dy)
    expected[0] = 0
    np.testing.assert_allclose(dw, expected, rtol=1e-12)
    # padding_idx=-5 is row 0 too (PyTorch counts a negative padding_idx from the end)
    np.testing.assert_array_equal(ops.embedding.vjp(dy, w, ids, padding_idx=-5)[0], dw)


# ---- nn.Embedding ---------------------------------------------------------------------------
def test_embedding_layer_layout_and_init():
    tvf.manual_seed(0)
    emb = nn.Embedding(400, 50, padding_idx=3)
    w = emb.weight.data
    assert w.shape == (400, 50) and w.dtype == np.float32
    assert list(emb.state_dict()) == ["weight"]
    assert not w[3].any()
    rest = np.delete(w, 3, axis=0)
    assert abs(rest.mean()) < 0.02 and abs(rest.std() - 1) < 0.02  # N(0, 1), 19950 draws
    assert repr(emb).startswith("Embedding(400, 50, padding_idx=3")
    out = emb(np.array([[3, 1]]))
    np.testing.assert_array_equal(out, w[[[3, 1]]])


class Bag(nn.Module):
    """Embedding -> mean over tokens -> Linear."""

    def __init__(self, padding_idx=0):
        super().__init__()
        self.emb = nn.Embedding(7, 4, padding_idx=padding_idx)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(ops.mean(self.emb(ids), axis=1))


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_embedding_trains_in_a_compiled_step_and_padding_row_stays(dtype):
    tvf.manual_seed(1)
    model = Bag()
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 7, (6, 5)).astype(dtype)
    ids[:, 3:] = 0  # padded tail
    y = rng.integers(0, 3, 6)
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(0.1),
                                  inputs=tvf.TensorSpec((6, 5), dtype), labels=(6,))
    before = module.state_dict()["emb.weight"].copy()
    losses = [float(module.step(ids, y)) for _ in range(30)]
    after = module.state_dict()["emb.weight"]
    assert losses[-1] < 0.6 * losses[0], losses
    np.testing.assert_array_equal(after[0], before[0])      # padding row: no gradient, no update
    assert not np.allclose(after[1:], before[1:])
    # The compiled gradient itself (not only the update) is zero on the padding row.
    _, grads = module.loss_and_grads(ids, y)
    assert not grads["emb.weight"][0].any()


def test_compiled_modules_refuse_the_ids_their_kernels_would_clamp():
    # The kernels clamp (tested above, under bound checks); a compiled module checks the ids
    # of a data input before they reach them, as the eager op does (PyTorch raises too)
    tvf.manual_seed(2)
    model = Bag(padding_idx=None)
    spec = tvf.TensorSpec(("batch", 3), "int64")
    infer = tvf.compile_inference(model, inputs=spec)
    train = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1), inputs=spec,
                                 labels=("batch",))
    assert infer.manifest["id_ranges"] == {"predict": {"x": 7}}
    assert train.manifest["id_ranges"] == {"predict": {"x": 7}, "step": {"x": 7}}
    bad = np.array([[1, 70, 4], [6, 2, 7]], dtype=np.int64)
    low = np.array([[1, 5, -4], [6, 2, 0]], dtype=np.int64)
    y = np.zeros(2, np.int64)
    state = train.state_dict()
    for call, name in ((infer, "predict"), (infer.predict, "predict"),
                       (lambda x: infer.predict(x, batch_size=1), "predict"),
                       (lambda x: train.step(x, y), "step"),
                       (lambda x: train.step([x], y), "step"),
                       (lambda x: train.loss(x, y), "step")):
        with pytest.raises(ValueError, match=rf"{name}: x holds 70 at \(0, 1\), out of range: "
                                             r"it indexes a table of 7 rows, so it must lie in "
                                             r"0\.\.6"):
            call(bad)
        with pytest.raises(ValueError, match=r"x holds -4 at \(0, 2\), out of range"):
            call(low)
    assert train.step_count == 0
    for name, value in train.state_dict().items():
        np.testing.assert_array_equal(value, state[name])
    good = np.clip(bad, 0, 6)
    np.testing.assert_allclose(infer(good), model(good), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"embedding: id 70 at position \(0, 1\)"):
        model(bad)  # the same model run eagerly refuses


class SiluBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4, padding_idx=1, dtype="float64")
        self.act = nn.SiLU()
        self.head = nn.Linear(4, 3, dtype="float64")

    def forward(self, ids):
        return self.head(ops.sum(self.act(self.emb(ids)), axis=1))


def test_embedding_and_silu_compiled_gradients_match_finite_differences():
    tvf.manual_seed(3)
    rng = np.random.default_rng(3)
    ids = np.array([[0, 2, 2, 1], [4, 1, 3, 0]], dtype=np.int32)   # repeats and padding
    y = np.array([2, 0])
    module = tvf.compile_training(SiluBag(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=ids, labels=y)
    # The padding row is read but gets no gradient (PyTorch's rule, not the derivative):
    # the finite differences move every other row.
    not_padding = np.ones((5, 1))
    not_padding[1] = 0
    grads = check_directional_grads(module, ids, y, ["emb.weight", "head.weight"], rng,
                                    eps=1e-5, rtol=1e-6, atol=1e-9,
                                    masks={"emb.weight": not_padding})
    assert not grads["emb.weight"][1].any() and grads["emb.weight"][2].any()
