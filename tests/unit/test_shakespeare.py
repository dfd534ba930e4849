"""Shakespeare-style next-character prediction: encoding, windows, the generated corpus (its
determinism, its non-IID speakers, its learnable structure) and plain-text files."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from engine.config import ConfigError, load_config
from workloads.base import DataError, DatasetMeta
from workloads.shakespeare import (
    VOCAB,
    Shakespeare,
    ShakespeareParams,
    encode,
    lexicon,
    speaker_text,
    windows,
)

SMALL = ShakespeareParams(chars_per_client=1000, seq_len=20)


def test_vocabulary_is_leafs_and_unknown_reads_as_space() -> None:
    assert len(VOCAB) == len(set(VOCAB)) == 80
    assert encode("Ab\n}").tolist() == [VOCAB.index(c) for c in "Ab\n}"]
    assert encode("a\tb\u2019c").tolist() == [VOCAB.index(c) for c in "a b c"]
    assert encode("").dtype == np.uint8 and len(encode("")) == 0


def test_windows_predict_the_next_character() -> None:
    t = np.arange(10, dtype=np.uint8)
    x, y = windows(t, 4, 1)
    assert x.shape == (6, 4) and x.dtype == np.uint8 and y.dtype == np.int64
    assert x[2].tolist() == [2, 3, 4, 5] and y[2] == 6
    x3, y3 = windows(t, 4, 3)
    assert x3[1].tolist() == [3, 4, 5, 6] and y3.tolist() == [4, 7]


def test_generated_corpus_layout_and_natural_partition() -> None:
    w = Shakespeare(SMALL)
    ds = w.load(6, seed=0)
    assert w.default_partition == "natural" and ds.num_classes == 80
    assert ds.x_train.shape[1] == 20 and ds.x_train.dtype == np.uint8
    parts = ds.natural_partition
    assert parts is not None and len(parts) == 6
    assert np.array_equal(np.concatenate(parts), np.arange(len(ds.y_train)))
    # 800 training characters per speaker give 800 - 20 windows; 200 test characters 180.
    assert {len(p) for p in parts} == {780} and len(ds.y_test) == 6 * 180
    # Each window's label is the character after it in the speaker's text.
    text = encode(speaker_text(0, 1, 1000, lexicon(0)))
    assert np.array_equal(ds.x_train[parts[1][5]], text[5:25]) and ds.y_train[parts[1][5]] == text[25]


def test_generated_corpus_is_deterministic_per_speaker() -> None:
    w = Shakespeare(SMALL)
    a, b, more, other = w.load(3, seed=4), w.load(3, seed=4), w.load(5, seed=4), w.load(3, seed=5)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    # Growing the federation only adds speakers.
    assert np.array_equal(a.x_train, more.x_train[: len(a.x_train)])
    assert not np.array_equal(a.x_train, other.x_train)


def word_shares(text: str) -> Counter[str]:
    words = re.findall(r"[a-z]+", text.lower())
    return Counter({w: n / len(words) for w, n in Counter(words).items()})


def total_variation(p: Counter[str], q: Counter[str]) -> float:
    return 0.5 * sum(abs(p[k] - q[k]) for k in p.keys() | q.keys())


def test_speakers_are_non_iid() -> None:
    lex = lexicon(0)
    # Long texts, so that sampling noise (the within-speaker distance) stays small.
    texts = [speaker_text(0, k, 40000, lex) for k in range(4)]
    within = [total_variation(word_shares(t[:20000]), word_shares(t[20000:])) for t in texts]
    across = [
        total_variation(word_shares(texts[i]), word_shares(texts[j])) for i, j in ((0, 1), (1, 2), (2, 3))
    ]
    # Speakers' word use differs well beyond the noise (measured: 0.15 within, 0.40 across).
    assert min(across) > 2 * max(within), (within, across)


def ngram_accuracy(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, k: int) -> float:
    """Test accuracy of "the most frequent next character after these k characters"."""
    v = len(VOCAB)

    def context(x: np.ndarray) -> np.ndarray:
        return (x[:, -k:].astype(np.int64) * v ** np.arange(k)).sum(1)

    counts: dict[int, Counter[int]] = {}
    for c, y in zip(context(x_tr).tolist(), y_tr.tolist(), strict=True):
        counts.setdefault(c, Counter())[y] += 1
    fallback = int(np.bincount(y_tr).argmax())
    pred = [counts[c].most_common(1)[0][0] if c in counts else fallback for c in context(x_te).tolist()]
    return float(np.mean(np.array(pred) == y_te))


def test_generated_corpus_has_learnable_structure() -> None:
    ds = Shakespeare(ShakespeareParams(chars_per_client=3000)).load(10, seed=0)
    majority = float(np.mean(ds.y_test == np.bincount(ds.y_train).argmax()))
    four_gram = ngram_accuracy(ds.x_train, ds.y_train, ds.x_test, ds.y_test, 4)
    # Spelling and word order make the next character predictable far above the unigram
    # baseline (the space, ~16%), so the char LSTM has something to learn.
    assert majority < 0.25 and four_gram > majority + 0.35, (majority, four_gram)


def test_text_file_is_cut_into_contiguous_clients(tmp_path: Path) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    f = tmp_path / "plays.txt"
    f.write_text(text)
    w = Shakespeare(ShakespeareParams(path=str(f), seq_len=10, test_fraction=0.2))
    ds = w.load(4, seed=0)
    assert ds.natural_partition is not None and [len(p) for p in ds.natural_partition] == [190] * 4
    # Client 2 holds characters 500..749: training on the first 200, testing on the last 50.
    first = ds.natural_partition[2][0]
    assert (
        np.array_equal(ds.x_train[first], encode(text[500:510])) and ds.y_train[first] == encode(text[510])[0]
    )
    assert np.array_equal(ds.x_test[2 * 40], encode(text[700:710]))
    with pytest.raises(DataError, match="client 0 gets too few"):
        w.load(40, seed=0)


def test_missing_text_file_fails_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["workload.name=shakespeare", f"workload.path={tmp_path / 'none.txt'}"])
    assert "none.txt is not a file" in str(e.value) and "\n" not in str(e.value)
    cfg = load_config(None, ["workload.name=shakespeare"])  # no path: the generated corpus
    assert cfg.partition.name == "natural"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 0}, "seq_len must be >= 1"),
        ({"test_fraction": 1.0}, "test_fraction must be in (0, 1)"),
        ({"chars_per_client": 300}, "chars_per_client must be >= 405 for seq_len 80"),
        ({"hidden": 0}, "hidden must be >= 1"),
    ],
)
def test_params_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        ShakespeareParams(**kwargs)
    assert str(e.value).startswith(message)


def test_model_keeps_the_engines_contract() -> None:
    torch = pytest.importorskip("torch")
    w = Shakespeare(ShakespeareParams(chars_per_client=1000, seq_len=20, hidden=16))
    ds = w.load(2, seed=0)
    x = w.to_tensor(ds.x_train[:5])
    assert x.dtype == torch.int64
    torch.manual_seed(0)
    logits = w.model(DatasetMeta.of(ds))(x)
    # One label per sequence: (batch, classes) logits, accuracy by argmax over dim 1.
    assert logits.shape == (5, 80)
    loss = w.loss(logits, torch.from_numpy(ds.y_train[:5]))
    assert loss.item() == pytest.approx(np.log(80), abs=0.3)
