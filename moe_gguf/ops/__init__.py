"""Ops: the typed Python face of the C kernels (moe_gguf._kernels).

Every shape, dtype, alignment and size check happens here, before a pointer reaches C.
  quants.py  - quant formats: dequantize / quantize rows, type tables
  matmul.py  - the thread pool, quantized dot products, matmul and the expert-indexed matmul
  nn.py      - RMSNorm, RoPE (incl. YaRN), softmax, attention (MLA; GQA over an f16 cache in llama.cpp's
               arithmetic), activations, llama.cpp-order K-quant batch GEMMs
  moe.py     - the fused decode ops: MoE FFN in one call (MoEFFN), batched GEMVs (GemvBatch), bound MLA steps
"""
