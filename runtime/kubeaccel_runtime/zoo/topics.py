"""Generated labelled text for the example embedding model: topic classification of token ids.

Each document is SEQ_LEN token ids from a VOCAB-word vocabulary (id 0 is never used, as a
padding id would not be). Every token is, with probability TOPIC_RATE, one of its class's
TOPIC_WORDS topic words (Zipf-weighted), and otherwise a word of the background distribution
shared by all classes (Zipf over the whole vocabulary, like word frequencies in real text).
The vocabulary's topic words are fixed by LANGUAGE_SEED, so every split speaks the same
language; the splits are drawn with their own seeds. The generator's own Bayes-optimal
classifier (`bayes_predict`) gets ~97.6 % right: the data are noisy enough that a learned
model makes mistakes an optimization can add to, which is what an accuracy gate needs.
numpy only: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

VOCAB = 8192
SEQ_LEN = 32
CLASSES = 4
TOPIC_WORDS = 256
TOPIC_RATE = 0.12
LANGUAGE_SEED = 1234
# Generated, so the training split can be large; only calib and val are committed.
SPLIT_SIZES = {"train": 20000, "calib": 1000, "val": 3000}
_SPLIT_SEED = {"train": 1, "calib": 2, "val": 3}

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Language:
    """Background word distribution and each class's topic words with their weights."""

    background: npt.NDArray[np.float64]  # (VOCAB,), zero at id 0
    topics: IntArray  # (CLASSES, TOPIC_WORDS) word ids
    topic_weights: npt.NDArray[np.float64]  # (TOPIC_WORDS,)


def language() -> Language:
    """The fixed vocabulary statistics every split is drawn from."""
    background = np.zeros(VOCAB)
    background[1:] = 1.0 / np.arange(1, VOCAB)
    background /= background.sum()
    words = np.random.default_rng(LANGUAGE_SEED).permutation(np.arange(1, VOCAB))
    weights = 1.0 / np.arange(1, TOPIC_WORDS + 1) ** 0.8
    return Language(
        background=background,
        topics=words[: CLASSES * TOPIC_WORDS].reshape(CLASSES, TOPIC_WORDS).astype(np.int64),
        topic_weights=weights / weights.sum(),
    )


def generate(count: int, seed: int) -> tuple[IntArray, IntArray]:
    """`count` documents (count, SEQ_LEN) int64 token ids and their class labels."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    lang = language()
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    background = rng.choice(VOCAB, size=(count, SEQ_LEN), p=lang.background)
    picks = rng.choice(TOPIC_WORDS, size=(count, SEQ_LEN), p=lang.topic_weights)
    topical = lang.topics[labels[:, None], picks]
    use_topic = rng.random((count, SEQ_LEN)) < TOPIC_RATE
    ids = np.where(use_topic, topical, background)
    return ids.astype(np.int64), labels.astype(np.int64)


def split(name: str, seed: int = 0) -> tuple[IntArray, IntArray]:
    """One split (train, calib or val) of the corpus; `seed` shifts every split's seed."""
    if name not in SPLIT_SIZES:
        raise ValueError(f"unknown split {name!r}; known: {sorted(SPLIT_SIZES)}")
    return generate(SPLIT_SIZES[name], seed * 10 + _SPLIT_SEED[name])


def bayes_predict(ids: IntArray) -> IntArray:
    """The most likely class of each document under the generating distribution."""
    lang = language()
    word_probs = np.tile((1 - TOPIC_RATE) * lang.background, (CLASSES, 1))
    for c in range(CLASSES):
        word_probs[c, lang.topics[c]] += TOPIC_RATE * lang.topic_weights
    with np.errstate(divide="ignore"):
        log_probs = np.log(word_probs)
    scores = log_probs[:, ids].sum(axis=-1)  # (CLASSES, count)
    return np.asarray(scores.argmax(axis=0), dtype=np.int64)
