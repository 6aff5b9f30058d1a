"""gpt2_tf: OpenAI's GPT-2 in Keras 3 / TensorFlow, exact to the reference, ready to fine-tune."""

import os

os.environ.setdefault(
    "KERAS_BACKEND", "tensorflow"
)  # gpt2_tf runs on TensorFlow (tf.data, SavedModel)
os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "1"
)  # hide TensorFlow's C++ INFO lines, keep warnings

__version__ = "0.1.0"

# Before TensorFlow loads: its oneDNN kernels on every x86-64 CPU with AVX2, and glibc heaps that
# keep freed memory for the next matrix product (see hardware.py).
from gpt2_tf.core.hardware import keep_freed_heap, prefer_onednn  # noqa: E402

prefer_onednn()
keep_freed_heap()

from gpt2_tf.model.config import GPT2Config  # noqa: E402
from gpt2_tf.model.gpt2 import GPT2Backbone, GPT2Classifier, GPT2LanguageModel  # noqa: E402
from gpt2_tf.model.lora import enable_lora, load_lora, merge_lora, save_lora  # noqa: E402
from gpt2_tf.tokenizer.bpe import GPT2Tokenizer  # noqa: E402

__all__ = [
    "GPT2Config",
    "GPT2Tokenizer",
    "GPT2Backbone",
    "GPT2LanguageModel",
    "GPT2Classifier",
    "enable_lora",
    "merge_lora",
    "save_lora",
    "load_lora",
]
