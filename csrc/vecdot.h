/* vecdot.h - private interface between vecdot.c (dot-product kernels) and matmul.c (not exported to Python).
 *
 * A weight row of type `wtype` is multiplied with an activation row prepared by mg_act_quantize_row in the
 * weight type's activation format:
 *   F32/F16/BF16 weights        -> float32 activations (a plain copy),
 *   Q4_0/Q5_0/Q8_0/IQ4_NL       -> mg_block_q8_0s: the Q8_0 block (mg_quantize_row_q8_0) with its f16 scale as
 *                                  f32 (a broadcast straight from memory) and 8 * the block sum,
 *   Q4_1/Q5_1                   -> mg_block_q8_1x: Q8_0 values with the scale as f32 and the block sum d*sum(q),
 *   Q2_K..Q6_K, IQ4_XS          -> Q8_K blocks (mg_quantize_row_q8_K).
 */
#ifndef MOE_GGUF_VECDOT_H
#define MOE_GGUF_VECDOT_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* the activation block for Q4_1/Q5_1 weights (40 bytes, 4-byte aligned) */
typedef struct { float d; float s; int8_t qs[MG_QK]; } mg_block_q8_1x;
/* the activation block for Q4_0/Q5_0/Q8_0/IQ4_NL weights (40 bytes): the Q8_0 block's values, d as f32 (the exact
 * f16 value) and s8 = 8 * sum(qs) (exact; Q4_0: sum((nibble - 8) * q) = sum(nibble * q) - s8) */
typedef struct { float d; int32_t s8; int8_t qs[MG_QK]; } mg_block_q8_0s;

/* s[t] = dot(weight row w, activation row a + t*a_stride) for t < nt; n elements.
 * Each s[t] is computed with exactly the arithmetic of the single dot (nt == 1), so tiling never changes results. */
typedef void (*mg_dot_fn)(int64_t n, const void *w, const void *a, size_t a_stride, int nt, float *s);

/* y[r] = dot(weight row r, act) for r < nrows, weight row r at w + r * row_bytes, n elements, ONE activation
 * row: the decode (GEMV) kernel.  Each y[r] has the same bits as the single dot of that row. */
typedef void (*mg_rows_fn)(int64_t n, const void *w, size_t row_bytes, int64_t nrows, const void *act, float *y);

/* s[r * nt + t] = dot(weight row r, activation row a + t*a_stride) for r < nrows <= 8, t < nt <= 8: a tile of
 * weight rows x tokens, for kernels whose lanes are weight rows.  Each s has the bits of the single dot. */
typedef void (*mg_rowtile_fn)(int64_t n, const void *w, size_t row_bytes, int nrows, const void *a, size_t a_stride,
                              int nt, float *s);

typedef struct {
    int blck;             /* elements per weight block */
    size_t wbytes;        /* bytes per weight block */
    int act_blck;         /* elements per activation block */
    size_t act_bytes;     /* bytes per activation block */
    mg_dot_fn ref;        /* plain C reference */
    mg_dot_fn simd;       /* AVX2+FMA path, or NULL */
    mg_rows_fn rows;      /* AVX2+FMA multi-row GEMV (same bits as simd per row), or NULL (mg_gemv_rows loops) */
    mg_rowtile_fn rowtile; /* AVX2+FMA rows x tokens tile (same bits as simd), or NULL (GEMM calls simd per row) */
} mg_dot_info;

/* The table entry of a weight type, or NULL if the type has no dot product. */
const mg_dot_info *mg_dot_lookup(int wtype);
/* The kernel to use now (the SIMD one when mg_get_simd_level() >= 1 and it exists). */
mg_dot_fn mg_dot_kernel(const mg_dot_info *info);
/* The type's rows x tokens tile to use now, or NULL (no tile, or the scalar level). */
mg_rowtile_fn mg_rowtile_kernel(const mg_dot_info *info);
/* y[i] = dot(weight row r0 + i, act) for rows [r0, r1) of the matrix whose row 0 is at w (rows of row_bytes
 * bytes, n elements each) against ONE activation row act (mg_act_quantize_row format): the decode kernel,
 * multi-row where the type has one.  Each y[i] has the same bits as the single-row dot of that row.
 * n must be a multiple of info->blck.  No allocation, no shared state: callable from any thread at once; only
 * prefetch hints (never loads) touch addresses past row r1. */
void mg_gemv_rows(const mg_dot_info *info, int64_t n, const void *w, size_t row_bytes, int64_t r0, int64_t r1,
                  const void *act, float *y);
/* Exact integer sums of one Q5_K or IQ4_XS super-block `blk` against the T Q8_K activation blocks y[t * ystride]:
 * s1[t] = sum over 16-element groups of scale * (q . y) (IQ4_XS: its signed scales), s2[t] = sum of mins * bsums
 * (0 for IQ4_XS).  For llama.cpp's tiled batch GEMM order (mg_kquant_gemm_ggml).  MG_EUNSUPPORTED otherwise. */
int mg_kq_block_sums(int type, const void *blk, const mg_block_q8_K *y, int64_t ystride, int64_t T, int32_t *s1,
                     int32_t *s2);
/* Bytes of one activation row of n elements for weight type wtype (n a multiple of the block size). */
size_t mg_act_row_bytes(const mg_dot_info *info, int64_t n);
/* Converts one float32 row of n elements into the activation format of weight type wtype. */
void mg_act_quantize_row(int wtype, const float *x, void *dst, int64_t n);

#endif
