"""GPT-2's byte-level BPE: `bpe.GPT2Tokenizer` in Python, `graph.GraphTokenizer` inside a graph."""

from gpt2_tf.tokenizer.bpe import GPT2Tokenizer

__all__ = ["GPT2Tokenizer"]
