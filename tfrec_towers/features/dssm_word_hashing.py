"""DSSM letter-trigram word hashing (Huang et al., CIKM 2013), built on tensorflow-text.

Each word is wrapped in boundary marks and cut into letter trigrams: ``good`` -> ``#good#`` ->
``#go goo ood od#``. A text becomes the bag of its words' trigrams, hashed into ``num_buckets``.
Trigrams generalise across spelling variants and unseen words (the paper's 500K-word vocabulary
maps to ~30K trigrams), which is why DSSM uses them instead of a word vocabulary.
"""
import tensorflow as tf
import tensorflow_text as tf_text

__all__ = ["letter_trigrams", "word_hash"]


_tokenizer = tf_text.WhitespaceTokenizer()


def letter_trigrams(texts: tf.Tensor) -> tf.RaggedTensor:
    """[batch] strings -> [batch, (trigrams)] ragged strings; case-folded, punctuation split off."""
    texts = tf_text.case_fold_utf8(texts)
    # RE2's \w is ASCII-only: keep Unicode letters, digits and combining marks too ("café" stays whole).
    texts = tf.strings.regex_replace(texts, r"[^\w\pL\pN\pM\s]", " ")
    words = _tokenizer.tokenize(texts)  # [batch, (words)]
    marked = tf.strings.join(["#", words.flat_values, "#"])
    chars = tf.strings.unicode_split(marked, "UTF-8")  # [words, (chars)]
    trigrams = tf_text.ngrams(chars, width=3, axis=-1, reduction_type=tf_text.Reduction.STRING_JOIN,
                              string_separator="")  # [words, (trigrams)]
    return tf.RaggedTensor.from_row_splits(trigrams.flat_values,
                                           tf.gather(trigrams.row_splits, words.row_splits))


def word_hash(texts: tf.Tensor, num_buckets: int) -> tf.RaggedTensor:
    """[batch] strings -> [batch, (trigrams)] int64 bucket ids in [0, num_buckets)."""
    return tf.ragged.map_flat_values(tf.strings.to_hash_bucket_fast, letter_trigrams(texts), num_buckets)
