"""tvf.data's text helpers for character-level language models: the pydoc text, its
vocabulary, encode/decode and the random windows a training batch is cut from."""

import hashlib

import numpy as np
import pytest

from tvmfront import data


def test_pydoc_text_is_the_sorted_topics_with_its_hash_and_size():
    from pydoc_data.topics import topics

    text, sha, nbytes = data.load_pydoc_text()
    assert text.startswith(topics[min(topics)]) and text.endswith(topics[max(topics)])
    assert len(text) == sum(len(v) for v in topics.values())
    raw = text.encode("utf-8")
    assert nbytes == len(raw) > 100_000 and sha == hashlib.sha256(raw).hexdigest()


def test_encode_decode_round_trip():
    text = "hello, world\n\u00e9"
    vocab = data.char_vocab(text)
    assert vocab == sorted(set(text))
    ids = data.encode(text, vocab)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert [vocab[i] for i in ids] == list(text)
    assert data.decode(ids, vocab) == text


def test_bad_text_input_is_a_clear_error():
    vocab = data.char_vocab("abc")
    with pytest.raises(ValueError, match=r"character 'z' \(at index 1\) is not in the "
                                         r"vocabulary of 3"):
        data.encode("azb", vocab)
    with pytest.raises(ValueError, match=r"ids must be integers in \[0, 3\)"):
        data.decode([0, 3], vocab)
    with pytest.raises(ValueError, match="non-empty str"):
        data.char_vocab("")


def test_lm_windows_are_next_character_pairs():
    ids = np.arange(100)
    x, y = data.lm_windows(ids, 8, 10, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 10) and x.dtype == y.dtype == np.int64
    assert np.array_equal(y, x + 1)  # y is x shifted by one position
    assert np.array_equal(np.diff(x, axis=1), np.ones((8, 9)))  # contiguous windows
    assert y.max() <= 99  # never past the end
    x2, _ = data.lm_windows(ids, 8, 10, np.random.default_rng(0))
    assert np.array_equal(x, x2)  # seeded
    with pytest.raises(ValueError, match="more than length=100"):
        data.lm_windows(ids, 1, 100, np.random.default_rng(0))
