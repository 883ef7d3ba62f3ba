"""DSSM letter-trigram word hashing."""
import tfrec_towers  # noqa: F401  (must precede tensorflow: selects Keras 2)

import numpy as np
import pytest
import tensorflow as tf

from tfrec_towers.features.dssm_word_hashing import letter_trigrams, word_hash


def trigrams(*texts):
    return [[g.decode("utf-8") for g in row] for row in letter_trigrams(tf.constant(list(texts))).to_list()]


def test_good():
    assert trigrams("good") == [["#go", "goo", "ood", "od#"]]


def test_multi_word_concatenates_each_words_trigrams():
    assert trigrams("good night") == [["#go", "goo", "ood", "od#", "#ni", "nig", "igh", "ght", "ht#"]]
    # several spaces, tabs, leading/trailing whitespace do not create words
    assert trigrams("  good \t night ") == trigrams("good night")


def test_case_folding():
    assert trigrams("GoOd NIGHT") == trigrams("good night")


def test_punctuation_is_split_off():
    assert trigrams("good, night!") == trigrams("good night")
    assert trigrams("it's") == [["#it", "it#", "#s#"]]
    assert trigrams("(a)") == [["#a#"]]
    # Unicode punctuation and spaces too
    assert trigrams("\u00abgood\u00bb\u2014night") == trigrams("good night")
    assert trigrams("good\u00a0night") == trigrams("good night")


def test_digits_are_kept():
    assert trigrams("mp3") == [["#mp", "mp3", "p3#"]]


def test_non_ascii_letters_are_kept():
    assert trigrams("Café") == [["#ca", "caf", "afé", "fé#"]]
    assert trigrams("naïve über") == [["#na", "naï", "aïv", "ïve", "ve#", "#üb", "übe", "ber", "er#"]]


def test_empty_and_single_letter():
    assert trigrams("") == [[]]
    assert trigrams("   ") == [[]]
    assert trigrams("!?") == [[]]
    assert trigrams("a") == [["#a#"]]
    assert trigrams("A b") == [["#a#", "#b#"]]


def test_batch_rows_stay_aligned():
    rows = trigrams("ab", "", "good night", "x")
    assert rows == [["#ab", "ab#"], [], ["#go", "goo", "ood", "od#", "#ni", "nig", "igh", "ght", "ht#"], ["#x#"]]


def test_all_empty_batch():
    assert trigrams("", "") == [[], []]
    ids = word_hash(tf.constant(["", ""]), 16)
    assert ids.shape[0] == 2 and ids.flat_values.shape[0] == 0


@pytest.mark.parametrize("num_buckets", [1, 7, 32768])
def test_word_hash_ids_are_hash_buckets_of_the_trigrams(num_buckets):
    texts = ["Good night, moon", "", "a", "the quick brown fox jumps"]
    grams = letter_trigrams(tf.constant(texts))
    ids = word_hash(tf.constant(texts), num_buckets)
    assert ids.dtype == tf.int64
    np.testing.assert_array_equal(ids.row_splits.numpy(), grams.row_splits.numpy())
    flat = ids.flat_values.numpy()
    assert ((flat >= 0) & (flat < num_buckets)).all()
    expected = tf.strings.to_hash_bucket_fast(grams.flat_values, num_buckets).numpy()
    np.testing.assert_array_equal(flat, expected)
    # per trigram, computed independently
    assert ids.to_list()[2] == [int(tf.strings.to_hash_bucket_fast("#a#", num_buckets).numpy())]


def test_word_hash_distinguishes_trigrams():
    ids = word_hash(tf.constant(["good", "food"]), 32768).to_list()
    # "ood" and "od#" are shared, "#go goo" vs "#fo foo" differ
    assert ids[0][2:] == ids[1][2:]
    assert ids[0][:2] != ids[1][:2]
