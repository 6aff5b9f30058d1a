r"""GraphTokenizer: GPT-2's byte-level BPE as TensorFlow ops (strings in, ids out, and back).

It gives exactly the ids of `GPT2Tokenizer` (and of OpenAI's encoder) inside a `tf.function`, so
a SavedModel can take raw text and return ids, or take ids and return text. Only core TensorFlow
ops are used, so a saved model loads with `import tensorflow` alone (no gpt2_tf, no
tensorflow_text).

Why not keras-hub's BytePairTokenizer: RE2 (TensorFlow's regex engine) has no lookahead, and
keras-hub emulates OpenAI's `\s+(?!\S)` by inserting a placeholder character ("६"), which breaks
text that holds one; it also uses RE2's ASCII-only `\s`. Here the lookahead is replaced by an
exact two-stage split (see `pretokenize`).
"""

from __future__ import annotations

import tensorflow as tf

from gpt2_tf.tokenizer.vocab import bytes_to_unicode

# Unicode White_Space, the `\s` of OpenAI's regex (RE2's `\s` is ASCII only).
WS = (
    r"\x{09}-\x{0D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}"
    r"\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"
)
# Letters and numbers of Unicode 15.1 and 16.0. TensorFlow 2.21's RE2 knows Unicode 15.0, while
# tiktoken's and Hugging Face's regex engines know 16.0, so `\p{L}` / `\p{N}` alone would split
# "a" + a new letter where they do not. (Measured code point by code point against tiktoken.)
L_16 = (
    r"\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3}\x{10D4A}-\x{10D65}"
    r"\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{11380}-\x{11389}\x{1138B}\x{1138E}"
    r"\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3}\x{11BC0}-\x{11BE0}\x{13460}-\x{143FA}"
    r"\x{16100}-\x{1611D}\x{16D40}-\x{16D6C}\x{18CFF}\x{1E5D0}-\x{1E5ED}\x{1E5F0}"
    r"\x{2EBF0}-\x{2EE5D}"
)
N_16 = (
    r"\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{16130}-\x{16139}"
    r"\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1E5F1}-\x{1E5FA}"
)
L, N = rf"\p{{L}}{L_16}", rf"\p{{N}}{N_16}"  # to go inside [...]
# A whitespace run W followed by non-whitespace c: group 1 is W[:-1], group 2 is W[-1] c.
LAST_WS = f"([{WS}]+)([{WS}][^{WS}])"
# OpenAI's regex with its two whitespace alternatives `\s+(?!\S)|\s+` folded into one `WS+`:
# exact on the chunks of `pretokenize`, where whitespace before non-whitespace is one character.
PRETOKEN = f"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{WS}{L}{N}]+|[{WS}]+"
CUT = b"\xff"  # never in valid UTF-8 (and input is made valid first), so it can mark cuts
NO_PAIR = tf.int64.max  # not a merge; also segment_min's value over no pairs
TEXTS = tf.TensorSpec([None], tf.string)  # [B]
IDS = tf.RaggedTensorSpec([None, None], tf.int32, row_splits_dtype=tf.int64)  # [B, (T)]


def _table(keys, values, key_dtype, value_dtype, default):
    init = tf.lookup.KeyValueTensorInitializer(
        tf.constant(keys, key_dtype), tf.constant(values, value_dtype)
    )
    return tf.lookup.StaticHashTable(init, default_value=default)


def _re2_literal(s: str) -> str:
    r"""`s` as an RE2 pattern matching it literally (punctuation written as `\x{..}`)."""
    return "".join(c if c.isalnum() or ord(c) > 127 else f"\\x{{{ord(c):02X}}}" for c in s)


def _cut(texts: tf.Tensor, pattern: str, rewrite: bytes) -> tf.RaggedTensor:
    r"""[N] -> [N, (P)]: the pieces between the CUT bytes that `rewrite` adds at each match.

    A regex replace, then a byte split, rather than tensorflow_text's regex_split: that one asks
    RE2 for submatches, which with `\p{L}` classes is ~10x slower than finding whole matches.
    """
    return tf.strings.split(tf.strings.regex_replace(texts, pattern, rewrite), sep=CUT)


def pretokenize(texts: tf.Tensor) -> tf.RaggedTensor:
    r"""[B] valid UTF-8 -> [B, (W)] pre-tokens, exactly as OpenAI's regex splits them.

    The lookahead `\s+(?!\S)` matters only for a whitespace run W followed by non-whitespace:
    W[:-1] is a token and W[-1] starts the next (as the optional space of ` ?\p{L}+`, or alone).
    Stage 1 cuts such runs before W[-1]; no match of OpenAI's regex crosses that cut, nor does
    any other whitespace run need the lookahead, so stage 2 runs the regex without it.
    """
    chunks = _cut(texts, LAST_WS, b"\\1" + CUT + b"\\2")  # [B, (C)]
    words = _cut(chunks.flat_values, PRETOKEN, b"\\0" + CUT)  # [C, (W)], each row ends in ""
    words = chunks.with_flat_values(words).merge_dims(1, 2)  # [B, (W)]
    return tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)


class GraphTokenizer(tf.Module):
    """In-graph twin of `GPT2Tokenizer`: `encode` [B] strings -> [B, (T)] int32, `decode` back.

    BPE runs on token ids, not strings: a pair (a, b) is the int64 key a * n + b, so the merge loop
    is integer work and one table lookup per pair.
    """

    def __init__(
        self,
        encoder: dict[str, int],
        merges: list[tuple[str, str]],
        special_tokens: dict[str, int],
    ):
        super().__init__(name="gpt2_graph_tokenizer")
        self.special_tokens = dict(special_tokens)
        self._n = max([*encoder.values(), *self.special_tokens.values()]) + 1
        ordinary = {t: i for t, i in encoder.items() if t not in self.special_tokens}
        token_bytes = _token_bytes(ordinary)
        byte_ids = [ordinary[bytes_to_unicode()[b]] for b in range(256)]
        self._byte_id = _table([bytes([b]) for b in range(256)], byte_ids, tf.string, tf.int32, -1)
        self._pair = self._pair_table(ordinary, merges)
        self._all_at_once = _composes(merges)
        # Decoding needs only each id's bytes: precomputed, rather than mapping chars back in graph.
        id_bytes = {i: token_bytes[t] for t, i in ordinary.items()}
        id_bytes.update({i: t.encode("utf-8") for t, i in self.special_tokens.items()})
        self._id_bytes = _table(list(id_bytes), list(id_bytes.values()), tf.int32, tf.string, "")
        specials = sorted(self.special_tokens, key=len, reverse=True)  # the longest wins a tie
        self._special_pattern = "|".join(map(_re2_literal, specials))
        special_ids = [self.special_tokens[s] for s in specials]
        self._special_id = _table(specials, special_ids, tf.string, tf.int32, -1)
        self._whole_id = self._whole_token_table(ordinary, token_bytes)

    def _pair_table(self, encoder: dict[str, int], merges) -> tf.lookup.StaticHashTable:
        """left id * n + right id -> rank * n + merged id: the lowest value is the first merge."""
        table = {}
        for rank, (a, b) in enumerate(merges):
            if not {a, b, a + b} <= encoder.keys():
                raise ValueError(f"merge {rank} ({a!r} {b!r}): a symbol is not in the vocabulary")
            table[encoder[a] * self._n + encoder[b]] = rank * self._n + encoder[a + b]
        return _table(list(table), list(table.values()), tf.int64, tf.int64, NO_PAIR)

    def _whole_token_table(self, ordinary, token_bytes) -> tf.lookup.StaticHashTable:
        """Token bytes -> id, for the tokens that BPE turns into themselves.

        A pre-token found here skips the merge loop (most words of real text; ~1.5x faster). Checked
        rather than assumed: with some merge lists a token is unreachable (the BPE of its text
        ends elsewhere) and there the shortcut, which tiktoken takes, would disagree with BPE.
        """
        raw = tf.constant([token_bytes[t] for t in ordinary])  # [V]
        merge = tf.function(_merge_loop, autograph=False)  # as a graph: ~10x faster than eager
        bpe = merge(self._pair, self._n, self._all_at_once, self._bytes(raw))  # [V, (k)]
        lengths, values = bpe.row_lengths().numpy(), bpe.values.numpy()  # [V], [sum]
        starts = bpe.row_starts().numpy()
        kept = [
            (token_bytes[t], i)
            for (t, i), k, s in zip(ordinary.items(), lengths, starts, strict=True)
            if k == 1 and values[s] == i
        ]
        return _table([b for b, _ in kept], [i for _, i in kept], tf.string, tf.int32, -1)

    def _bytes(self, words: tf.Tensor) -> tf.RaggedTensor:
        """[U] strings -> [U, (S)] the ids of their single bytes."""
        return tf.ragged.map_flat_values(self._byte_id.lookup, tf.strings.bytes_split(words))

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, texts, allow_special: bool = False) -> tf.RaggedTensor:
        """[B] strings -> [B, (T)] int32 ids.

        `allow_special` (a Python bool: it changes the graph) False reads `<|endoftext|>` in the
        text as ordinary text, like tiktoken's `disallowed_special=()`; True maps each special
        token to its id, like `allowed_special="all"`.
        """
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank != 1:
            raise ValueError(f"encode: texts must be a batch [B] of strings, got {texts.shape}")
        if allow_special and self.special_tokens:
            return self._encode_with_special(texts)
        return self._encode_plain(texts)

    # One traced graph each, whatever the batch size (tracing one costs about a second).
    @tf.function(input_signature=[TEXTS], autograph=False)
    def _encode_plain(self, texts: tf.Tensor) -> tf.RaggedTensor:
        return self._encode_ordinary(_valid_utf8(texts))

    @tf.function(input_signature=[TEXTS], autograph=False)
    def _encode_with_special(self, texts: tf.Tensor) -> tf.RaggedTensor:
        pieces = _cut(_valid_utf8(texts), self._special_pattern, CUT + b"\\0" + CUT)  # [B, (P)]
        flat = pieces.flat_values  # [P]: special tokens and the text around them (maybe "")
        special = self._special_id.lookup(flat)  # [P], -1 where ordinary text
        is_special = special >= 0
        ordinary = self._encode_ordinary(tf.where(is_special, "", flat))  # [P, (T)]
        special = _rows_of_one(special, is_special)  # [P, (0 or 1)]
        # Each piece is either ordinary text or one special token, so one side is always empty.
        ids = tf.concat([ordinary, special], axis=1)  # [P, (T)]
        return pieces.with_flat_values(ids).merge_dims(1, 2)  # [B, (T)]

    def _encode_ordinary(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """[B] strings -> [B, (T)] ids, all text ordinary."""
        words = pretokenize(texts)  # [B, (W)]
        # Real text repeats its words: run BPE once per distinct pre-token in the batch.
        unique, index = tf.unique(words.flat_values)  # [U], [N]
        ids = tf.gather(self._word_ids(unique), index)  # [N, (k)]
        return words.with_flat_values(ids).merge_dims(1, 2)  # [B, (T)]

    def _word_ids(self, words: tf.Tensor) -> tf.RaggedTensor:
        """[U] UTF-8 pre-tokens -> [U, (k)] ids."""
        whole = self._whole_id.lookup(words)  # [U], -1 where not one token
        is_whole = whole >= 0
        symbols = self._bytes(words)  # [U, (S)]
        mask = symbols.with_flat_values(tf.gather(~is_whole, symbols.value_rowids()))
        # A whole token enters the loop as its one id, which leaves at the first step.
        symbols = tf.concat(
            [tf.ragged.boolean_mask(symbols, mask), _rows_of_one(whole, is_whole)], axis=1
        )
        return _merge_loop(self._pair, self._n, self._all_at_once, symbols)

    # ---- decoding -----------------------------------------------------------------------------
    def decode(self, ids, lengths=None) -> tf.Tensor:
        """[B, (T)] ids (ragged, or dense [B, T] with optional `lengths` [B]) -> [B] strings.

        Always valid UTF-8, exactly the Python path's text: generated ids can cut a character or
        join bytes that are not UTF-8, and each invalid run becomes U+FFFD, as
        `GPT2Tokenizer.decode` (and `bytes.decode("utf-8", "replace")`) give it.
        """
        if isinstance(ids, list | tuple) and lengths is None:
            ids = tf.ragged.constant(ids, tf.int32, ragged_rank=1)
        elif not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(ids), lengths=lengths)
        return self._decode(tf.cast(ids, tf.int32).with_row_splits_dtype(tf.int64))

    @tf.function(input_signature=[IDS], autograph=False)
    def _decode(self, ids: tf.RaggedTensor) -> tf.Tensor:
        pieces = tf.ragged.map_flat_values(self._id_bytes.lookup, ids)  # [B, (T)]
        known = tf.reduce_all(tf.strings.length(pieces.flat_values) > 0)  # no token is empty
        check = tf.debugging.Assert(known, ["decode: an id outside the vocabulary"])
        with tf.control_dependencies([check]):
            return _valid_utf8(tf.strings.reduce_join(pieces, axis=1))  # [B]


def _token_bytes(tokens) -> dict[str, bytes]:
    """Each token's bytes: its byte-level characters mapped back (an added token: its UTF-8)."""
    char_byte = {c: b for b, c in bytes_to_unicode().items()}
    return {
        t: bytes(char_byte[c] for c in t) if set(t) <= char_byte.keys() else t.encode()
        for t in tokens
    }


def _valid_utf8(texts: tf.Tensor) -> tf.Tensor:
    """Invalid UTF-8 becomes U+FFFD, as Python's `bytes.decode("utf-8", "replace")` does."""
    return tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")


def _composes(merges) -> bool:
    """Whether every merge ranks after all the merges that make one of its two symbols.

    True of any list that BPE training writes (GPT-2's included); then merging all occurrences
    of a pair in one step is exact (see `_merge_loop`).
    """
    made = {a + b: rank for rank, (a, b) in enumerate(merges)}  # the last merge making each
    return all(made.get(a, -1) < rank > made.get(b, -1) for rank, (a, b) in enumerate(merges))


def _rows_of_one(values: tf.Tensor, keep: tf.Tensor) -> tf.RaggedTensor:
    """[P] values, [P] bool -> [P, (0 or 1)]: row p is [values[p]] where keep[p], else []."""
    return tf.RaggedTensor.from_row_lengths(
        tf.boolean_mask(values, keep), tf.cast(keep, tf.int64), validate=False
    )


def _merge_loop(pair, n: int, all_at_once: bool, symbols: tf.RaggedTensor) -> tf.RaggedTensor:
    """[U, (S)] ids of single bytes -> [U, (k)] ids after BPE.

    Hugging Face (and tiktoken) merge one pair at a time, the lowest rank, leftmost first.
    With `all_at_once` each step merges, in every word still changing, all occurrences of its
    lowest-rank pair, as OpenAI's code does: the same result when every pair that holds a new
    symbol ranks after the merges that make it (see `_composes`), and a word of n repeats takes
    log(n) steps, not n. A word with no merge left moves to the output, so each step works only
    on the words still changing.
    """
    count = symbols.nrows(out_type=tf.int32)
    state = (
        symbols.flat_values,  # [V] symbols of the words in work
        tf.cast(symbols.value_rowids(), tf.int32),  # [V] the word (in work) of each
        tf.range(count),  # [A] each word in work's row in the output
        _done_array(),  # per step: ids of the words finished
        _done_array(),  # per step: their rows in the output
    )
    any_length = tf.TensorShape([None])
    *_, ids, rows = tf.while_loop(
        lambda values, word, row, ids, rows: tf.size(row) > 0,
        lambda *state: _merge_step(pair, n, all_at_once, *state),
        state,
        shape_invariants=(any_length,) * 3 + (None, None),
    )
    ids, rows = ids.concat(), rows.concat()  # [D]
    # A word finishes in one step, its ids contiguous and in order: a stable sort by row suffices.
    order = tf.argsort(rows, stable=True)
    rows = tf.cast(tf.gather(rows, order), tf.int64)
    return tf.RaggedTensor.from_value_rowids(
        tf.gather(ids, order), rows, tf.cast(count, tf.int64), validate=False
    )


def _done_array() -> tf.TensorArray:
    return tf.TensorArray(
        tf.int32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None]
    )


def _merge_step(pair, n, all_at_once, values, word, row, ids, rows):
    """One step of `_merge_loop` on its state (see there)."""
    count = tf.size(row)
    pair_word = word[:-1]  # [V-1]: pair (j, j+1) belongs to word[j], if word[j+1] is the same
    key = tf.cast(values[:-1], tf.int64) * n + tf.cast(values[1:], tf.int64)
    merge = tf.where(pair_word == word[1:], pair.lookup(key), NO_PAIR)  # [V-1] rank * n + id
    best = tf.math.unsorted_segment_min(merge, pair_word, count)  # [A]
    is_best = (merge == tf.gather(best, pair_word)) & (merge < NO_PAIR)  # [V-1]
    take = _all_occurrences(is_best) if all_at_once else _leftmost(is_best, pair_word, count)
    starts = tf.concat([take, [False]], axis=0)  # [V]: takes in the next symbol
    ends = tf.concat([[False], take], axis=0)  # [V]: taken in by the previous
    values = tf.where(starts, tf.cast(tf.gather(best % n, word), tf.int32), values)
    live = best < NO_PAIR  # [A]: merged this step, so maybe not finished
    live_symbol = tf.gather(live, word)  # [V]
    ids = ids.write(ids.size(), tf.boolean_mask(values, ~live_symbol))
    rows = rows.write(rows.size(), tf.gather(row, tf.boolean_mask(word, ~live_symbol)))
    keep = live_symbol & ~ends
    renumber = tf.cumsum(tf.cast(live, tf.int32)) - 1  # [A]: old word -> new word
    word = tf.gather(renumber, tf.boolean_mask(word, keep))
    return tf.boolean_mask(values, keep), word, tf.boolean_mask(row, live), ids, rows


def _leftmost(is_best, pair_word, count):
    """[V-1] -> [V-1]: each word's leftmost best pair (computed: argmin's ties are unspecified)."""
    position = tf.range(tf.size(is_best))
    first = tf.math.unsorted_segment_min(
        tf.where(is_best, position, tf.int32.max), pair_word, count
    )
    return tf.gather(first, pair_word) == position


def _all_occurrences(is_best):
    """[V-1] -> [V-1]: every best pair, left to right without overlap.

    Occurrences of one pair overlap only as a run "a a a ..." of the pair (a, a), where merging
    from the left takes every other one. Runs never cross words: a pair across is never best.
    """
    position = tf.range(tf.size(is_best))
    run_start = is_best & ~tf.concat([[False], is_best[:-1]], axis=0)
    run = tf.maximum(tf.cumsum(tf.cast(run_start, tf.int32)) - 1, 0)  # [V-1]
    start = tf.concat([tf.boolean_mask(position, run_start), [0]], axis=0)  # [runs + 1]
    return is_best & ((position - tf.gather(start, run)) % 2 == 0)
