"""Shakespeare-style next-character prediction (LEAF, Caldas et al., arXiv 1812.01097; the
FedAvg paper's char LSTM, McMahan et al. 2017).

A sample is ``seq_len`` (80, as in LEAF) characters and its label the character that follows;
one label per sample keeps the engine's contract (logits (batch, classes), accuracy by argmax).
The vocabulary is LEAF's 80 characters; any other character reads as a space.

Text comes from ``workload.path``, a plain-text file, cut into ``clients.num`` contiguous
chunks, one per client (e.g. the complete works from Project Gutenberg: neighbouring text
shares a play and its speakers, so chunks differ as LEAF's speaking roles do; LEAF's own split
into roles needs its Gutenberg-specific parser, not reproduced here). Without a path, a
generated corpus: every client is a speaker whose lines follow a random word lexicon with
word-to-word transitions shared by all speakers and a favourite vocabulary of its own (non-IID).
Its structure -- spelling, word order, capitals after sentence ends, punctuation -- lets a model
beat the unigram baseline by far (the unit tests measure it).

Each client's text is split in time: the first ``1 - test_fraction`` gives training samples,
the rest test samples, pooled into the test set. A random split of overlapping windows would
put near-copies of test samples in the training set. ``stride`` spaces the windows (LEAF: 1;
every window is its own ``seq_len`` bytes, so stride 1 on the 5 MB complete works takes 400 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from workloads.base import DataError, Dataset, DatasetMeta, Workload, readonly_tensor
from workloads.vision import absolute

if TYPE_CHECKING:
    import torch

VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
# Byte code -> vocabulary index; everything outside the vocabulary becomes a space.
_INDEX = np.full(256, VOCAB.index(" "), dtype=np.uint8)
_INDEX[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB), dtype=np.uint8)

# Fixed purpose constant for this workload's random streams (zlib.crc32(b"workload.shakespeare")).
_PURPOSE = 0x0E615550
_LEXICON, _SPEAKER = 0, 1

# The generated corpus: a lexicon of pseudo-words built from consonant-vowel(-consonant)
# syllables; each word has a few likely successors; a speaker follows them with probability
# _FOLLOW, else draws from its own Zipf-ranked favourites.
_CONSONANTS, _VOWELS = "bcdfghklmnprstvwz", "aeiou"
_WORDS, _SUCCESSORS, _FOLLOW, _ZIPF = 300, 4, 0.7, 1.1
_SENTENCE_WORDS = (3, 10)
_COMMA, _NEWLINE = 0.08, 0.3
_ENDINGS, _ENDING_P = ".?!", (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class ShakespeareParams:
    """path: a plain-text file ("" = generated corpus); chars_per_client: generated text per
    speaker; embed_dim, hidden, layers: the char LSTM (LEAF: 8, 256, 2)."""

    path: str = ""
    seq_len: int = 80
    stride: int = 1
    test_fraction: float = 0.2
    chars_per_client: int = 3000
    embed_dim: int = 8
    hidden: int = 256
    layers: int = 2

    def __post_init__(self) -> None:
        for key in ("seq_len", "stride", "embed_dim", "hidden", "layers"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1 (got {getattr(self, key)})")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1) (got {self.test_fraction})")
        # Both parts of a generated speaker's text need one whole window (seq_len + 1).
        short = min(self.test_fraction, 1.0 - self.test_fraction) * self.chars_per_client
        if not self.path and short < self.seq_len + 1:
            least = int(np.ceil((self.seq_len + 1) / min(self.test_fraction, 1.0 - self.test_fraction)))
            raise ValueError(
                f"chars_per_client must be >= {least} for seq_len {self.seq_len} and test_fraction "
                f"{self.test_fraction} (got {self.chars_per_client})"
            )
        if self.path:
            object.__setattr__(self, "path", absolute(self.path))


def encode(text: str) -> np.ndarray:
    """Vocabulary indices (uint8) of ``text``."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _INDEX[np.minimum(codes, 255)] if len(codes) else np.empty(0, np.uint8)


def windows(t: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 (n, seq_len), y int64 (n,)): every ``stride``-th window and its next char."""
    w = np.lib.stride_tricks.sliding_window_view(t, seq_len + 1)[::stride]
    return np.ascontiguousarray(w[:, :seq_len]), w[:, seq_len].astype(np.int64)


def lexicon(seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Words, each word's successor ids (W, S) and their cumulative probabilities (W, S)."""
    rng = np.random.default_rng([int(seed), _PURPOSE, _LEXICON])
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < _WORDS:
        syllables = [
            _CONSONANTS[rng.integers(len(_CONSONANTS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + (_CONSONANTS[rng.integers(len(_CONSONANTS))] if rng.random() < 0.3 else "")
            for _ in range(int(rng.integers(1, 4)))
        ]
        word = "".join(syllables)
        if word not in seen:
            seen.add(word)
            words.append(word)
    successors = np.stack([rng.choice(_WORDS, _SUCCESSORS, replace=False) for _ in range(_WORDS)])
    weights = rng.dirichlet(np.ones(_SUCCESSORS), size=_WORDS)
    return words, successors, np.cumsum(weights, axis=1)


def speaker_text(seed: int, k: int, chars: int, lex: tuple[list[str], np.ndarray, np.ndarray]) -> str:
    """Speaker ``k``'s lines, ``chars`` characters long; its own stream, whatever the rest."""
    words, successors, succ_cum = lex
    rng = np.random.default_rng([int(seed), _PURPOSE, _SPEAKER, int(k)])
    ranks = rng.permutation(_WORDS)  # the speaker's favourites: word ranks[0] most of all
    fav_cum = np.cumsum((np.arange(1, _WORDS + 1) ** -_ZIPF)[np.argsort(ranks)])
    fav_cum /= fav_cum[-1]
    parts: list[str] = []
    length = 0
    word = int(np.searchsorted(fav_cum, rng.random()))
    while length < chars:
        n = int(rng.integers(_SENTENCE_WORDS[0], _SENTENCE_WORDS[1] + 1))
        sentence = []
        for i in range(n):
            if rng.random() < _FOLLOW:
                j = min(int(np.searchsorted(succ_cum[word], rng.random())), _SUCCESSORS - 1)
                word = int(successors[word, j])
            else:
                word = int(np.searchsorted(fav_cum, rng.random()))
            w = words[word].capitalize() if i == 0 else words[word]
            sentence.append(w + ("," if i < n - 1 and rng.random() < _COMMA else ""))
        end = _ENDINGS[int(np.searchsorted(np.cumsum(_ENDING_P), rng.random()))]
        sep = "\n" if rng.random() < _NEWLINE else " "
        text = " ".join(sentence) + end + sep
        parts.append(text)
        length += len(text)
    return "".join(parts)[:chars]


class Shakespeare(Workload):
    name: ClassVar[str] = "shakespeare"
    Params: ClassVar[type] = ShakespeareParams
    description: ClassVar[str] = (
        "next-character prediction, LEAF-style, on a text file (workload.path) or a generated "
        "corpus; one client per speaker or chunk; char LSTM"
    )
    default_partition: ClassVar[str] = "natural"
    params: ShakespeareParams

    def __init__(self, params: ShakespeareParams | None = None) -> None:
        super().__init__(params if params is not None else ShakespeareParams())

    def check(self) -> None:
        if self.params.path and not Path(self.params.path).is_file():
            raise DataError(
                f"shakespeare text not found: {self.params.path} is not a file; set workload.path "
                "to a plain-text file (e.g. the complete works, gutenberg.org/ebooks/100), or "
                "workload.path='' for the generated corpus"
            )

    def client_texts(self, num_clients: int, seed: int) -> list[np.ndarray]:
        """Every client's text as vocabulary indices."""
        p = self.params
        if not p.path:
            lex = lexicon(seed)
            return [encode(speaker_text(seed, k, p.chars_per_client, lex)) for k in range(num_clients)]
        self.check()
        text = encode(Path(p.path).read_text(encoding="utf-8", errors="replace"))
        return list(np.array_split(text, num_clients))

    def load(self, num_clients: int, seed: int) -> Dataset:
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1 (got {num_clients})")
        p = self.params
        x_tr, y_tr, x_te, y_te, natural = [], [], [], [], []
        offset = 0
        texts = self.client_texts(num_clients, seed)
        for k, t in enumerate(texts):
            cut = round(len(t) * (1.0 - p.test_fraction))
            if min(cut, len(t) - cut) < p.seq_len + 1:  # only a file can be this short
                raise DataError(
                    f"{p.path} has {sum(len(c) for c in texts)} characters: client {k} gets too few "
                    f"for one training and one test sequence of {p.seq_len + 1}; use fewer "
                    "clients.num or a shorter workload.seq_len"
                )
            xa, ya = windows(t[:cut], p.seq_len, p.stride)
            xb, yb = windows(t[cut:], p.seq_len, p.stride)
            x_tr.append(xa)
            y_tr.append(ya)
            x_te.append(xb)
            y_te.append(yb)
            natural.append(np.arange(offset, offset + len(ya), dtype=np.int64))
            offset += len(ya)
        return Dataset(
            x_train=np.concatenate(x_tr),
            y_train=np.concatenate(y_tr),
            x_test=np.concatenate(x_te),
            y_test=np.concatenate(y_te),
            num_classes=len(VOCAB),
            natural_partition=natural,
        )

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        """Character indices stay integers: the model's first layer is an embedding."""
        return readonly_tensor(np.ascontiguousarray(x)).long()

    def model(self, dataset_meta: DatasetMeta) -> torch.nn.Module:
        from workloads.models import CharLSTM

        p = self.params
        return CharLSTM(dataset_meta.num_classes, p.embed_dim, p.hidden, p.layers)
