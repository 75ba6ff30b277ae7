/* moe_gguf.h - the one header of the moe-gguf C kernels.
 *
 * Every exported function is declared and documented here, once.  csrc/build_ffi.py feeds this file
 * (minus preprocessor lines) to cffi, so keep declarations in plain C that cffi can parse:
 * no macros in declarations, no inline bodies.  Internal helpers stay `static` inside their .c file.
 *
 * Conventions
 *  - `type` arguments are ggml type ids (F32 0, F16 1, Q4_0 2, ..., BF16 30); see moe_gguf/ggml_types.py.
 *  - Row lengths `n` are element counts and must be multiples of the type's block size; the Python layer
 *    (moe_gguf/ops/) checks shapes, dtypes, alignment and sizes before any pointer reaches C.
 *  - Functions return 0 on success and a negative MG_E* code on a bad argument they still detect.
 *  - SIMD (AVX2/FMA) paths are chosen at run time; each has a plain C reference (see mg_set_simd_level).
 */
#ifndef MOE_GGUF_H
#define MOE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors ----- */
/* Return codes: 0 ok, -1 unsupported type, -2 bad size/shape, -3 out of memory, -4 other. */

/* ------------------------------------------------------------- cpu / simd ----- */
/* Returns the SIMD level the CPU supports: 0 scalar, 1 AVX2+FMA+F16C. */
int mg_cpu_simd_level(void);
/* Forces the SIMD level used by all kernels (clamped to what the CPU supports); returns the level now in use.
 * Tests set 0 to hold SIMD paths to the scalar reference. */
int mg_set_simd_level(int level);
/* The SIMD level now in use. */
int mg_get_simd_level(void);

/* ---------------------------------------------------------- quant formats ----- */
/* [section owned by csrc/quants.c] */

/* Block size (elements per block) of a ggml type, or 0 if the type is not supported by these kernels. */
int mg_type_block_size(int type);
/* Bytes per block of a ggml type, or 0 if unsupported. */
size_t mg_type_block_bytes(int type);
/* Dequantizes `n` elements (a whole number of blocks) of type `type` from `src` into float32 `dst`.
 * Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS. */
int mg_dequantize_row(int type, const void *src, float *dst, int64_t n);
/* Quantizes `n` float32 elements (a whole number of blocks) from `src` into `dst` in type `type`.
 * Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q8_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS.
 * `imatrix` (may be NULL) gives per-column importance weights of length n for the K/IQ quantizers. */
int mg_quantize_row(int type, const float *src, void *dst, int64_t n, const float *imatrix);

/* ---------------------------------------------- threads, dot products, matmul ----- */
/* [section owned by csrc/threadpool.c, csrc/matmul.c] */

/* ------------------------------------------------------- neural-net ops ----- */
/* [section owned by csrc/nn.c] */

#ifdef __cplusplus
}
#endif
#endif /* MOE_GGUF_H */
