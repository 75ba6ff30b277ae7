/* vecdot.c - dot products between weight rows (any supported ggml type) and prepared activation rows.
 *
 * Each weight type has a plain C reference and, on x86, an AVX2+FMA kernel; mg_dot_kernel picks one at run
 * time from mg_get_simd_level().  Integer types accumulate exact integer sums per block and combine them in
 * float as  d_w * d_a * sum_i(q_w * q_a)  (minus the min terms), so SIMD and reference differ only by float
 * rounding.  Every kernel processes blocks in index order, so a result never depends on threads or tiling.
 */
#include <math.h>
#include <stddef.h>

#include "moe_gguf.h"
#include "internal.h"
#include "vecdot.h"

#if MG_X86
#include <immintrin.h>
#endif

static inline float f16(uint16_t h) { return mg_f16_to_f32(h); }

/* --------------------------------------------------------------------------------------------------------
 * Scale unpacking shared by the reference and SIMD paths
 * ------------------------------------------------------------------------------------------------------ */

/* Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins from the 12 packed bytes (ggml's get_scale_min_k4). */
static inline void unpack_k4_scales(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for (int j = 4; j < 8; j++) {
        sc[j] = (uint8_t)((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
        mn[j] = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Q3_K: 16 six-bit scales (already minus 32): low 4 bits from bytes 0..7, high 2 bits from bytes 8..11. */
static inline void unpack_q3k_scales(const uint8_t *s, int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        int lo = (j < 8) ? (s[j] & 15) : (s[j - 8] >> 4);
        int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* IQ4_XS: the 6-bit scale of sub-block ib, minus 32. */
static inline int iq4xs_scale(const mg_block_iq4_xs *b, int ib) {
    uint16_t sh;
    memcpy(&sh, &b->scales_h, 2);
    int ls = ((b->scales_l[ib / 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4);
    return ls - 32;
}

/* --------------------------------------------------------------------------------------------------------
 * Plain C references: each weight block is decoded to its integer values (and integer scales), then one
 * generic integer dot per block family does the arithmetic.
 * ------------------------------------------------------------------------------------------------------ */

static inline uint16_t rd16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* float weights: F32, F16 (IEEE half) or BF16 element i */
static inline float wval(int type, const void *w, int64_t i) {
    if (type == MG_F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return type == MG_F16 ? f16(h) : mg_bf16_to_f32(h);
}

static inline float ref_float(int type, int64_t n, const void *w, const void *a) {
    const float *y = a;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += wval(type, w, i) * y[i];
    return s;
}

static float ref_f32(int64_t n, const void *w, const void *a) { return ref_float(MG_F32, n, w, a); }
static float ref_f16(int64_t n, const void *w, const void *a) { return ref_float(MG_F16, n, w, a); }
static float ref_bf16(int64_t n, const void *w, const void *a) { return ref_float(MG_BF16, n, w, a); }

/* ---- 32-element blocks: q[j] for element j; byte offsets per ggml-common.h ---- */

/* 16 packed bytes -> low nibbles are elements 0..15, high nibbles 16..31, each mapped through lut (or - off) */
static inline void nibbles_to(const uint8_t *qs, const int8_t *lut, int off, int8_t q[32]) {
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(lut ? lut[qs[j] & 15] : (qs[j] & 15) - off);
        q[j + 16] = (int8_t)(lut ? lut[qs[j] >> 4] : (qs[j] >> 4) - off);
    }
}

/* adds 16 to element j where bit j of the 32-bit qh is set */
static inline void add_high_bits(const uint8_t *qh4, int8_t q[32]) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 32; j++) q[j] = (int8_t)(q[j] + (int)((qh >> j) & 1) * 16);
}

static void dec_q4_0(const uint8_t *b, int8_t q[32]) { nibbles_to(b + 2, NULL, 8, q); }
static void dec_q4_1(const uint8_t *b, int8_t q[32]) { nibbles_to(b + 4, NULL, 0, q); }
static void dec_q5_0(const uint8_t *b, int8_t q[32]) {
    nibbles_to(b + 6, NULL, 16, q); /* (nibble | bit << 4) - 16 */
    add_high_bits(b + 2, q);
}
static void dec_q5_1(const uint8_t *b, int8_t q[32]) {
    nibbles_to(b + 8, NULL, 0, q);
    add_high_bits(b + 4, q);
}
static void dec_q8_0(const uint8_t *b, int8_t q[32]) { memcpy(q, b + 2, 32); }
static void dec_iq4_nl(const uint8_t *b, int8_t q[32]) { nibbles_to(b + 2, mg_kvalues_iq4nl, 0, q); }

static inline int idot(const int8_t *q, const int8_t *y, int n) {
    int s = 0;
    for (int j = 0; j < n; j++) s += q[j] * y[j];
    return s;
}

/* sum over blocks of d_w * d_a * sum(q_w * q_a), plus m_w * s_a for the affine types (Q8_1-style activations) */
static inline float ref_blocks32(int64_t n, const void *w, size_t wbytes, const void *a,
                                 void (*dec)(const uint8_t *, int8_t *), int affine) {
    float s = 0.0f;
    for (int64_t i = 0; i < n / MG_QK; i++) {
        const uint8_t *b = (const uint8_t *)w + (size_t)i * wbytes;
        int8_t q[MG_QK];
        dec(b, q);
        if (affine) {
            const mg_block_q8_1x *y = (const mg_block_q8_1x *)a + i;
            s += (float)idot(q, y->qs, MG_QK) * (f16(rd16(b)) * y->d) + f16(rd16(b + 2)) * y->s;
        } else {
            const mg_block_q8_0 *y = (const mg_block_q8_0 *)a + i;
            s += (float)idot(q, y->qs, MG_QK) * (f16(rd16(b)) * f16(y->d));
        }
    }
    return s;
}

static float ref_q4_0(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 18, a, dec_q4_0, 0); }
static float ref_q4_1(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 20, a, dec_q4_1, 1); }
static float ref_q5_0(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 22, a, dec_q5_0, 0); }
static float ref_q5_1(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 24, a, dec_q5_1, 1); }
static float ref_q8_0(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 34, a, dec_q8_0, 0); }
static float ref_iq4_nl(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 18, a, dec_iq4_nl, 0); }

/* ---- 256-element super-blocks: q[256] values, per 16-element group g an integer scale sc[g] and min m[g];
 *      x = d * sc[g] * q - dmin * m[g]  ---- */

typedef struct {
    int8_t q[MG_QK_K];
    int sc[16], m[16];
    float d, dmin;
} kdec;

static void dec_q2_K(const void *blk, kdec *k) {
    const mg_block_q2_K *x = blk;
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) k->q[128 * h + 32 * j + l] = (int8_t)((x->qs[32 * h + l] >> (2 * j)) & 3);
    for (int g = 0; g < 16; g++) {
        k->sc[g] = x->scales[g] & 15;
        k->m[g] = x->scales[g] >> 4;
    }
    k->d = f16(x->d);
    k->dmin = f16(x->dmin);
}

static void dec_q3_K(const void *blk, kdec *k) {
    const mg_block_q3_K *x = blk;
    int8_t sc[16];
    unpack_q3k_scales(x->scales, sc);
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                int q = (x->qs[32 * h + l] >> (2 * j)) & 3;
                k->q[128 * h + 32 * j + l] = (int8_t)(q - ((x->hmask[l] >> (4 * h + j)) & 1 ? 0 : 4));
            }
    for (int g = 0; g < 16; g++) {
        k->sc[g] = sc[g];
        k->m[g] = 0;
    }
    k->d = f16(x->d);
    k->dmin = 0.0f;
}

/* Q4_K and Q5_K share the layout up to qh (Q5_K only) */
static void dec_k4(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, uint16_t d, uint16_t dmin, kdec *k) {
    uint8_t sc[8], mn[8];
    unpack_k4_scales(scales, sc, mn);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            int lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
            if (qh) {
                lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
            }
            k->q[64 * c + l] = (int8_t)lo;
            k->q[64 * c + 32 + l] = (int8_t)hi;
        }
    for (int g = 0; g < 16; g++) {
        k->sc[g] = sc[g / 2];
        k->m[g] = mn[g / 2];
    }
    k->d = f16(d);
    k->dmin = f16(dmin);
}

static void dec_q4_K(const void *blk, kdec *k) {
    const mg_block_q4_K *x = blk;
    dec_k4(x->scales, x->qs, NULL, x->d, x->dmin, k);
}

static void dec_q5_K(const void *blk, kdec *k) {
    const mg_block_q5_K *x = blk;
    dec_k4(x->scales, x->qs, x->qh, x->d, x->dmin, k);
}

static void dec_q6_K(const void *blk, kdec *k) {
    const mg_block_q6_K *x = blk;
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
        int8_t *q = k->q + 128 * h;
        for (int l = 0; l < 32; l++) {
            q[l] = (int8_t)((int)((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
            q[l + 32] = (int8_t)((int)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
            q[l + 64] = (int8_t)((int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            q[l + 96] = (int8_t)((int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
    for (int g = 0; g < 16; g++) {
        k->sc[g] = x->scales[g];
        k->m[g] = 0;
    }
    k->d = f16(x->d);
    k->dmin = 0.0f;
}

static void dec_iq4_xs(const void *blk, kdec *k) {
    const mg_block_iq4_xs *x = blk;
    for (int ib = 0; ib < 8; ib++) {
        nibbles_to(x->qs + 16 * ib, mg_kvalues_iq4nl, 0, k->q + 32 * ib);
        k->sc[2 * ib] = k->sc[2 * ib + 1] = iq4xs_scale(x, ib);
        k->m[2 * ib] = k->m[2 * ib + 1] = 0;
    }
    k->d = f16(x->d);
    k->dmin = 0.0f;
}

/* sum over super-blocks of d_a * (d * sum_g sc[g] * (q . y)_g - dmin * sum_g m[g] * bsums[g]) */
static inline float ref_superblocks(int64_t n, const void *w, size_t wbytes, const void *a,
                                    void (*dec)(const void *, kdec *)) {
    const mg_block_q8_K *y = a;
    float s = 0.0f;
    for (int64_t i = 0; i < n / MG_QK_K; i++) {
        kdec k;
        dec((const uint8_t *)w + (size_t)i * wbytes, &k);
        int isum = 0, summ = 0;
        for (int g = 0; g < 16; g++) {
            isum += k.sc[g] * idot(k.q + 16 * g, y[i].qs + 16 * g, 16);
            summ += k.m[g] * y[i].bsums[g];
        }
        s += y[i].d * k.d * (float)isum - y[i].d * k.dmin * (float)summ;
    }
    return s;
}

static float ref_q2_K(int64_t n, const void *w, const void *a) { return ref_superblocks(n, w, 84, a, dec_q2_K); }
static float ref_q3_K(int64_t n, const void *w, const void *a) { return ref_superblocks(n, w, 110, a, dec_q3_K); }
static float ref_q4_K(int64_t n, const void *w, const void *a) { return ref_superblocks(n, w, 144, a, dec_q4_K); }
static float ref_q5_K(int64_t n, const void *w, const void *a) { return ref_superblocks(n, w, 176, a, dec_q5_K); }
static float ref_q6_K(int64_t n, const void *w, const void *a) { return ref_superblocks(n, w, 210, a, dec_q6_K); }
static float ref_iq4_xs(int64_t n, const void *w, const void *a) { return ref_superblocks(n, w, 136, a, dec_iq4_xs); }

/* --------------------------------------------------------------------------------------------------------
 * AVX2 + FMA kernels
 * ------------------------------------------------------------------------------------------------------ */
#if MG_X86

/* exact f16 -> f32 with the F16C instruction */
MG_TARGET_AVX2 static inline float f16c(uint16_t h) { return _cvtsh_ss(h); }

MG_TARGET_AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* signed int8 x signed int8 -> 16 pairwise int16 sums, as maddubs(|y|, x * sign(y)).  x must not hold -128
 * (true for every weight code book here except raw Q8_0); y may (|y| = 128 is read as unsigned), and
 * 2 * 128 * 127 does not saturate. */
MG_TARGET_AVX2 static inline __m256i dot_i8_pairs16(__m256i x, __m256i y) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(y, y), _mm256_sign_epi8(x, y));
}

/* signed int8 x signed int8 -> 8 int32 sums of 4 products (x != -128, see dot_i8_pairs16) */
MG_TARGET_AVX2 static inline __m256i dot_i8_quads(__m256i x, __m256i y) {
    return _mm256_madd_epi16(dot_i8_pairs16(x, y), _mm256_set1_epi16(1));
}

/* 16 packed bytes -> 32 nibbles: low nibbles in the low lane (elements 0..15), high nibbles in the high lane */
MG_TARGET_AVX2 static inline __m256i nibbles32(const uint8_t *p) {
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_and_si256(v, _mm256_set1_epi8(15));
}

/* 32 bits -> 32 bytes, 0xFF where bit k of x is set */
MG_TARGET_AVX2 static inline __m256i bits_to_bytes(uint32_t x) {
    const __m256i pick = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), pick);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

MG_TARGET_AVX2 static inline __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 8 float weights from element i of an F32 / F16 / BF16 row */
MG_TARGET_AVX2 static inline __m256 load8w(int type, const void *w, int64_t i) {
    if (type == MG_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)w + i));
    if (type == MG_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* BF16 */
}

MG_TARGET_AVX2 static inline float avx_float(int type, int64_t n, const void *w, const void *a) {
    const float *y = a;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(load8w(type, w, i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(load8w(type, w, i + 8), _mm256_loadu_ps(y + i + 8), acc1);
    }
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += wval(type, w, i) * y[i];
    return s;
}

MG_TARGET_AVX2 static float avx_f32(int64_t n, const void *w, const void *a) { return avx_float(MG_F32, n, w, a); }
MG_TARGET_AVX2 static float avx_f16(int64_t n, const void *w, const void *a) { return avx_float(MG_F16, n, w, a); }
MG_TARGET_AVX2 static float avx_bf16(int64_t n, const void *w, const void *a) { return avx_float(MG_BF16, n, w, a); }

MG_TARGET_AVX2 static inline __m256 scaled_dot(__m256i qx, const int8_t *qy, float d, __m256 acc) {
    /* Q8_0 activations never hold -128 (|q| <= 127), weights may: the activation goes first */
    __m256 p = _mm256_cvtepi32_ps(dot_i8_quads(load256(qy), qx));
    return _mm256_fmadd_ps(_mm256_set1_ps(d), p, acc);
}

/* weight block -> 32 signed values (element order of the activation block) */
MG_TARGET_AVX2 static inline __m256i unpack_q4_0(const mg_block_q4_0 *x) {
    return _mm256_sub_epi8(nibbles32(x->qs), _mm256_set1_epi8(8));
}

MG_TARGET_AVX2 static inline __m256i unpack_q4_1(const mg_block_q4_1 *x) { return nibbles32(x->qs); }

MG_TARGET_AVX2 static inline __m256i unpack_q5_0(const mg_block_q5_0 *x) {
    uint32_t qh;
    memcpy(&qh, x->qh, 4);
    /* q - 16 = nibble - 16 where the 5th bit is clear: set the high nibble there (0xF0 | v == v - 16) */
    __m256i hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8((char)0xF0));
    return _mm256_or_si256(nibbles32(x->qs), hi);
}

MG_TARGET_AVX2 static inline __m256i unpack_q5_1(const mg_block_q5_1 *x) {
    uint32_t qh;
    memcpy(&qh, x->qh, 4);
    return _mm256_or_si256(nibbles32(x->qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
}

MG_TARGET_AVX2 static inline __m256i unpack_q8_0(const mg_block_q8_0 *x) { return load256(x->qs); }

/* IQ4 code book lookup of 16 packed bytes -> 32 signed values (same order as nibbles32) */
MG_TARGET_AVX2 static inline __m256i iq4_values32(const uint8_t *p) {
    const __m128i kv = _mm_loadu_si128((const __m128i *)(const void *)mg_kvalues_iq4nl);
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i lo = _mm_shuffle_epi8(kv, _mm_and_si128(b, _mm_set1_epi8(15)));
    __m128i hi = _mm_shuffle_epi8(kv, _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15)));
    return _mm256_set_m128i(hi, lo);
}

MG_TARGET_AVX2 static inline __m256i unpack_iq4_nl(const mg_block_iq4_nl *x) { return iq4_values32(x->qs); }

/* Tiles of M <= MT_MAX activation rows: each weight block is unpacked once for all M rows.  Per row the
 * arithmetic does not depend on M, so results never depend on how tokens are grouped, and the single dot
 * is M = 1. */
#define MT_MAX 4
/* scale, min and block sum accessors of the weight and activation blocks */
MG_TARGET_AVX2 static inline float act_d_q8_0(const mg_block_q8_0 *y) { return f16c(y->d); }
MG_TARGET_AVX2 static inline float act_s_q8_0(const mg_block_q8_0 *y) { (void)y; return 0.0f; }
MG_TARGET_AVX2 static inline float act_d_q8_1x(const mg_block_q8_1x *y) { return y->d; }
MG_TARGET_AVX2 static inline float act_s_q8_1x(const mg_block_q8_1x *y) { return y->s; }
#define W_MIN_NONE(x) 0.0f
#define W_MIN(x) f16c((x)->m)

/* 32-element-block tile: y_j += sum_i d_w d_a (q_w . q_a) (+ m_w s_a for the affine Q4_1/Q5_1 with Q8_1-style
 * activations AT).  Even blocks go into acc0, odd into acc1, the min terms into summ in block order. */
#define Q8_TILE(name, WT, AT, unpack, ACT_D, ACT_S, WMIN)                                                    \
    MG_TARGET_AVX2 static inline __attribute__((always_inline)) void name(int64_t nb, const void *w, const char *a, \
                                                                          size_t stride, int M, float *s) {  \
        const WT *x = w;                                                                                     \
        __m256 acc0[MT_MAX], acc1[MT_MAX];                                                                   \
        float summ[MT_MAX];                                                                                  \
        for (int j = 0; j < M; j++) {                                                                        \
            acc0[j] = acc1[j] = _mm256_setzero_ps();                                                         \
            summ[j] = 0.0f;                                                                                  \
        }                                                                                                    \
        for (int64_t i = 0; i < nb; i++) {                                                                   \
            __m256i q = unpack(&x[i]);                                                                       \
            float d = f16c(x[i].d), m = WMIN(&x[i]);                                                         \
            (void)m;                                                                                         \
            for (int j = 0; j < M; j++) {                                                                    \
                const AT *y = (const AT *)(const void *)(a + (size_t)j * stride) + i;                        \
                acc0[j] = scaled_dot(q, y->qs, d * ACT_D(y), acc0[j]); /* one chain, as ggml's AVX2 dots */  \
                summ[j] += m * ACT_S(y);                                                                     \
            }                                                                                                \
        }                                                                                                    \
        for (int j = 0; j < M; j++) s[j] = hsum8(_mm256_add_ps(acc0[j], acc1[j])) + summ[j];                 \
    }

/* multi_<name>: all nt activation rows, MT_MAX at a time, through tile(nb, w, a, stride, M, s) */
#define MULTI_TILES(name, tile, blck)                                                                        \
    MG_TARGET_AVX2 static void name(int64_t n, const void *w, const void *a, size_t a_stride, int nt, float *s) { \
        const char *ap = a;                                                                                  \
        int t = 0;                                                                                           \
        for (; t + MT_MAX <= nt; t += MT_MAX) tile(n / (blck), w, ap + (size_t)t * a_stride, a_stride, MT_MAX, s + t); \
        switch (nt - t) {                                                                                    \
        case 3: tile(n / (blck), w, ap + (size_t)t * a_stride, a_stride, 3, s + t); break;                   \
        case 2: tile(n / (blck), w, ap + (size_t)t * a_stride, a_stride, 2, s + t); break;                   \
        case 1: tile(n / (blck), w, ap + (size_t)t * a_stride, a_stride, 1, s + t); break;                   \
        default: break;                                                                                      \
        }                                                                                                    \
    }

#define Q80(name, WT, unpack) Q8_TILE(name, WT, mg_block_q8_0, unpack, act_d_q8_0, act_s_q8_0, W_MIN_NONE)
#define Q81(name, WT, unpack) Q8_TILE(name, WT, mg_block_q8_1x, unpack, act_d_q8_1x, act_s_q8_1x, W_MIN)
Q80(tile_q4_0, mg_block_q4_0, unpack_q4_0)
Q81(tile_q4_1, mg_block_q4_1, unpack_q4_1)
Q80(tile_q5_0, mg_block_q5_0, unpack_q5_0)
Q81(tile_q5_1, mg_block_q5_1, unpack_q5_1)
Q80(tile_q8_0, mg_block_q8_0, unpack_q8_0)
Q80(tile_iq4_nl, mg_block_iq4_nl, unpack_iq4_nl)
MULTI_TILES(multi_avx_q4_0, tile_q4_0, MG_QK)
MULTI_TILES(multi_avx_q4_1, tile_q4_1, MG_QK)
MULTI_TILES(multi_avx_q5_0, tile_q5_0, MG_QK)
MULTI_TILES(multi_avx_q5_1, tile_q5_1, MG_QK)
MULTI_TILES(multi_avx_q8_0, tile_q8_0, MG_QK)
MULTI_TILES(multi_avx_iq4_nl, tile_iq4_nl, MG_QK)

/* int16 scale pair for a 32-element chunk: lanes 0..7 (elements 0..15) get s0, lanes 8..15 get s1 */
MG_TARGET_AVX2 static inline __m256i scale_pair(int s0, int s1) {
    return _mm256_set_m128i(_mm_set1_epi16((short)s1), _mm_set1_epi16((short)s0));
}

MG_TARGET_AVX2 static float avx_q2_K(int64_t n, const void *w, const void *a) {
    const mg_block_q2_K *x = w;
    const mg_block_q8_K *y = a;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < n / MG_QK_K; i++) {
        int mins[16];
        for (int g = 0; g < 16; g++) mins[g] = x[i].scales[g] >> 4;
        int summ = 0;
        for (int g = 0; g < 16; g++) summ += mins[g] * y[i].bsums[g];
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i q2 = load256(x[i].qs + 32 * h);
            for (int j = 0; j < 4; j++) {
                int g = 8 * h + 2 * j;
                __m256i q = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * j), _mm256_set1_epi8(3));
                __m256i p16 = _mm256_maddubs_epi16(q, load256(y[i].qs + 128 * h + 32 * j));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, scale_pair(x[i].scales[g] & 15, x[i].scales[g + 1] & 15)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * f16c(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
        summs += y[i].d * f16c(x[i].dmin) * (float)summ;
    }
    return hsum8(acc) - summs;
}

MG_TARGET_AVX2 static float avx_q3_K(int64_t n, const void *w, const void *a) {
    const mg_block_q3_K *x = w;
    const mg_block_q8_K *y = a;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / MG_QK_K; i++) {
        int8_t sc[16];
        unpack_q3k_scales(x[i].scales, sc);
        __m256i hm = load256(x[i].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i q2 = load256(x[i].qs + 32 * h);
            for (int j = 0; j < 4; j++) {
                int g = 8 * h + 2 * j;
                __m256i bit = _mm256_set1_epi8((char)(1 << (4 * h + j)));
                __m256i four = _mm256_andnot_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), _mm256_set1_epi8(4));
                __m256i q = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * j), _mm256_set1_epi8(3));
                __m256i q8 = load256(y[i].qs + 128 * h + 32 * j);
                __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q, q8), _mm256_maddubs_epi16(four, q8));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, scale_pair(sc[g], sc[g + 1])));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * f16c(x[i].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum8(acc);
}

MG_TARGET_AVX2 static inline float hsum4(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

MG_TARGET_AVX2 static inline int32_t hsum_i32x4(__m128i v) {
    v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 1));
    return _mm_cvtsi128_si32(v);
}

MG_TARGET_AVX2 static inline int32_t hsum_i32x8(__m256i v) {
    return hsum_i32x4(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

/* int16 lane j of v (the same in both 128-bit lanes) broadcast to all 16 lanes */
MG_TARGET_AVX2 static inline __m256i pick16(__m256i v, int j) {
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)((2 * j) | ((2 * j + 1) << 8))));
}

/* Q4_K / Q5_K tile (see Q8_0_TILE): each super-block's quants and scales are unpacked once for all M rows.
 * Both blocks start with d, dmin, scales[12]; Q5_K then has qh[32] (off_qh != 0) before qs[128]. */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void k4_tile(int64_t nb, const uint8_t *w, size_t bbytes,
                                                                       size_t off_qh, size_t off_qs, const char *a,
                                                                       size_t stride, int M, float *s) {
    const __m256i m4 = _mm256_set1_epi8(15), b16 = _mm256_set1_epi8(16);
    __m256 acc[MT_MAX];
    __m128 acc_m[MT_MAX];
    float acc_s[MT_MAX], accm_s[MT_MAX];
    for (int j = 0; j < M; j++) {
        acc[j] = _mm256_setzero_ps();
        acc_m[j] = _mm_setzero_ps();
        acc_s[j] = accm_s[j] = 0.0f;
    }
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = w + (size_t)i * bbytes;
        uint16_t dh[2];
        uint32_t u[3];
        memcpy(dh, blk, 4);
        memcpy(u, blk + 4, 12);
        uint32_t sc_lo = u[0] & 0x3f3f3f3fu, mn_lo = u[1] & 0x3f3f3f3fu;
        uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
        uint32_t mn_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
        __m256i v16 = _mm256_cvtepu8_epi16(_mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo));
        __m128i mins = _mm256_extracti128_si256(v16, 1);
        __m256i sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(v16));
        __m256i q[8];
        __m256i hb = off_qh ? load256(blk + off_qh) : _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q4 = load256(blk + off_qs + 32 * c);
            q[2 * c] = _mm256_and_si256(q4, m4);
            q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            if (off_qh) { /* bit 2c of qh[l] -> +16 on element l of the low half, bit 2c+1 -> the high half */
                q[2 * c] = _mm256_or_si256(q[2 * c], _mm256_and_si256(_mm256_slli_epi16(hb, 4), b16));
                q[2 * c + 1] = _mm256_or_si256(q[2 * c + 1], _mm256_and_si256(_mm256_slli_epi16(hb, 3), b16));
                hb = _mm256_srli_epi16(hb, 2);
            }
        }
        float dx = f16c(dh[0]), dmx = f16c(dh[1]);
        for (int j = 0; j < M; j++) {
            const mg_block_q8_K *y = (const mg_block_q8_K *)(const void *)(a + (size_t)j * stride) + i;
            __m256i bs = load256(y->bsums);
            __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            __m128i prod = _mm_madd_epi16(mins, pairs);
            __m256i sumi = _mm256_setzero_si256();
            for (int c = 0; c < 8; c++) {
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[c], load256(y->qs + 32 * c)), pick16(sc, c));
                sumi = _mm256_add_epi32(sumi, p);
            }
            if (!off_qh) { /* Q4_K: llama.cpp's AVX2 build runs Q4_K repacked (8x8); per output it accumulates
                              the super-block's integer sums as two scalar FMA chains: acc += isum * (d dy),
                              accm += imin * (dmin dy); result acc - accm */
                acc_s[j] = fmaf((float)hsum_i32x8(sumi), dx * y->d, acc_s[j]);
                accm_s[j] = fmaf((float)hsum_i32x4(prod), dmx * y->d, accm_s[j]);
                continue;
            }
            acc_m[j] = _mm_fmadd_ps(_mm_set1_ps(y->d * dmx), _mm_cvtepi32_ps(prod), acc_m[j]);
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * dx), _mm256_cvtepi32_ps(sumi), acc[j]);
        }
    }
    if (!off_qh) {
        for (int j = 0; j < M; j++) s[j] = acc_s[j] - accm_s[j];
        return;
    }
    for (int j = 0; j < M; j++) s[j] = hsum8(acc[j]) - hsum4(acc_m[j]);
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q4_K_tile(int64_t nb, const void *w, const char *a,
                                                                         size_t stride, int M, float *s) {
    k4_tile(nb, w, sizeof(mg_block_q4_K), 0, offsetof(mg_block_q4_K, qs), a, stride, M, s);
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q5_K_tile(int64_t nb, const void *w, const char *a,
                                                                         size_t stride, int M, float *s) {
    k4_tile(nb, w, sizeof(mg_block_q5_K), offsetof(mg_block_q5_K, qh), offsetof(mg_block_q5_K, qs), a, stride, M, s);
}

MULTI_TILES(multi_avx_q4_K, q4_K_tile, MG_QK_K)
MULTI_TILES(multi_avx_q5_K, q5_K_tile, MG_QK_K)

/* Q6_K tile (see Q8_0_TILE).  q - 32 is handled as sum(sc * q * y) - 32 * sum_g(sc_g * bsums_g), exact in int32. */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q6_K_tile(int64_t nb, const void *w, const char *a,
                                                                         size_t stride, int M, float *s) {
    const mg_block_q6_K *x = w;
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
    __m256 acc[MT_MAX];
    for (int j = 0; j < M; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i q[8], sp[8];
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            __m256i l0 = load256(ql), l1 = load256(ql + 32), qh = load256(x[i].qh + 32 * h);
            q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
            q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
            q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
        }
        for (int c = 0; c < 8; c++) sp[c] = scale_pair(x[i].scales[2 * c], x[i].scales[2 * c + 1]);
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)x[i].scales));
        float dx = f16c(x[i].d);
        for (int j = 0; j < M; j++) {
            const mg_block_q8_K *y = (const mg_block_q8_K *)(const void *)(a + (size_t)j * stride) + i;
            __m256i sumi = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(y->bsums)), 5); /* 32 * offsets */
            sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
            for (int c = 0; c < 8; c++) {
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[c], load256(y->qs + 32 * c)), sp[c]);
                sumi = _mm256_add_epi32(sumi, p);
            }
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * dx), _mm256_cvtepi32_ps(sumi), acc[j]);
        }
    }
    for (int j = 0; j < M; j++) s[j] = hsum8(acc[j]);
}

MULTI_TILES(multi_avx_q6_K, q6_K_tile, MG_QK_K)

/* IQ4_XS tile (see Q8_0_TILE): code book values and scales unpacked once per super-block for all M rows. */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void iq4_xs_tile(int64_t nb, const void *w, const char *a,
                                                                           size_t stride, int M, float *s) {
    const mg_block_iq4_xs *x = w;
    const __m256i kv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)mg_kvalues_iq4nl));
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[MT_MAX];
    for (int j = 0; j < M; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        uint16_t sh;
        uint32_t sl;
        memcpy(&sh, &x[i].scales_h, 2);
        memcpy(&sl, x[i].scales_l, 4);
        __m256i q[8], sc[8];
        for (int ib = 0; ib < 8; ib += 2) { /* 32 bytes = sub-blocks ib (low lane) and ib+1 (high lane) */
            __m256i b = load256(x[i].qs + 16 * ib);
            __m256i lo = _mm256_shuffle_epi8(kv, _mm256_and_si256(b, m4));                        /* elements 0..15 */
            __m256i hi = _mm256_shuffle_epi8(kv, _mm256_and_si256(_mm256_srli_epi16(b, 4), m4)); /* 16..31 */
            q[ib] = _mm256_permute2x128_si256(lo, hi, 0x20);     /* sub-block ib in element order */
            q[ib + 1] = _mm256_permute2x128_si256(lo, hi, 0x31); /* sub-block ib+1 */
        }
        for (int ib = 0; ib < 8; ib++) {
            int ls = (int)(((sl >> (4 * ib)) & 15) | (((sh >> (2 * ib)) & 3) << 4)) - 32;
            sc[ib] = _mm256_set1_epi16((short)ls);
        }
        float dx = f16c(x[i].d);
        for (int j = 0; j < M; j++) {
            const mg_block_q8_K *y = (const mg_block_q8_K *)(const void *)(a + (size_t)j * stride) + i;
            __m256i sumi = _mm256_setzero_si256();
            for (int ib = 0; ib < 8; ib++) {
                __m256i p = _mm256_madd_epi16(dot_i8_pairs16(q[ib], load256(y->qs + 32 * ib)), sc[ib]);
                sumi = _mm256_add_epi32(sumi, p);
            }
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(y->d * dx), _mm256_cvtepi32_ps(sumi), acc[j]);
        }
    }
    for (int j = 0; j < M; j++) s[j] = hsum8(acc[j]);
}

MULTI_TILES(multi_avx_iq4_xs, iq4_xs_tile, MG_QK_K)

#endif /* MG_X86 */

/* --------------------------------------------------------------------------------------------------------
 * Multi-activation wrappers and the type table
 * ------------------------------------------------------------------------------------------------------ */

#define MG_MULTI(name, attr)                                                                                   \
    attr static void multi_##name(int64_t n, const void *w, const void *a, size_t a_stride, int nt, float *s) { \
        const char *ap = a;                                                                                    \
        for (int t = 0; t < nt; t++) s[t] = name(n, w, ap + (size_t)t * a_stride);                              \
    }

#define MG_REF_ONLY(t) MG_MULTI(ref_##t, )
MG_REF_ONLY(f32)
MG_REF_ONLY(f16)
MG_REF_ONLY(bf16)
MG_REF_ONLY(q4_0)
MG_REF_ONLY(q4_1)
MG_REF_ONLY(q5_0)
MG_REF_ONLY(q5_1)
MG_REF_ONLY(q8_0)
MG_REF_ONLY(iq4_nl)
MG_REF_ONLY(q2_K)
MG_REF_ONLY(q3_K)
MG_REF_ONLY(q4_K)
MG_REF_ONLY(q5_K)
MG_REF_ONLY(q6_K)
MG_REF_ONLY(iq4_xs)

#if MG_X86
#define MG_AVX(t) MG_MULTI(avx_##t, MG_TARGET_AVX2)
MG_AVX(f32)
MG_AVX(f16)
MG_AVX(bf16)
MG_AVX(q2_K)
MG_AVX(q3_K)
#define SIMD(t) multi_avx_##t
#else
#define SIMD(t) NULL
#endif

#define Q8_0B sizeof(mg_block_q8_0)
#define Q8_1B sizeof(mg_block_q8_1x)
#define Q8_KB sizeof(mg_block_q8_K)

static const struct { int type; mg_dot_info info; } k_table[] = {
    {MG_F32, {1, 4, 1, 4, multi_ref_f32, SIMD(f32)}},
    {MG_F16, {1, 2, 1, 4, multi_ref_f16, SIMD(f16)}},
    {MG_BF16, {1, 2, 1, 4, multi_ref_bf16, SIMD(bf16)}},
    {MG_Q4_0, {MG_QK, sizeof(mg_block_q4_0), MG_QK, Q8_0B, multi_ref_q4_0, SIMD(q4_0)}},
    {MG_Q4_1, {MG_QK, sizeof(mg_block_q4_1), MG_QK, Q8_1B, multi_ref_q4_1, SIMD(q4_1)}},
    {MG_Q5_0, {MG_QK, sizeof(mg_block_q5_0), MG_QK, Q8_0B, multi_ref_q5_0, SIMD(q5_0)}},
    {MG_Q5_1, {MG_QK, sizeof(mg_block_q5_1), MG_QK, Q8_1B, multi_ref_q5_1, SIMD(q5_1)}},
    {MG_Q8_0, {MG_QK, sizeof(mg_block_q8_0), MG_QK, Q8_0B, multi_ref_q8_0, SIMD(q8_0)}},
    {MG_IQ4_NL, {MG_QK, sizeof(mg_block_iq4_nl), MG_QK, Q8_0B, multi_ref_iq4_nl, SIMD(iq4_nl)}},
    {MG_Q2_K, {MG_QK_K, sizeof(mg_block_q2_K), MG_QK_K, Q8_KB, multi_ref_q2_K, SIMD(q2_K)}},
    {MG_Q3_K, {MG_QK_K, sizeof(mg_block_q3_K), MG_QK_K, Q8_KB, multi_ref_q3_K, SIMD(q3_K)}},
    {MG_Q4_K, {MG_QK_K, sizeof(mg_block_q4_K), MG_QK_K, Q8_KB, multi_ref_q4_K, SIMD(q4_K)}},
    {MG_Q5_K, {MG_QK_K, sizeof(mg_block_q5_K), MG_QK_K, Q8_KB, multi_ref_q5_K, SIMD(q5_K)}},
    {MG_Q6_K, {MG_QK_K, sizeof(mg_block_q6_K), MG_QK_K, Q8_KB, multi_ref_q6_K, SIMD(q6_K)}},
    {MG_IQ4_XS, {MG_QK_K, sizeof(mg_block_iq4_xs), MG_QK_K, Q8_KB, multi_ref_iq4_xs, SIMD(iq4_xs)}},
};

const mg_dot_info *mg_dot_lookup(int wtype) {
    for (size_t i = 0; i < sizeof(k_table) / sizeof(k_table[0]); i++) {
        if (k_table[i].type == wtype) return &k_table[i].info;
    }
    return NULL;
}

mg_dot_fn mg_dot_kernel(const mg_dot_info *info) {
    if (info->simd && mg_get_simd_level() >= 1) return info->simd;
    return info->ref;
}

size_t mg_act_row_bytes(const mg_dot_info *info, int64_t n) {
    return (size_t)(n / info->act_blck) * info->act_bytes;
}

void mg_act_quantize_row(int wtype, const float *x, void *dst, int64_t n) {
    switch (wtype) {
    case MG_F32: case MG_F16: case MG_BF16:
        memcpy(dst, x, (size_t)n * sizeof(float));
        return;
    case MG_Q4_1: case MG_Q5_1: {
        mg_block_q8_1x *y = dst;
        for (int64_t i = 0; i < n / MG_QK; i++) {
            mg_block_q8_0 b;
            mg_quantize_row_q8_0(x + i * MG_QK, &b, MG_QK);
            int sum = 0;
            for (int j = 0; j < MG_QK; j++) sum += b.qs[j];
            y[i].d = f16(b.d);
            y[i].s = y[i].d * (float)sum;
            memcpy(y[i].qs, b.qs, MG_QK);
        }
        return;
    }
    case MG_Q4_0: case MG_Q5_0: case MG_Q8_0: case MG_IQ4_NL:
        mg_quantize_row_q8_0(x, dst, n);
        return;
    default: /* K-quants and IQ4_XS */
        mg_quantize_row_q8_K(x, dst, n);
        return;
    }
}

/* ---- exported ---- */

int mg_vec_dot(int type, int64_t n, const void *w, const void *act, float *out) {
    const mg_dot_info *info = mg_dot_lookup(type);
    if (!info) return MG_EUNSUPPORTED;
    if (n <= 0 || n % info->blck) return MG_ESIZE;
    mg_dot_kernel(info)(n, w, act, 0, 1, out);
    return MG_OK;
}

size_t mg_act_bytes(int type, int64_t n) {
    const mg_dot_info *info = mg_dot_lookup(type);
    if (!info || n <= 0 || n % info->blck) return 0;
    return mg_act_row_bytes(info, n);
}

int mg_quantize_act(int type, const float *x, void *dst, int64_t n) {
    const mg_dot_info *info = mg_dot_lookup(type);
    if (!info) return MG_EUNSUPPORTED;
    if (n <= 0 || n % info->blck) return MG_ESIZE;
    mg_act_quantize_row(type, x, dst, n);
    return MG_OK;
}
