"""The CPU speed paths, and the one switch between them and the plain GPT-2 model.

`gpt2_tf/model/layers.py`, `gpt2.py` and `losses.py` hold the plain model: autodiff through the
layers, the LM loss from `hidden @ table.T`, a straightforward KV cache. When `enabled()`, the
same computations run through the modules here instead, with the same results (checked by
`tests/test_speed_paths.py`):

- `gradients`: custom-gradient training kernels (tanh-GELU, XLA training GELU, attention that
  keeps or recomputes its probabilities, `kernel_matmul` (every Dense product in training), the LoRA
  Dense's factored forward pass, a LayerNorm that recomputes its normalized input);
- `decoding`: the KV-cache decoding kernels (transposed-kernel products, in-place cache writes,
  each block's work as small XLA programs in the library's decoding loop);
- `fused_head`: the fused, chunked tied LM head loss (`tied_head_sums`), and the embedding
  lookup that gives the table's two uses one gradient buffer (`tied_lookup`).

Set `GPT2_TF_PLAIN=1` to run the plain path. It is read each time a model function runs or is
traced (a compiled function keeps the path it was traced with), not at import.

What each path bought, as measured (GPT-2 124M on CPU unless said; "a step" is a training step
at batch 4 x 256, two trainers alternating steps in one process, median of 8):

- `gelu`'s own gradient: autodiff through `tf.nn.gelu` keeps three more [tokens, 4E] tensors per
  block (12.6 MB each, float32); peak RSS of a step -200 MB, its CPU time -4%.
- `training_gelu` (XLA, float32 inside): op time at [1,024, 3,072] bfloat16, forward 11.5-14 ->
  8 ms, gradient 20-22 -> 9 ms (XLA's own bfloat16 arithmetic was slower: 19 and 33 ms). A step:
  bfloat16 3.44 -> 3.04 s, LoRA bfloat16 2.57 -> 2.20 s, float32 6.53 -> 6.12 s.
- `training_attention`: autodiff keeps each layer's float32 softmax and its bfloat16 copy,
  12.6 + 6.3 MB a layer, about 230 MB over 12 blocks. It keeps the float32 probabilities alone
  where `keeps_attention_probabilities` (a token's share takes no more bytes than its MLP
  activation: 124M up to 256 tokens in float32, 128 under mixed bfloat16), and recomputes them
  past that (the QKᵀ product, the mask and the softmax again: a seventh of the attention
  products). Keeping them at 256 tokens in float32, against recomputing (AMD EPYC Zen 4, two
  trainers alternating steps, median of 8-10): LoRA 2.99 -> 2.90 s, full 4.39 -> 4.31 s; peak
  RSS 3,592 -> 3,743 MB (HF's 4,064 in `make bench`). Keeping only the bfloat16 copy at 256
  tokens was 1-3% faster under mixed precision, but took full training's peak RSS from 3,365
  to 3,439 MB, over HF's 3,421, and made the softmax's gradient read rounded probabilities.
- `causal_query_blocks`: GPT-2's queries in two blocks of 128 at 256 tokens, the first over the
  first 128 keys only, skip a quarter of the scores, their products and softmax. 12 layers'
  attention forward and backward alone (AMD EPYC Zen 4, one run): 227 -> 192 ms float32
  (probabilities kept), 233 -> 196 ms bfloat16 (recomputed). Profiled LoRA float32 step:
  attention products 185 -> 142 ms, op time 3,053 -> 2,999 ms. Whole steps, two trainers
  alternating on a noisy machine: LoRA float32 1.005 (old/new, median of 14 pairs), LoRA
  bfloat16 0.990 (16 pairs, the last ten 1.70-1.71 against 1.70-1.74 s).
- `kernel_matmul`: autodiff keeps every layer's bfloat16 kernel copy between the passes, 162 MB
  at the step's allocation peak; peak RSS of `make bench` 3,727-3,733 -> 3,605-3,653 MB, for a
  bfloat16 step of 3.22 -> 3.27 s. In float32, the input gradient of c_attn and c_fc from a
  [out, in] copy of the kernel instead of oneDNN's transposed product (174 against 217 GFLOP/s
  for c_fc's on an AMD EPYC, Zen 4): 12 blocks' forward and backward at 1,024 tokens 2,939 ->
  2,810 ms, a step 217 -> 235 tokens/s (LoRA 340 -> 356), peak RSS 4,059 -> 3,980 MB.
- `layer_norm`: autodiff through Keras's LayerNorm keeps a float32 copy of x and x·inv per
  LayerNorm, 25 of them; peak RSS of a step (`benchmarks.cases train_ours`, AMD EPYC Zen 4)
  float32 3,775-3,796 -> 3,665-3,674 MB, bfloat16 3,489-3,512 -> 3,462-3,471 MB; two trainers
  alternating steps, median of 6: float32 4.38 -> 4.35 s, bfloat16 2.65 -> 2.60 s.
- `training_attention`'s backward pass zeroes the d_out rows of queries that see no key instead
  of selecting over the [B, H, T, T] score gradient (elsewhere the masked probabilities are
  exactly 0, and so their gradients): SelectV2 in a full step 20.5 -> 11.4 ms in float32,
  38 -> 23 ms in bfloat16, with no other op type growing by more than 1 ms.
- `training_attention`'s softmax gradient takes its row sum as d_out . out over [B, H, T, D]
  (FlashAttention's backward pass does the same) instead of sum(d_probs * probs) over
  [B, H, T, T], a quarter of the bytes at 256 tokens: full float32 step's `Mul` 61 -> 52 ms
  (profile_step, AMD EPYC Zen 4); two trainers alternating steps, old/new per pair: float32
  1.009 (8 pairs), LoRA bfloat16 0.997 (12), level within the machine's noise.
- `kernel_matmul` adds the bias to its [rows, out] product, where Grappler fuses the two into one
  oneDNN kernel, and its bias gradient is a `Sum` (float32 accumulation, one rounding). Keras's
  Dense adds it with `bias_add`, and TensorFlow's BiasAddGrad sums a bfloat16 gradient in
  bfloat16: over 1,024 rows of 1.0 it gave 256. Full bfloat16 step (AMD EPYC Zen 4): BiasAdd
  20 ms and BiasAddGrad 33-43 ms became float32 sums of 14 ms (10 ms as a bfloat16 `Sum`); two
  trainers alternating steps, median of 10: 2.74 -> 2.66 s (float32, median of 8: 4.49 ->
  4.35 s).
- A frozen kernel's (LoRA's) compute-dtype copy is the one exception `kernel_matmul` keeps for
  the backward pass, as PyTorch's autograd does under autocast: LoRA bfloat16 step 1.76 ->
  1.74 s (median of 14, two trainers alternating), peak RSS 2,079 -> 2,205 MB (HF 2,370).
- The LoRA Dense's x·W + s·(x·A)·B: Keras's merged kernel costs a full [in, out] weight-gradient
  product per layer (about 43 GFLOP a step for `c_attn` at 1,024 tokens).
- `tied_head_sums`: autodiff keeps three [N, 50257] float32 tensors, and TensorFlow's sparse
  cross-entropy CPU kernel takes ~300 ms for 1,024 rows where oneDNN's softmax takes ~30 ms. The
  XLA chunk kernel: 85-95 -> 50-55 ms a 512-row bfloat16 chunk, temporaries about 440 -> 200 MB, a
  bfloat16 step 3.37 -> 3.20 s. The hidden-state gradient in 8,192-entry vocabulary slices:
  oneDNN ran the single product at 210-320 GFLOP/s on the AMX machine of issue 7, the slices at
  410-425 (330-380 -> about 190 ms at 1,024 x 50,257 x 768), so they run where oneDNN has AMX;
  on an AMD EPYC (Zen 4, AVX512-BF16) the single product ran at 385 GFLOP/s, the slices with
  their copies at 372; a rank-unknown BatchMatMulV2 ran at
  40% of MatMul's speed (490 of a 3,150 ms step).
- `tied_lookup`: autodiff made the lookup's row gradient a dense [V, E] float32 tensor and added
  the head's to it, three 147 MB buffers at the step's allocation peak; peak RSS of a step
  (`benchmarks.cases train_ours`, AMD EPYC Zen 4) float32 3,916-3,927 -> 3,764-3,779 MB,
  bfloat16 3,607-3,614 -> 3,458-3,482 MB, at the same speed.
- Decoding: products as kernel_t @ x^T took 24% less block MatMul time per token at batch 1, and
  batch 8 went from about 80 to about 100 new tokens/s; keeping c_attn's and c_fc's outputs
  transposed saved transposes that were about 10% of a batch-8 step's op time; in-place cache
  writes saved a per-step copy of each layer cache (14% of a batch-8 step's op time); the LM
  head as table @ hidden^T ran at twice the speed of hidden @ table^T at batch 8.
- Decoding's block work and head as small XLA programs called from the graph loop (the library's
  `Generator`; the SavedModel export keeps graph ops): at batch 8 with cold weights (12 layers'
  kernels, more than the cache holds), a c_fc product took 0.75 ms in oneDNN and 0.48 ms in
  XLA, the head 11.4 against 7.1 ms; given its kernels transposed and returning [out, rows], XLA
  keeps that layout (inside one whole-loop XLA program it folds the transposes and took 91 new
  tokens/s). 124M, prompt 32, 128 new tokens, AMD EPYC (Zen 4), oneDNN on: batch 8 148 -> 202
  new tokens/s; batch 1 level (40-42, graph or XLA).
- Decoding's residual stream transposed, [E, B * t], from the embedding to the final LayerNorm,
  with ln_1 and the heads' split inside the c_attn program and ln_2 and the MLP inside the
  attention's: a step's transposes do not grow with depth (at batch 8 each block had three
  graph Transposes, of 0.1-0.3 ms each), and a block is two XLA programs, not three. 124M,
  prompt 32, 128 new tokens, two models alternating in one process (AMD EPYC Zen 4), old/new
  per pair, median of 8 (6): batch 8 1.112 (1.177), 167 -> 187 new tokens/s; batch 1 1.008
  (0.996). Merging a block's second program with the next block's first (one a block) gave
  1.183 at batch 8 and 0.987 at batch 1, not kept.
"""

from __future__ import annotations

import os

PLAIN_ENV = "GPT2_TF_PLAIN"


def enabled() -> bool:
    """Whether the speed paths run: unless the environment sets GPT2_TF_PLAIN to 1 (or true)."""
    return os.environ.get(PLAIN_ENV, "").strip().lower() not in ("1", "true", "yes")
