"""Generation with a key/value cache: nn.CausalLM's compiled prefill and decode give forward's
logits, and tvf.generate.sample draws the same ids in-process and from a bundle reloaded in a
fresh process. One compiled module serves every test (symbolic batch and prompt length)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import generate, nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = dict(vocab_size=13, context=10, d_model=16, nhead=2, num_layers=2, dim_feedforward=32)


def _compiled(dtype="float32"):
    tvf.manual_seed(3)
    model = nn.CausalLM(**SIZES, dtype=dtype)
    return model, tvf.compile_inference(
        model, tvf.Spec(("batch", "seq"), "int64"),
        methods={"prefill": model.prefill_spec("batch"), "decode": model.decode_spec("batch")})


@pytest.fixture(scope="module")
def lm():
    return _compiled()


def _ids(shape, seed=0):
    return np.random.default_rng(seed).integers(0, SIZES["vocab_size"], size=shape)


def _decode_all(module, ids, start):
    """Prefill ids[:, :start], then decode every later token: the logits at each position."""
    logits, k, v = module.prefill(ids[:, :start])
    out = [logits]
    for p in range(start, ids.shape[1]):
        logits, k, v = module.decode(ids[:, p:p + 1], np.array(p, np.int64), k, v)
        out.append(logits)
    return np.stack(out, axis=1), k, v  # [B, T - start + 1, V]


def _check_decode_equals_forward(module, rtol):
    ids = _ids((2, SIZES["context"]))
    full = module(ids)                                           # [B, T, V]
    got, k, v = _decode_all(module, ids, start=3)
    np.testing.assert_allclose(got, full[:, 2:], rtol=rtol, atol=rtol)
    # the cache after the last step is the whole context's keys: prefill's of all tokens
    _, k_all, v_all = module.prefill(ids)
    np.testing.assert_allclose(k, k_all, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(v, v_all, rtol=rtol, atol=rtol)


def test_decode_logits_equal_forward_at_every_position(lm):
    _check_decode_equals_forward(lm[1], 1e-4)


@pytest.mark.slow
def test_decode_equals_forward_in_float64():
    _check_decode_equals_forward(_compiled("float64")[1], 1e-12)


def test_prefill_is_forward_at_the_last_position_with_an_empty_tail(lm):
    _, module = lm
    ids = _ids((3, 4), seed=1)
    logits, k, v = module.prefill(ids)
    np.testing.assert_allclose(logits, module(ids)[:, -1], rtol=1e-5, atol=1e-5)
    assert k.shape == v.shape == (2, 3, 2, SIZES["context"], 8)
    assert not k[:, :, :, 4:].any() and not v[:, :, :, 4:].any()
    assert k[:, :, :, :4].all()


def test_decode_reads_the_cache_it_is_given(lm):
    # a decode step depends on the earlier tokens only through the cache: zeroing the cache
    # changes its logits, while the position alone (no cache) is not enough to reproduce them
    _, module = lm
    ids = _ids((1, 5), seed=2)
    logits, k, v = module.prefill(ids[:, :4])
    pos = np.array(4, np.int64)
    step, _, _ = module.decode(ids[:, 4:], pos, k, v)
    blank, _, _ = module.decode(ids[:, 4:], pos, np.zeros_like(k), np.zeros_like(v))
    np.testing.assert_allclose(step, module(ids)[:, -1], rtol=1e-4, atol=1e-4)
    assert np.abs(step - blank).max() > 1e-3


def test_greedy_sampling_is_argmax_of_a_full_rerun(lm):
    _, module = lm
    prompt = _ids((2, 3), seed=4)
    got = generate.sample(module, prompt, steps=6, top_k=1)
    ids = prompt
    for _ in range(6):
        ids = np.concatenate([ids, module(ids)[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(got, ids[:, 3:])


_CHILD = r"""
import json, sys
import numpy as np
import tvmfront as tvf
m = tvf.load(sys.argv[1])
ids = tvf.generate.sample(m, [1, 2, 3], steps=8, temperature=0.7, top_k=5, seed=11)
print(json.dumps(ids.tolist()))
"""


def test_bundle_generates_the_same_ids_in_a_fresh_process(lm, tmp_path):
    _, module = lm
    want = generate.sample(module, [1, 2, 3], steps=8, temperature=0.7, top_k=5, seed=11)
    assert want.shape == (8,) and want.dtype == np.int64
    path = module.export(tmp_path / "lm")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == want.tolist()
    # another seed draws other ids (the seed is used)
    other = [generate.sample(module, [1, 2, 3], steps=8, temperature=0.7, top_k=5, seed=s)
             for s in (12, 13)]
    assert any(o.tolist() != want.tolist() for o in other)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt_ids=list(range(11)), steps=1), "prompt has 11 tokens, more than the context"),
    (dict(prompt_ids=[1] * 4, steps=8), r"4 tokens and 8 steps need 11 positions.*at most 7"),
    (dict(prompt_ids=[1], steps=2, temperature=0.0), "temperature must be a finite number > 0"),
    (dict(prompt_ids=[1], steps=2, temperature=-1), "temperature"),
    (dict(prompt_ids=[1], steps=2, top_k=0), r"top_k must be None or an int in 1..13"),
    (dict(prompt_ids=[1], steps=2, top_k=14), r"top_k"),
    (dict(prompt_ids=[1], steps=2, top_k=2.5), r"top_k"),
    (dict(prompt_ids=[], steps=2), r"T >= 1"),
    (dict(prompt_ids=[1], steps=-1), r"steps must be an int >= 0"),
    # sample names the vocabulary before the compiled prefill would refuse them
    (dict(prompt_ids=[1, 13, 2], steps=2), r"token ids in 0..12 \(the vocabulary\), got 13"),
    (dict(prompt_ids=[[1, 2], [-4, 3]], steps=2), r"token ids in 0..12.*got -4"),
])
def test_bad_requests_are_named(lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate.sample(lm[1], **kwargs)


def test_prefill_of_an_empty_prompt_is_refused_not_read_outside_its_buffer(lm, tmp_path):
    # prefill's logits are x[:, -1] over a symbolic prompt length: at length 0 the kernel read
    # the row before the buffer (other numbers each call); the traced int index records that
    # the method needs one position, checked per call, in a reloaded bundle too
    module = lm[1]
    assert module.manifest["methods"]["prefill"]["min_sizes"] == {"seq": 1}
    assert "min_sizes" not in module.manifest["methods"]["decode"]
    loaded = tvf.load(module.export(str(tmp_path / "lm")))
    for m in (module, loaded):
        for call in (m.prefill, lambda ids: m.call_tensors("prefill", ids)):
            with pytest.raises(tvf.ShapeError, match="dimension 'seq' is 0 in prefill: input "
                                                     "'idx', but prefill needs at least 1 position"):
                call(np.zeros((2, 0), np.int64))
        logits, _, _ = m.prefill(_ids((2, 1)))  # one position is enough
        assert logits.shape == (2, SIZES["vocab_size"])


def test_a_module_without_prefill_and_decode_or_float_ids_are_refused(lm):
    class Plain:  # what sample reads of a module: its manifest's methods
        manifest = {"methods": {"prefill": {}}}

    with pytest.raises(ValueError, match="no compiled decode"):
        generate.sample(Plain(), [1], steps=1)
    with pytest.raises(TypeError, match="integer token ids"):
        generate.sample(lm[1], [0.5], steps=1)


def test_next_token_follows_temperature_and_top_k():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]] * 20000))
    draws = generate.next_token(logits, rng=rng)
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20000, [.1, .2, .3, .4],
                               atol=0.015)
    top2 = generate.next_token(logits, top_k=2, rng=rng)
    np.testing.assert_allclose(np.bincount(top2, minlength=4) / 20000, [0, 0, 3 / 7, 4 / 7],
                               atol=0.015)
    cold = generate.next_token(logits, temperature=0.25, rng=rng)  # p ~ p^4: mostly id 3
    want = np.array([.1, .2, .3, .4]) ** 4 / (np.array([.1, .2, .3, .4]) ** 4).sum()
    np.testing.assert_allclose(np.bincount(cold, minlength=4) / 20000, want, atol=0.015)
    assert (generate.next_token(logits[:3], top_k=1) == 3).all()


@pytest.mark.slow
def test_default_specs_fix_the_batch_at_one():
    # model.prefill_spec() / decode_spec(): batch 1, any prompt length (the fast decode step)
    tvf.manual_seed(5)
    model = nn.CausalLM(**SIZES)
    module = tvf.compile_inference(model, tvf.Spec((1, "seq"), "int64"), methods={
        "prefill": model.prefill_spec(), "decode": model.decode_spec()})
    assert module.manifest["methods"]["decode"]["inputs"][2]["shape"] == [2, 1, 2, 10, 8]
    got = generate.sample(module, [4, 2], steps=8, top_k=1)
    ids = np.array([[4, 2]])
    for _ in range(8):
        ids = np.concatenate([ids, module(ids)[:, -1:].argmax(-1)], axis=1)
    np.testing.assert_array_equal(got, ids[0, 2:])
    with pytest.raises(ValueError, match="compiled for batch 1, got 2 prompts"):
        generate.sample(module, [[4, 2], [1, 1]], steps=2)
