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
    float s = 0.0f, lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, summ = 0.0f;
    for (int64_t i = 0; i < n / MG_QK; i++) {
        const uint8_t *b = (const uint8_t *)w + (size_t)i * wbytes;
        int8_t q[MG_QK];
        dec(b, q);
        if (affine) { /* llama.cpp's order (ggml_vec_dot_q4_1/q5_1_q8_1, AVX2): 8 lanes + a min chain */
            const mg_block_q8_1x *y = (const mg_block_q8_1x *)a + i;
            const float dd = f16(rd16(b)) * y->d;
            for (int j = 0; j < 8; j++) lane[j] = fmaf((float)idot(q + 4 * j, y->qs + 4 * j, 4), dd, lane[j]);
            summ = fmaf(f16(rd16(b + 2)), y->s, summ);
        } else {
            const mg_block_q8_0s *y = (const mg_block_q8_0s *)a + i;
            s += (float)idot(q, y->qs, MG_QK) * (f16(rd16(b)) * y->d);
        }
    }
    if (affine) return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7])) + summ;
    return s;
}

/* Q4_0 and IQ4_NL in llama.cpp's order for them (its repacked 8-row kernels, used for every such matrix of
 * n_out % 8 == 0 on AVX2): per block the exact integer dot, one chain acc = fma(isum, d_w d_a, acc); activations
 * mg_block_q8_0s */
static float ref_chain32(int64_t n, const void *w, const void *a, void (*dec)(const uint8_t *, int8_t *)) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n / MG_QK; i++) {
        const uint8_t *b = (const uint8_t *)w + (size_t)i * 18;
        const mg_block_q8_0s *y = (const mg_block_q8_0s *)a + i;
        int8_t q[MG_QK];
        dec(b, q);
        acc = fmaf((float)idot(q, y->qs, MG_QK), f16(rd16(b)) * y->d, acc);
    }
    return acc;
}
static float ref_q4_0(int64_t n, const void *w, const void *a) { return ref_chain32(n, w, a, dec_q4_0); }
static float ref_q4_1(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 20, a, dec_q4_1, 1); }
static float ref_q5_0(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 22, a, dec_q5_0, 0); }
static float ref_q5_1(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 24, a, dec_q5_1, 1); }
static float ref_q8_0(int64_t n, const void *w, const void *a) { return ref_blocks32(n, w, 34, a, dec_q8_0, 0); }
static float ref_iq4_nl(int64_t n, const void *w, const void *a) { return ref_chain32(n, w, a, dec_iq4_nl); }

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
/* ggml's 8-lane sum order: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) */
static float hsum8_ref(const float l[8]) { return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])); }

/* Q5_K in llama.cpp's AVX2 order (ggml_vec_dot_q5_K_q8_K as compiled): per super-block lane j (j < 8) gets the
 * exact sum over the 8 sub-blocks of sc * (the 4 products at elements 4j..4j+3), acc_j = fma(lane_j, d_y d,
 * acc_j); the exact min sum goes to summs = fma(imin, -(d_y dmin), summs); result hsum8(acc) + summs. */
static float ref_q5_K(int64_t n, const void *w, const void *a) {
    const mg_block_q8_K *y = a;
    float acc[8] = {0}, summs = 0.0f;
    for (int64_t i = 0; i < n / MG_QK_K; i++) {
        kdec k;
        dec_q5_K((const uint8_t *)w + (size_t)i * 176, &k);
        int lane[8] = {0}, imin = 0;
        for (int sb = 0; sb < 8; sb++)
            for (int j = 0; j < 8; j++) lane[j] += k.sc[2 * sb] * idot(k.q + 32 * sb + 4 * j, y[i].qs + 32 * sb + 4 * j, 4);
        for (int g = 0; g < 16; g++) imin += k.m[g] * y[i].bsums[g];
        float dd = y[i].d * k.d, dm = -(y[i].d * k.dmin);
        for (int j = 0; j < 8; j++) acc[j] = fmaf((float)lane[j], dd, acc[j]);
        summs = fmaf((float)imin, dm, summs);
    }
    return hsum8_ref(acc) + summs;
}
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
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p)); /* one load */
    v = _mm256_srlv_epi32(v, _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0)); /* high lane: the high nibbles */
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
MG_TARGET_AVX2 static inline float act_s_q8_0(const mg_block_q8_0s *y) { (void)y; return 0.0f; }
MG_TARGET_AVX2 static inline float act_s_q8_1x(const mg_block_q8_1x *y) { return y->s; }
#define W_MIN_NONE(x) 0.0f
#define W_MIN(x) f16c((x)->m)

/* 4 float accumulators -> their 4 horizontal sums (lane k = sum of v[k]), by one fixed addition tree.  Each
 * output lane depends on its own input only, so a sum never depends on which other accumulators share the call:
 * every kernel below reduces through this, for any number of rows or tokens. */
MG_TARGET_AVX2 static inline __m128 hsum8x4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    /* ggml's order for each: x_i = l_i + l_{i+4}, then (x0 + x2) + (x1 + x3) (llama.cpp's AVX2 hsum; the same
     * bits as hsum8, so results stay bit-identical with llama.cpp's dots) */
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v0), _mm256_extractf128_ps(v0, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(v1), _mm256_extractf128_ps(v1, 1));
    __m128 c = _mm_add_ps(_mm256_castps256_ps128(v2), _mm256_extractf128_ps(v2, 1));
    __m128 d = _mm_add_ps(_mm256_castps256_ps128(v3), _mm256_extractf128_ps(v3, 1));
    __m128 u = _mm_add_ps(_mm_unpacklo_ps(a, b), _mm_unpackhi_ps(a, b)); /* a0+a2 b0+b2 a1+a3 b1+b3 */
    __m128 v = _mm_add_ps(_mm_unpacklo_ps(c, d), _mm_unpackhi_ps(c, d));
    return _mm_add_ps(_mm_movelh_ps(u, v), _mm_movehl_ps(v, u));
}

/* The sums of up to 4 accumulators into out[0..cnt) */
MG_TARGET_AVX2 static inline void store_sums(const __m256 *acc, int cnt, float *out) {
    const __m256 z = _mm256_setzero_ps();
    __m128 r = hsum8x4(acc[0], cnt > 1 ? acc[1] : z, cnt > 2 ? acc[2] : z, cnt > 3 ? acc[3] : z);
    if (cnt == 4) {
        _mm_storeu_ps(out, r);
    } else {
        float t[4];
        _mm_storeu_ps(t, r);
        for (int k = 0; k < cnt; k++) out[k] = t[k];
    }
}

#ifndef SHORT_ROW_BYTES
#define SHORT_ROW_BYTES 512 /* rows up to this long go 4 per pass (e.g. MLA's per-head W_UK / W_UV rows) */
#endif
#ifndef PF_BYTES
#define PF_BYTES 4096 /* decode kernels prefetch the weight stream this many bytes ahead of the rows they read */
#endif

/* prefetch hint for the cache lines of [p, p + n) below end (a hint: never faults, p may lie past the matrix) */
MG_TARGET_AVX2 static inline void prefetch_below(uintptr_t p, size_t n, uintptr_t end) {
    for (size_t o = 0; o < n && p + o < end; o += 64) _mm_prefetch((const char *)(p + o), _MM_HINT_T0);
}

/* rows_<name>: nrows weight rows (row r at w + r * rb) against one activation row, 2 rows at a time through
 * kern(nb, w, rb, R, act, out).  Two rows per pass, each pass prefetching PF_BYTES ahead, measured best for
 * streaming from DRAM with 2 threads (V2-Lite shapes, paired runs: +10-20 % GB/s over 4 rows per pass with the
 * rows 2 groups ahead, +9-12 % decode): the demand stream stays nearly sequential and the prefetches land in L1 just
 * before use.  The arithmetic per row never depends on R, so results do not change. */
#define ROWS_KERNEL(name, kern, blck)                                                                        \
    MG_TARGET_AVX2 static void name(int64_t n, const void *w, size_t rb, int64_t nrows, const void *act, float *y) { \
        const char *wp = w;                                                                                  \
        uintptr_t end = UINTPTR_MAX; /* prefetch past the call's rows too: the next work item's (measured) */ \
        int64_t r = 0;                                                                                       \
        if (rb <= SHORT_ROW_BYTES) /* short rows: 4 per pass amortize the per-pass setup and sums */          \
            for (; r + 4 <= nrows; r += 4) kern(n / (blck), wp + (size_t)r * rb, rb, 4, act, y + r, end);    \
        for (; r + 2 <= nrows; r += 2) kern(n / (blck), wp + (size_t)r * rb, rb, 2, act, y + r, end);        \
        if (r < nrows) kern(n / (blck), wp + (size_t)r * rb, rb, 1, act, y + r, end);                        \
    }

/* *p in all 8 lanes as a vector broadcast from memory (a load, no ALU uop), kept a vector: GCC would otherwise turn
 * the product of two such splats into a scalar multiply and a register broadcast, one more uop on a busy port */
MG_TARGET_AVX2 static inline __m256 bcast_ps(const float *p) {
    __m256 v = _mm256_broadcast_ss(p);
    __asm__("" : "+x"(v));
    return v;
}

/* 8 int32 sums of 4 products q . y of a weight block q and an activation block y (|y| = yabs), exact.
 * W: any signed weights (Q8_0 may hold -128: |q| goes first); S: signed weights that never hold -128 (|y| is
 * shared by every weight row); U: unsigned weights (Q4_1/Q5_1 nibbles, 0..31). */
MG_TARGET_AVX2 static inline __m256i idot32_W(__m256i q, __m256i y, __m256i yabs) {
    (void)yabs;
    return dot_i8_quads(y, q);
}
MG_TARGET_AVX2 static inline __m256i idot32_S(__m256i q, __m256i y, __m256i yabs) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(yabs, _mm256_sign_epi8(q, y)), _mm256_set1_epi16(1));
}
MG_TARGET_AVX2 static inline __m256i idot32_U(__m256i q, __m256i y, __m256i yabs) {
    (void)yabs;
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1));
}

/* 32-element-block kernel over R weight rows (row r at w + r * rb) x M activation rows (row t at a + t * stride),
 * R * M <= 8; out[r * M + t] = sum_i d_w d_a (q_w . q_a) (+ m_w s_a for the affine Q4_1/Q5_1 with Q8_1-style
 * activations AT).  One 8-lane accumulator per (row, activation), the min terms into summ in block order; the sums
 * through hsum8x4, so per (row, activation) the arithmetic never depends on R or M.  Decode (M = 1) prefetches
 * the weight stream PF_BYTES ahead, 8 blocks at a time. */
#define Q8_KERN(name, WT, AT, unpack, ACT_S, WMIN, MODE)                                                      \
    MG_TARGET_AVX2 static inline __attribute__((always_inline)) void name##_step(                              \
        const uint8_t *w, size_t rb, int R, const char *a, size_t stride, int M, int64_t i, __m256 *acc, float *summ) { \
        __m256i ya[8], yabs[8];                                                                              \
        float as[8];                                                                                         \
        for (int t = 0; t < M; t++) {                                                                        \
            const AT *y = (const AT *)(const void *)(a + (size_t)t * stride) + i;                            \
            ya[t] = load256(y->qs);                                                                          \
            yabs[t] = _mm256_sign_epi8(ya[t], ya[t]);                                                        \
            as[t] = ACT_S(y);                                                                                \
            (void)as[t];                                                                                     \
        }                                                                                                    \
        for (int r = 0; r < R; r++) {                                                                        \
            const WT *x = (const WT *)(const void *)(w + (size_t)r * rb) + i;                                \
            __m256i q = unpack(x);                                                                           \
            __m256 d = _mm256_set1_ps(f16c(x->d)); /* d_w d_a as a vector product: the same float */         \
            float m = WMIN(x);                                                                               \
            (void)m;                                                                                         \
            for (int t = 0; t < M; t++) {                                                                    \
                const AT *yt = (const AT *)(const void *)(a + (size_t)t * stride) + i; /* its f32 d, loaded */  \
                acc[r * M + t] = _mm256_fmadd_ps(_mm256_mul_ps(d, bcast_ps(&yt->d)),                          \
                                                 _mm256_cvtepi32_ps(idot32_##MODE(q, ya[t], yabs[t])), acc[r * M + t]); \
                summ[r * M + t] = fmaf(m, as[t], summ[r * M + t]); /* llama.cpp's compiled min chain */    \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    MG_TARGET_AVX2 static inline __attribute__((always_inline)) void name(int64_t nb, const uint8_t *w, size_t rb, \
                                                                          int R, const char *a, size_t stride, \
                                                                          int M, float *out, uintptr_t pf_end) { \
        __m256 acc[8];                                                                                       \
        float summ[8];                                                                                       \
        for (int k = 0; k < 8; k++) {                                                                        \
            acc[k] = _mm256_setzero_ps();                                                                    \
            summ[k] = 0.0f;                                                                                  \
        }                                                                                                    \
        uintptr_t pf = (uintptr_t)w + PF_BYTES;                                                              \
        const size_t pf_step = (size_t)R * sizeof(WT) * 8;                                                   \
        for (int64_t i = 0; i < nb; i++) {                                                                   \
            if (M == 1 && (i & 7) == 0) {                                                                    \
                prefetch_below(pf, pf_step, pf_end);                                                         \
                pf += pf_step;                                                                               \
            }                                                                                                \
            name##_step(w, rb, R, a, stride, M, i, acc, summ);                                               \
        }                                                                                                    \
        store_sums(acc, R * M < 4 ? R * M : 4, out);                                                         \
        if (R * M > 4) store_sums(acc + 4, R * M - 4, out + 4);                                              \
        for (int k = 0; k < R * M; k++) out[k] += summ[k];                                                   \
    }                                                                                                        \
    MG_TARGET_AVX2 static inline __attribute__((always_inline)) void name##_tile(int64_t nb, const void *w,    \
                                                                                 const char *a, size_t stride, \
                                                                                 int M, float *s) {          \
        name(nb, w, 0, 1, a, stride, M, s, 0);                                                               \
    }                                                                                                        \
    MG_TARGET_AVX2 static inline __attribute__((always_inline)) void name##_rows(int64_t nb, const void *w,    \
                                                                                 size_t rb, int R,           \
                                                                                 const void *act, float *y,  \
                                                                                 uintptr_t pf_end) {         \
        name(nb, w, rb, R, act, 0, 1, y, pf_end);                                                            \
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

/* as MULTI_TILES, 8 activation rows at a time (kernels whose tile takes M <= 8) */
#define MULTI_TILES8(name, tile, blck)                                                                       \
    MG_TARGET_AVX2 static void name(int64_t n, const void *w, const void *a, size_t a_stride, int nt, float *s) { \
        const char *ap = a;                                                                                  \
        for (int t = 0; t < nt; t += 8) {                                                                    \
            const char *at = ap + (size_t)t * a_stride;                                                      \
            switch (nt - t < 8 ? nt - t : 8) {                                                               \
            case 8: tile(n / (blck), w, at, a_stride, 8, s + t); break;                                      \
            case 7: tile(n / (blck), w, at, a_stride, 7, s + t); break;                                      \
            case 6: tile(n / (blck), w, at, a_stride, 6, s + t); break;                                      \
            case 5: tile(n / (blck), w, at, a_stride, 5, s + t); break;                                      \
            case 4: tile(n / (blck), w, at, a_stride, 4, s + t); break;                                      \
            case 3: tile(n / (blck), w, at, a_stride, 3, s + t); break;                                      \
            case 2: tile(n / (blck), w, at, a_stride, 2, s + t); break;                                      \
            default: tile(n / (blck), w, at, a_stride, 1, s + t); break;                                     \
            }                                                                                                \
        }                                                                                                    \
    }

#define Q80(name, WT, unpack, mode) Q8_KERN(name, WT, mg_block_q8_0s, unpack, act_s_q8_0, W_MIN_NONE, mode)
#define Q81(name, WT, unpack, mode) Q8_KERN(name, WT, mg_block_q8_1x, unpack, act_s_q8_1x, W_MIN, mode)
Q81(k_q4_1, mg_block_q4_1, unpack_q4_1, U)
Q80(k_q5_0, mg_block_q5_0, unpack_q5_0, S)
Q81(k_q5_1, mg_block_q5_1, unpack_q5_1, U)
Q80(k_q8_0, mg_block_q8_0, unpack_q8_0, W)
MULTI_TILES8(multi_avx_q4_1, k_q4_1_tile, MG_QK)
MULTI_TILES8(multi_avx_q5_0, k_q5_0_tile, MG_QK)
MULTI_TILES8(multi_avx_q5_1, k_q5_1_tile, MG_QK)
MULTI_TILES8(multi_avx_q8_0, k_q8_0_tile, MG_QK)
ROWS_KERNEL(rows_avx_q4_1, k_q4_1_rows, MG_QK)
ROWS_KERNEL(rows_avx_q5_0, k_q5_0_rows, MG_QK)
ROWS_KERNEL(rows_avx_q5_1, k_q5_1_rows, MG_QK)
ROWS_KERNEL(rows_avx_q8_0, k_q8_0_rows, MG_QK)

/* the 4 bytes at p in every 32-bit lane (one load, no ALU work) */
MG_TARGET_AVX2 static inline __m256i bcast32(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Q4_0 kernel over R <= 8 weight rows (row r at w + r * rb) x M <= 4 activation rows (row t at a + t * stride, in
 * mg_block_q8_0s blocks); out[r * ors + t].  llama.cpp's repacked-Q4_0 arithmetic (see ref_q4_0): per output a
 * chain acc = fma(isum, d_w d_a, acc) over blocks, isum the exact block dot.  The lanes are the weight rows: per
 * block the 16 packed bytes of the 8 rows are transposed in registers (T[k], lane r = dword k of row r: low
 * nibbles elements 4k..4k+3, high nibbles 16+4k..), so one maddubs multiplies 4 elements of all 8 rows with 4
 * broadcast activations, and the integer sums need no horizontal adds.  Unsigned nibbles times q: the pair sums
 * (<= 2 * 15 * 127) of all 8 maddubs add up exactly in int16 (<= 30480); minus s8 = 8 sum(q) gives isum.  Rows
 * past R repeat row R - 1 (their lanes are dropped).  Decode (M == 1) prefetches the next 8 rows as it goes. */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q40_kern(int64_t nb, const uint8_t *w, size_t rb, int R,
                                                                        const char *a, size_t stride, int M,
                                                                        float *out, size_t ors, uintptr_t pf_end) {
    const uint8_t *p[8];
    for (int r = 0; r < 8; r++) p[r] = w + (size_t)(r < R ? r : R - 1) * rb + offsetof(mg_block_q4_0, qs);
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
    const size_t pf_step = 8 * sizeof(mg_block_q4_0);
    uintptr_t pf = (uintptr_t)w + 8 * rb;
    for (int64_t i = 0; i < nb; i++, pf += pf_step) {
        if (M == 1) prefetch_below(pf, pf_step, pf_end);
        const size_t off = (size_t)i * sizeof(mg_block_q4_0);
        __m256i y0 = _mm256_loadu2_m128i((const __m128i *)(const void *)(p[4] + off), (const __m128i *)(const void *)(p[0] + off));
        __m256i y1 = _mm256_loadu2_m128i((const __m128i *)(const void *)(p[5] + off), (const __m128i *)(const void *)(p[1] + off));
        __m256i y2 = _mm256_loadu2_m128i((const __m128i *)(const void *)(p[6] + off), (const __m128i *)(const void *)(p[2] + off));
        __m256i y3 = _mm256_loadu2_m128i((const __m128i *)(const void *)(p[7] + off), (const __m128i *)(const void *)(p[3] + off));
        __m256i lo01 = _mm256_unpacklo_epi32(y0, y1), hi01 = _mm256_unpackhi_epi32(y0, y1);
        __m256i lo23 = _mm256_unpacklo_epi32(y2, y3), hi23 = _mm256_unpackhi_epi32(y2, y3);
        __m256i T[4] = {_mm256_unpacklo_epi64(lo01, lo23), _mm256_unpackhi_epi64(lo01, lo23),
                        _mm256_unpacklo_epi64(hi01, hi23), _mm256_unpackhi_epi64(hi01, hi23)};
        __m256i L[4], H[4];
        for (int k = 0; k < 4; k++) {
            L[k] = _mm256_and_si256(T[k], m4);
            H[k] = _mm256_and_si256(_mm256_srli_epi16(T[k], 4), m4);
        }
        /* the 8 rows' scales (f16 at 2 bytes before qs) */
        uint64_t d03 = 0, d47 = 0;
        for (int r = 0; r < 4; r++) { /* in integer registers (the empty asm keeps GCC from vectorizing this) */
            d03 |= (uint64_t)rd16(p[r] + off - 2) << (16 * r);
            d47 |= (uint64_t)rd16(p[r + 4] + off - 2) << (16 * r);
            __asm__("" : "+r"(d03), "+r"(d47));
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_set_epi64x((long long)d47, (long long)d03));
        for (int t = 0; t < M; t++) {
            const mg_block_q8_0s *y = (const mg_block_q8_0s *)(const void *)(a + (size_t)t * stride) + i;
            __m256i s16 = _mm256_maddubs_epi16(L[0], bcast32(y->qs));
            for (int k = 1; k < 4; k++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(L[k], bcast32(y->qs + 4 * k)));
            for (int k = 0; k < 4; k++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(H[k], bcast32(y->qs + 16 + 4 * k)));
            __m256i isum = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(y->s8));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(y->d)), acc[t]);
        }
    }
    for (int t = 0; t < M; t++) {
        float l8[8];
        _mm256_storeu_ps(l8, acc[t]);
        for (int r = 0; r < R; r++) out[(size_t)r * ors + t] = l8[r];
    }
}

/* rows_avx_q4_0: decode, 8 rows per pass */
MG_TARGET_AVX2 static void rows_avx_q4_0(int64_t n, const void *w, size_t rb, int64_t nrows, const void *act, float *y) {
    const uint8_t *wp = w;
    for (int64_t r = 0; r < nrows; r += 8) {
        int R = nrows - r < 8 ? (int)(nrows - r) : 8;
        q40_kern(n / MG_QK, wp + (size_t)r * rb, rb, R, act, 0, 1, y + r, 1, UINTPTR_MAX);
    }
}

/* rowtile_avx_q4_0: nrows <= 8 rows x nt <= 8 tokens, s[r * nt + t], 4 tokens per pass */
MG_TARGET_AVX2 static void rowtile_avx_q4_0(int64_t n, const void *w, size_t rb, int nrows, const void *a, size_t stride,
                                            int nt, float *s) {
    const char *ap = a;
    for (int t = 0; t < nt; t += 4) {
        const char *at = ap + (size_t)t * stride;
        switch (nt - t < 4 ? nt - t : 4) {
        case 4: q40_kern(n / MG_QK, w, rb, nrows, at, stride, 4, s + t, (size_t)nt, 0); break;
        case 3: q40_kern(n / MG_QK, w, rb, nrows, at, stride, 3, s + t, (size_t)nt, 0); break;
        case 2: q40_kern(n / MG_QK, w, rb, nrows, at, stride, 2, s + t, (size_t)nt, 0); break;
        default: q40_kern(n / MG_QK, w, rb, nrows, at, stride, 1, s + t, (size_t)nt, 0); break;
        }
    }
}

/* multi_avx_q4_0: one row x nt tokens (the single dot, as a one-row tile) */
MG_TARGET_AVX2 static void multi_avx_q4_0(int64_t n, const void *w, const void *a, size_t a_stride, int nt, float *s) {
    for (int t = 0; t < nt; t += 8) rowtile_avx_q4_0(n, w, 0, 1, (const char *)a + (size_t)t * a_stride, a_stride, nt - t < 8 ? nt - t : 8, s + t);
}

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

/* an empty asm statement that takes v in and out of a vector register: the compiler cannot move v's additions
 * across it (integer sums are exact in any order, and GCC's reassociation would otherwise turn a chain of
 * per-chunk sums into a tree that keeps every product alive at once and spills them to the stack) */
#define MG_IN_REG(v) __asm__("" : "+x"(v))

/* int16 lane j of v (the same in both 128-bit lanes) broadcast to all 16 lanes */
MG_TARGET_AVX2 static inline __m256i pick16(__m256i v, int j) {
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)((2 * j) | ((2 * j + 1) << 8))));
}

/* Q4_K / Q5_K scales: the 16 bytes at blk + 4 (scales[12] and 4 bytes after them, ignored) -> 16 bytes: the 8
 * six-bit scales (lanes 0..7) and the 8 six-bit mins (lanes 8..15) (ggml's get_scale_min_k4, in SIMD).  With u0,
 * u1, u2 the three little-endian words of scales[12]:  scales 0..3 = u0 & 0x3f, scales 4..7 = (u2 & 0x0f) |
 * ((u0 >> 2) & 0x30), mins 0..3 = u1 & 0x3f, mins 4..7 = ((u2 >> 4) & 0x0f) | ((u1 >> 2) & 0x30), per byte. */
MG_TARGET_AVX2 static inline __m128i k4_scale_bytes(const uint8_t *blk) {
    __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)(blk + 4));
    __m128i a = _mm_shuffle_epi32(raw, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */
    __m128i b = _mm_shuffle_epi32(raw, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */
    a = _mm_and_si128(_mm_srlv_epi32(a, _mm_set_epi32(4, 0, 0, 0)), _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
    b = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set_epi32(0x30303030, 0, 0x30303030, 0));
    return _mm_or_si128(a, b);
}

/* the same as 16 int16 */
MG_TARGET_AVX2 static inline __m256i k4_scales_mins(const uint8_t *blk) { return _mm256_cvtepu8_epi16(k4_scale_bytes(blk)); }

/* Q4_K follows llama.cpp's AVX2 arithmetic (its repacked Q4_K GEMV, used for every Q4_K matrix there): per
 * output, per super-block, the exact integer sums isum = sum_c sc_c (q . y)_c and imin = mins . bsums feed two
 * scalar FMA chains, acc = fma(isum, d_y d, acc) and accm = fma(imin, d_y dmin, accm); the result is acc - accm.
 * q4k_kern keeps up to 4 outputs' chains in the lanes of one vector (lane k: acc of output k, lane k + n/2 or
 * k + 4: its accm), each lane the same bits as a scalar fmaf chain. */

/* (a, b) -> (a0+a1, a2+a3, b0+b1, b2+b3 | the same of the high halves): hadd_epi32 through two float
 * shuffles and an add, off the one port that both hadd and the integer multiplies use on AMD Zen */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) __m256i hpair32(__m256i a, __m256i b) {
    __m256 x = _mm256_castsi256_ps(a), y = _mm256_castsi256_ps(b);
    return _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(x, y, 0x88)),
                            _mm256_castps_si256(_mm256_shuffle_ps(x, y, 0xDD)));
}

/* 4 vectors of 8 int32 -> their 4 sums (exact) */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) __m128i hsum32x4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i z = hpair32(hpair32(a, b), hpair32(c, d)); /* lane k: half of sum k, lane 4 + k: the other half */
    return _mm_add_epi32(_mm256_castsi256_si128(z), _mm256_extracti128_si256(z, 1));
}

/* 8 vectors of 8 int32 -> their 8 sums (exact) */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) __m256i hsum32x8(const __m256i *v) {
    __m256i lo = hpair32(hpair32(v[0], v[1]), hpair32(v[2], v[3]));
    __m256i hi = hpair32(hpair32(v[4], v[5]), hpair32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
}

/* IQ4_NL kernel over R weight rows (row r at w + r * rb) x M activation rows (row t at a + t * stride), R * M <= 8;
 * out[r * M + t].  llama.cpp's repacked-IQ4_NL order (see ref_iq4_nl): per output a chain acc = fma(isum, d_w d_a,
 * acc).  Per block every output's 8 lanes of exact 4-product sums are reduced together (hsum32x8: lane k = output
 * k's isum), so one FMA advances all chains.  Decode (M == 1, 8 rows per pass) prefetches the next 8 rows. */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void iq4nl_kern(int64_t nb, const uint8_t *w, size_t rb,
                                                                          int R, const char *a, size_t stride, int M,
                                                                          float *out, uintptr_t pf_end) {
    const int n = R * M;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    uintptr_t pf = (uintptr_t)w + 8 * rb; /* decode passes read 8 rows at once: prefetch the next 8 as they go */
    const size_t pf_step = 8 * sizeof(mg_block_iq4_nl);
    for (int64_t i = 0; i < nb; i++, pf += pf_step) {
        if (M == 1) prefetch_below(pf, pf_step, pf_end);
        const mg_block_q8_0s *y[8];
        __m256i ya[8], yabs[8], v[8];
        for (int t = 0; t < M; t++) {
            y[t] = (const mg_block_q8_0s *)(const void *)(a + (size_t)t * stride) + i;
            ya[t] = load256(y[t]->qs);
            yabs[t] = _mm256_sign_epi8(ya[t], ya[t]);
        }
        for (int k = n; k < 8; k++) v[k] = _mm256_setzero_si256();
        uint64_t d03 = 0, d47 = 0; /* the rows' scales (f16), lane r */
        for (int r = 0; r < R; r++) {
            const mg_block_iq4_nl *x = (const mg_block_iq4_nl *)(const void *)(w + (size_t)r * rb) + i;
            __m256i q = unpack_iq4_nl(x);
            if (r < 4) d03 |= (uint64_t)x->d << (16 * r); else d47 |= (uint64_t)x->d << (16 * (r - 4));
            for (int t = 0; t < M; t++)
                v[r * M + t] = _mm256_madd_epi16(_mm256_maddubs_epi16(yabs[t], _mm256_sign_epi8(q, ya[t])), ones);
        }
        __m256 dd; /* lane k = r * M + t: d_w(r) * d_a(t) */
        if (M == 1) {
            dd = _mm256_mul_ps(_mm256_cvtph_ps(_mm_set_epi64x((long long)d47, (long long)d03)), _mm256_broadcast_ss(&y[0]->d));
        } else {
            float da[8];
            for (int t = 0; t < 8; t++) da[t] = t < M ? y[t]->d : 0.0f;
            dd = _mm256_mul_ps(_mm256_set1_ps(f16c((uint16_t)d03)), _mm256_loadu_ps(da));
        }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hsum32x8(v)), dd, acc);
    }
    float l8[8];
    _mm256_storeu_ps(l8, acc);
    for (int k = 0; k < n; k++) out[k] = l8[k];
}

MG_TARGET_AVX2 static void rows_avx_iq4_nl(int64_t n, const void *w, size_t rb, int64_t nrows, const void *act, float *y) {
    const uint8_t *wp = w;
    for (int64_t r = 0; r < nrows; r += 8) {
        int R = nrows - r < 8 ? (int)(nrows - r) : 8;
        iq4nl_kern(n / MG_QK, wp + (size_t)r * rb, rb, R, act, 0, 1, y + r, UINTPTR_MAX);
    }
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void iq4_nl_tile(int64_t nb, const void *w, const char *a,
                                                                           size_t stride, int M, float *s) {
    iq4nl_kern(nb, w, 0, 1, a, stride, M, s, 0);
}
MULTI_TILES8(multi_avx_iq4_nl, iq4_nl_tile, MG_QK)

/* Q4_K / Q5_K chunk c (elements 64c..64c+63: lo = sub-block 2c, hi = 2c+1, as unsigned codes) against M activation
 * rows: isum[t] += sc_2c (lo . y_t) + sc_2c+1 (hi . y_t), exact in int32 (sc: the 8 scales as int16, both lanes) */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void k4_chunk_sums(__m256i lo, __m256i hi, __m256i sc, int c,
                                                                             const mg_block_q8_K *const *y, int M,
                                                                             __m256i *isum) {
    __m256i sp0 = pick16(sc, 2 * c), sp1 = pick16(sc, 2 * c + 1);
    for (int t = 0; t < M; t++) {
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(y[t]->qs + 64 * c)), sp0);
        __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(y[t]->qs + 64 * c + 32)), sp1);
        isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p0, p1));
        MG_IN_REG(isum[t]);
    }
}

/* Q4_K kernel over R weight rows (row r at w + r * rb) x M activation rows (row t at a + t * stride), R * M <= 4,
 * and R == 1 or M == 1; out[r * M + t].  The decode GEMV uses M = 1 (prefetching the weight stream PF_BYTES
 * ahead), the prefill tiles R = 1.  Per (row, activation) the arithmetic is the same for every R and M.  Per
 * super-block and output: isum as 8 int32 lanes (chunk by chunk: sc_c * maddubs(q, y) pairs), imin as 8 int32
 * lanes (mins, each twice, times the 16 bsums), then all outputs' sums reduced together and one FMA advances every
 * chain (lanes: see above). */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q4k_kern(int64_t nb, const uint8_t *w, size_t rb,
                                                                        int R, const char *a, size_t stride, int M,
                                                                        float *out, uintptr_t pf_end) {
    const int n = R * M;
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m128i mins_twice = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    const __m128i d_then_dmin = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    const __m128i dx4_dmx4 = _mm_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3);
    __m128 c4 = _mm_setzero_ps(); /* n <= 2: (acc_0, acc_1, accm_0, accm_1) */
    __m256 c8 = _mm256_setzero_ps(); /* n > 2: (acc_0..3, accm_0..3) */
    uintptr_t pf = (uintptr_t)w + PF_BYTES;
    const size_t pf_step = (size_t)R * sizeof(mg_block_q4_K);
    for (int64_t i = 0; i < nb; i++, pf += pf_step) {
        if (M == 1) prefetch_below(pf, pf_step, pf_end);
        __m256i v[8]; /* v[k]: isum lanes of output k; v[4 + k]: its imin lanes */
        for (int k = 0; k < 8; k++) v[k] = _mm256_setzero_si256();
        const mg_block_q8_K *y[4];
        for (int t = 0; t < M; t++) y[t] = (const mg_block_q8_K *)(const void *)(a + (size_t)t * stride) + i;
        uint32_t dh[4] = {0, 0, 0, 0}; /* per row: d | dmin << 16 (f16) */
        for (int r = 0; r < R; r++) {
            const uint8_t *blk = w + (size_t)r * rb + (size_t)i * sizeof(mg_block_q4_K);
            memcpy(&dh[r], blk, 4);
            __m128i sb = k4_scale_bytes(blk);
            __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sb));
            __m256i mins2 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sb, mins_twice));
            __m256i isum[4];
            for (int t = 0; t < M; t++) isum[t] = _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) { /* each unpacked chunk and its two scales meet every activation row */
                __m256i q4 = load256(blk + offsetof(mg_block_q4_K, qs) + 32 * c);
                __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                k4_chunk_sums(lo, hi, sc, c, y, M, isum);
            }
            for (int t = 0; t < M; t++) {
                v[r * M + t] = isum[t];
                v[4 + r * M + t] = _mm256_madd_epi16(load256(y[t]->bsums), mins2);
            }
        }
        /* the chains' multipliers d_y d and d_y dmin (float products, as the scalar chains form them) */
        if (n <= 2) {
            __m128 h = _mm_cvtepi32_ps(hsum32x4(v[0], v[1], v[4], v[5]));
            __m128 dd;
            if (M == 1) { /* rows: (d_0, d_1, dmin_0, dmin_1) * d_y */
                __m128i hw = _mm_shufflelo_epi16(_mm_setr_epi32((int)dh[0], (int)dh[1], 0, 0), _MM_SHUFFLE(3, 1, 2, 0));
                dd = _mm_mul_ps(_mm_cvtph_ps(hw), _mm_set1_ps(y[0]->d));
            } else { /* one row, two activations: (d, d, dmin, dmin) * (d_y0, d_y1, d_y0, d_y1) */
                __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dh[0]));
                dd = _mm_mul_ps(_mm_unpacklo_ps(dw, dw), _mm_setr_ps(y[0]->d, y[1]->d, y[0]->d, y[1]->d));
            }
            c4 = _mm_fmadd_ps(h, dd, c4);
        } else {
            __m256 dd;
            if (M == 1) { /* rows: (d_0..3, dmin_0..3) * d_y */
                __m128i hw = _mm_shuffle_epi8(_mm_setr_epi32((int)dh[0], (int)dh[1], (int)dh[2], (int)dh[3]), d_then_dmin);
                dd = _mm256_mul_ps(_mm256_cvtph_ps(hw), _mm256_set1_ps(y[0]->d));
            } else { /* one row: (d x4, dmin x4) * (d_y0..3, d_y0..3) */
                __m128 dy = _mm_setr_ps(y[0]->d, y[1]->d, y[2]->d, M > 3 ? y[3]->d : 0.0f);
                __m256 dw = _mm256_cvtph_ps(_mm_shuffle_epi8(_mm_cvtsi32_si128((int)dh[0]), dx4_dmx4));
                dd = _mm256_mul_ps(dw, _mm256_set_m128(dy, dy));
            }
            c8 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hsum32x8(v)), dd, c8);
        }
    }
    float t8[8];
    if (n <= 2) {
        _mm_storeu_ps(t8, _mm_sub_ps(c4, _mm_movehl_ps(c4, c4)));
    } else {
        _mm_storeu_ps(t8, _mm_sub_ps(_mm256_castps256_ps128(c8), _mm256_extractf128_ps(c8, 1)));
    }
    for (int k = 0; k < n; k++) out[k] = t8[k];
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q4_K_tile(int64_t nb, const void *w, const char *a,
                                                                         size_t stride, int M, float *s) {
    q4k_kern(nb, w, 0, 1, a, stride, M, s, 0);
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q4_K_rows(int64_t nb, const void *w, size_t rb, int R,
                                                                         const void *act, float *y, uintptr_t pf_end) {
    q4k_kern(nb, w, rb, R, act, 0, 1, y, pf_end);
}

/* Q5_K kernel over R weight rows (row r at w + r * rb) x M activation rows (row t at a + t * stride), R * M <= 8
 * (decode: R <= 4, M = 1, prefetching the weight stream PF_BYTES ahead; prefill tiles: R = 1, M <= 8);
 * out[r * M + t].  llama.cpp's AVX2 order (see ref_q5_K): per output an 8-lane chain acc = fma(lanes, d_y d, acc)
 * of the exact integer sums, and a min chain summs = fma(imin, -(d_y dmin), summs) kept in lane k of one vector for
 * all outputs (the imin of all outputs reduced together, off the multiply ports); result hsum8(acc) + summs.  Per
 * (row, activation) the arithmetic is the same for every R and M.  The block: d, dmin, scales[12] (as Q4_K),
 * qh[32], qs[128]. */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q5k_kern(int64_t nb, const uint8_t *w, size_t rb,
                                                                        int R, const char *a, size_t stride, int M,
                                                                        float *out, uintptr_t pf_end) {
    const int n = R * M;
    const __m256i m4 = _mm256_set1_epi8(15), b16 = _mm256_set1_epi8(16);
    const __m128i mins_twice = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    __m256 summs = _mm256_setzero_ps();
    uintptr_t pf = (uintptr_t)w + PF_BYTES;
    const size_t pf_step = (size_t)R * sizeof(mg_block_q5_K);
    for (int64_t i = 0; i < nb; i++, pf += pf_step) {
        if (M == 1) prefetch_below(pf, pf_step, pf_end);
        const mg_block_q8_K *y[8];
        for (int t = 0; t < M; t++) y[t] = (const mg_block_q8_K *)(const void *)(a + (size_t)t * stride) + i;
        __m256i vmin[8]; /* per output: mins (each twice) x the 16 bsums, 8 int32 lanes */
        for (int k = n; k < 8; k++) vmin[k] = _mm256_setzero_si256();
        uint64_t dmh = 0; /* decode: the rows' dmin (f16) */
        for (int r = 0; r < R; r++) {
            const mg_block_q5_K *x = (const mg_block_q5_K *)(const void *)(w + (size_t)r * rb) + i;
            __m128i sb = k4_scale_bytes((const uint8_t *)x);
            __m256i sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sb));
            __m256i mins2 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sb, mins_twice));
            __m256i isum[8];
            for (int t = 0; t < M; t++) isum[t] = _mm256_setzero_si256();
            __m256i hb = load256(x->qh);
            for (int c = 0; c < 4; c++) { /* each unpacked chunk and its two scales meet every activation row */
                __m256i q4 = load256(x->qs + 32 * c);
                __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
                /* bit 2c of qh[l] -> +16 on element l of the low half, bit 2c+1 -> the high half */
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), b16));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), b16));
                hb = _mm256_srli_epi16(hb, 2);
                k4_chunk_sums(lo, hi, sc, c, y, M, isum);
            }
            const float dx = f16c(x->d);
            dmh |= (uint64_t)x->dmin << (16 * r);
            for (int t = 0; t < M; t++) {
                acc[r * M + t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(y[t]->d * dx), acc[r * M + t]);
                vmin[r * M + t] = _mm256_madd_epi16(load256(y[t]->bsums), mins2);
            }
        }
        /* -(d_y dmin) per output lane: (-d_y) times the rows' dmin (decode), or -dmin times the d_y (tiles) */
        if (n <= 4) {
            __m128 dm;
            if (M == 1) {
                dm = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)dmh)), _mm_set1_ps(-y[0]->d));
            } else {
                dm = _mm_mul_ps(_mm_setr_ps(y[0]->d, M > 1 ? y[1]->d : 0.0f, M > 2 ? y[2]->d : 0.0f, M > 3 ? y[3]->d : 0.0f),
                                _mm_set1_ps(-f16c((uint16_t)dmh)));
            }
            __m128 s4 = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum32x4(vmin[0], vmin[1], vmin[2], vmin[3])), dm, _mm256_castps256_ps128(summs));
            summs = _mm256_castps128_ps256(s4);
        } else { /* tiles of 5..8 activation rows (R = 1) */
            float dy[8];
            for (int t = 0; t < 8; t++) dy[t] = t < M ? y[t]->d : 0.0f;
            __m256 dm = _mm256_mul_ps(_mm256_loadu_ps(dy), _mm256_set1_ps(-f16c((uint16_t)dmh)));
            summs = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hsum32x8(vmin)), dm, summs);
        }
    }
    float sm[8];
    _mm256_storeu_ps(sm, summs);
    store_sums(acc, n < 4 ? n : 4, out);
    if (n > 4) store_sums(acc + 4, n - 4, out + 4);
    for (int k = 0; k < n; k++) out[k] += sm[k];
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q5_K_tile(int64_t nb, const void *w, const char *a,
                                                                         size_t stride, int M, float *s) {
    q5k_kern(nb, w, 0, 1, a, stride, M, s, 0);
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q5_K_rows(int64_t nb, const void *w, size_t rb, int R,
                                                                         const void *act, float *y, uintptr_t pf_end) {
    q5k_kern(nb, w, rb, R, act, 0, 1, y, pf_end);
}

ROWS_KERNEL(rows_avx_q4_K, q4_K_rows, MG_QK_K)
ROWS_KERNEL(rows_avx_q5_K, q5_K_rows, MG_QK_K)

MULTI_TILES(multi_avx_q4_K, q4_K_tile, MG_QK_K)
MULTI_TILES8(multi_avx_q5_K, q5_K_tile, MG_QK_K)

/* Q6_K kernel over R weight rows x M activation rows, R * M <= 4 (see k4_kern); out[r * M + t].  q - 32 is
 * handled as sum(sc * q * y) - 32 * sum_g(sc_g * bsums_g), exact in int32; per super-block
 * acc += (d_y d) * sumi.  The 16 scales are arranged so that pick16 of lane c gives scale 2c in the low 128-bit
 * lane (elements 0..15 of chunk c) and scale 2c+1 in the high lane (elements 16..31).  Decode (M = 1) prefetches
 * the weight stream PF_BYTES ahead. */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q6_kern(int64_t nb, const uint8_t *w, size_t rb, int R,
                                                                       const char *a, size_t stride, int M,
                                                                       float *out, uintptr_t pf_end) {
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    const __m128i even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    __m256 acc[4];
    for (int k = 0; k < 4; k++) acc[k] = _mm256_setzero_ps();
    uintptr_t pf = (uintptr_t)w + PF_BYTES;
    const size_t pf_step = (size_t)R * sizeof(mg_block_q6_K);
    for (int64_t i = 0; i < nb; i++, pf += pf_step) {
        if (M == 1) prefetch_below(pf, pf_step, pf_end);
        for (int r = 0; r < R; r++) {
            const mg_block_q6_K *x = (const mg_block_q6_K *)(const void *)(w + (size_t)r * rb) + i;
            __m128i sc8 = _mm_loadu_si128((const __m128i *)(const void *)x->scales);
            __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
            __m256i scv = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, even_odd));
            const mg_block_q8_K *y[4];
            __m256i isum[4];
            for (int t = 0; t < M; t++) {
                y[t] = (const mg_block_q8_K *)(const void *)(a + (size_t)t * stride) + i;
                isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(y[t]->bsums)), 5));
            }
            /* chunk-outer: each unpacked chunk meets every activation row, then dies */
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = x->ql + 64 * h;
                __m256i l0 = load256(ql), l1 = load256(ql + 32), qh = load256(x->qh + 32 * h);
                for (int j = 0; j < 4; j++) {
                    __m256i q;
                    switch (j) {
                    case 0: q = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)); break;
                    case 1: q = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)); break;
                    case 2: q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30)); break;
                    default: q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                                 _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)); break;
                    }
                    int c = 4 * h + j;
                    __m256i sp = pick16(scv, c);
                    for (int t = 0; t < M; t++) {
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(y[t]->qs + 32 * c)), sp));
                        MG_IN_REG(isum[t]);
                    }
                }
            }
            float dx = f16c(x->d);
            for (int t = 0; t < M; t++)
                acc[r * M + t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t]->d * dx), _mm256_cvtepi32_ps(isum[t]), acc[r * M + t]);
        }
    }
    store_sums(acc, R * M, out);
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q6_K_tile(int64_t nb, const void *w, const char *a,
                                                                         size_t stride, int M, float *s) {
    q6_kern(nb, w, 0, 1, a, stride, M, s, 0);
}

MG_TARGET_AVX2 static inline __attribute__((always_inline)) void q6_K_rows(int64_t nb, const void *w, size_t rb, int R,
                                                                         const void *act, float *y, uintptr_t pf_end) {
    q6_kern(nb, w, rb, R, act, 0, 1, y, pf_end);
}

ROWS_KERNEL(rows_avx_q6_K, q6_K_rows, MG_QK_K)

MULTI_TILES(multi_avx_q6_K, q6_K_tile, MG_QK_K)

/* IQ4_XS tile: per super-block, each pair of 32-element sub-blocks is unpacked through the code book once and
 * meets all M <= 8 activation rows (chunk-outer, as the Q4_K tile); per row sumi = sum_ib ls_ib (q . y)_ib exactly
 * in int32, then acc = fma(d_y d, sumi, acc) on one 8-lane accumulator. */
MG_TARGET_AVX2 static inline __attribute__((always_inline)) void iq4_xs_tile(int64_t nb, const void *w, const char *a,
                                                                           size_t stride, int M, float *s) {
    const mg_block_iq4_xs *x = w;
    const __m256i kv = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)mg_kvalues_iq4nl));
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc[8];
    for (int j = 0; j < M; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        uint16_t sh;
        uint32_t sl;
        memcpy(&sh, &x[i].scales_h, 2);
        memcpy(&sl, x[i].scales_l, 4);
        const mg_block_q8_K *y[8];
        __m256i sumi[8];
        for (int j = 0; j < M; j++) {
            y[j] = (const mg_block_q8_K *)(const void *)(a + (size_t)j * stride) + i;
            sumi[j] = _mm256_setzero_si256();
        }
        for (int ib = 0; ib < 8; ib += 2) { /* 32 bytes = sub-blocks ib (low lane) and ib+1 (high lane) */
            __m256i b = load256(x[i].qs + 16 * ib);
            __m256i lo = _mm256_shuffle_epi8(kv, _mm256_and_si256(b, m4));                        /* elements 0..15 */
            __m256i hi = _mm256_shuffle_epi8(kv, _mm256_and_si256(_mm256_srli_epi16(b, 4), m4)); /* 16..31 */
            __m256i q0 = _mm256_permute2x128_si256(lo, hi, 0x20); /* sub-block ib in element order */
            __m256i q1 = _mm256_permute2x128_si256(lo, hi, 0x31); /* sub-block ib+1 */
            int ls0 = (int)(((sl >> (4 * ib)) & 15) | (((sh >> (2 * ib)) & 3) << 4)) - 32;
            int ls1 = (int)(((sl >> (4 * ib + 4)) & 15) | (((sh >> (2 * ib + 2)) & 3) << 4)) - 32;
            __m256i sc0 = _mm256_set1_epi16((short)ls0), sc1 = _mm256_set1_epi16((short)ls1);
            /* q . y as |q| . (y * sign q): |q| once for all rows (code book values and Q8_K activations are
             * within +-127, so neither sign flip overflows and the pair sums stay below 2^15) */
            __m256i a0 = _mm256_sign_epi8(q0, q0), a1 = _mm256_sign_epi8(q1, q1);
            for (int j = 0; j < M; j++) {
                __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(load256(y[j]->qs + 32 * ib), q0)), sc0);
                __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(load256(y[j]->qs + 32 * ib + 32), q1)), sc1);
                sumi[j] = _mm256_add_epi32(sumi[j], _mm256_add_epi32(p0, p1));
                MG_IN_REG(sumi[j]);
            }
        }
        float dx = f16c(x[i].d);
        for (int j = 0; j < M; j++)
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(y[j]->d * dx), _mm256_cvtepi32_ps(sumi[j]), acc[j]);
    }
    store_sums(acc, M < 4 ? M : 4, s);
    if (M > 4) store_sums(acc + 4, M - 4, s + 4);
}

MULTI_TILES8(multi_avx_iq4_xs, iq4_xs_tile, MG_QK_K)

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
#define ROWS(t) rows_avx_##t
#define RTILE(t) rowtile_avx_##t
#else
#define SIMD(t) NULL
#define ROWS(t) NULL
#define RTILE(t) NULL
#endif

#define Q8_1B sizeof(mg_block_q8_1x)
#define Q8_0SB sizeof(mg_block_q8_0s)
#define Q8_KB sizeof(mg_block_q8_K)

static const struct { int type; mg_dot_info info; } k_table[] = {
    {MG_F32, {1, 4, 1, 4, multi_ref_f32, SIMD(f32), NULL, NULL}},
    {MG_F16, {1, 2, 1, 4, multi_ref_f16, SIMD(f16), NULL, NULL}},
    {MG_BF16, {1, 2, 1, 4, multi_ref_bf16, SIMD(bf16), NULL, NULL}},
    {MG_Q4_0, {MG_QK, sizeof(mg_block_q4_0), MG_QK, Q8_0SB, multi_ref_q4_0, SIMD(q4_0), ROWS(q4_0), RTILE(q4_0)}},
    {MG_Q4_1, {MG_QK, sizeof(mg_block_q4_1), MG_QK, Q8_1B, multi_ref_q4_1, SIMD(q4_1), ROWS(q4_1), NULL}},
    {MG_Q5_0, {MG_QK, sizeof(mg_block_q5_0), MG_QK, Q8_0SB, multi_ref_q5_0, SIMD(q5_0), ROWS(q5_0), NULL}},
    {MG_Q5_1, {MG_QK, sizeof(mg_block_q5_1), MG_QK, Q8_1B, multi_ref_q5_1, SIMD(q5_1), ROWS(q5_1), NULL}},
    {MG_Q8_0, {MG_QK, sizeof(mg_block_q8_0), MG_QK, Q8_0SB, multi_ref_q8_0, SIMD(q8_0), ROWS(q8_0), NULL}},
    {MG_IQ4_NL, {MG_QK, sizeof(mg_block_iq4_nl), MG_QK, Q8_0SB, multi_ref_iq4_nl, SIMD(iq4_nl), ROWS(iq4_nl), NULL}},
    {MG_Q2_K, {MG_QK_K, sizeof(mg_block_q2_K), MG_QK_K, Q8_KB, multi_ref_q2_K, SIMD(q2_K), NULL, NULL}},
    {MG_Q3_K, {MG_QK_K, sizeof(mg_block_q3_K), MG_QK_K, Q8_KB, multi_ref_q3_K, SIMD(q3_K), NULL, NULL}},
    {MG_Q4_K, {MG_QK_K, sizeof(mg_block_q4_K), MG_QK_K, Q8_KB, multi_ref_q4_K, SIMD(q4_K), ROWS(q4_K), NULL}},
    {MG_Q5_K, {MG_QK_K, sizeof(mg_block_q5_K), MG_QK_K, Q8_KB, multi_ref_q5_K, SIMD(q5_K), ROWS(q5_K), NULL}},
    {MG_Q6_K, {MG_QK_K, sizeof(mg_block_q6_K), MG_QK_K, Q8_KB, multi_ref_q6_K, SIMD(q6_K), ROWS(q6_K), NULL}},
    {MG_IQ4_XS, {MG_QK_K, sizeof(mg_block_iq4_xs), MG_QK_K, Q8_KB, multi_ref_iq4_xs, SIMD(iq4_xs), NULL, NULL}},
};

const mg_dot_info *mg_dot_lookup(int wtype) {
    for (size_t i = 0; i < sizeof(k_table) / sizeof(k_table[0]); i++) {
        if (k_table[i].type == wtype) return &k_table[i].info;
    }
    return NULL;
}

mg_rowtile_fn mg_rowtile_kernel(const mg_dot_info *info) {
    return info->rowtile && mg_get_simd_level() >= 1 ? info->rowtile : NULL;
}

mg_dot_fn mg_dot_kernel(const mg_dot_info *info) {
    if (info->simd && mg_get_simd_level() >= 1) return info->simd;
    return info->ref;
}

#ifndef PF_BYTES
#define PF_BYTES 4096 /* (non-x86 builds: the distance the x86 kernels use) */
#endif

void mg_gemv_rows(const mg_dot_info *info, int64_t n, const void *w, size_t row_bytes, int64_t r0, int64_t r1,
                  const void *act, float *y) {
    if (r1 <= r0) return;
    const char *w0 = (const char *)w + (size_t)r0 * row_bytes;
    if (info->rows && mg_get_simd_level() >= 1) {
        info->rows(n, w0, row_bytes, r1 - r0, act, y);
        return;
    }
    mg_dot_fn dot = mg_dot_kernel(info);
    for (int64_t r = r0; r < r1; r++) {
        /* no multi-row kernel: prefetch the row PF_BYTES ahead before each dot (a hint, never faults; the address
         * is formed as an integer, it may lie past the matrix) */
        uintptr_t ahead = (uintptr_t)w0 + (size_t)(r - r0) * row_bytes + PF_BYTES;
        for (size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch((const void *)(ahead + o), 0, 3);
        dot(n, w0 + (size_t)(r - r0) * row_bytes, act, 0, 1, y + (r - r0));
    }
}

size_t mg_act_row_bytes(const mg_dot_info *info, int64_t n) {
    return (size_t)(n / info->act_blck) * info->act_bytes;
}

void mg_act_quantize_row(int wtype, const float *x, void *dst, int64_t n) {
    switch (wtype) {
    case MG_F32: case MG_F16: case MG_BF16:
        memcpy(dst, x, (size_t)n * sizeof(float));
        return;
    case MG_Q4_1: case MG_Q5_1: { /* llama.cpp's x86 Q8_1: s = f16(amax/127 * sum(q)), the unrounded scale */
        mg_block_q8_1x *y = dst;
        for (int64_t i = 0; i < n / MG_QK; i++) {
            mg_block_q8_0 b;
            mg_quantize_row_q8_0(x + i * MG_QK, &b, MG_QK);
            int sum = 0;
            float amax = 0.0f;
            for (int j = 0; j < MG_QK; j++) {
                sum += b.qs[j];
                amax = fabsf(x[i * MG_QK + j]) > amax ? fabsf(x[i * MG_QK + j]) : amax;
            }
            y[i].d = f16(b.d);
            y[i].s = f16(mg_f32_to_f16(amax / 127.0f * (float)sum));
            memcpy(y[i].qs, b.qs, MG_QK);
        }
        return;
    }
    case MG_Q4_0: case MG_Q5_0: case MG_Q8_0: case MG_IQ4_NL: {
        mg_block_q8_0s *y = dst;
        for (int64_t i = 0; i < n / MG_QK; i++) {
            mg_block_q8_0 b;
            mg_quantize_row_q8_0(x + i * MG_QK, &b, MG_QK);
            int sum = 0;
            for (int j = 0; j < MG_QK; j++) sum += b.qs[j];
            y[i].d = f16(b.d);
            y[i].s8 = 8 * sum;
            memcpy(y[i].qs, b.qs, MG_QK);
        }
        return;
    }
    default: /* K-quants and IQ4_XS */
        mg_quantize_row_q8_K(x, dst, n);
        return;
    }
}

/* Exact integer sums of one Q5_K / IQ4_XS super-block against T Q8_K activation blocks y[t * ystride] (see vecdot.h) */
#if MG_X86
MG_TARGET_AVX2 static void kq_block_sums_avx2(const kdec *k, const mg_block_q8_K *y, int64_t ystride, int64_t T,
                                              int32_t *s1) {
    __m256i q[8], qa[8], sp[8];
    for (int c = 0; c < 8; c++) {
        q[c] = load256(k->q + 32 * c);
        qa[c] = _mm256_sign_epi8(q[c], q[c]);
        sp[c] = scale_pair(k->sc[2 * c], k->sc[2 * c + 1]);
    }
    for (int64_t t = 0; t < T; t++) {
        const mg_block_q8_K *yt = y + t * ystride;
        __m256i acc = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) /* |q| . (y * sign q): |q|, |y| <= 127, pair sums < 2^15 */
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(qa[c], _mm256_sign_epi8(load256(yt->qs + 32 * c), q[c])), sp[c]));
        __m128i v = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
        v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 1));
        s1[t] = _mm_cvtsi128_si32(v);
    }
}
#endif

int mg_kq_block_sums(int type, const void *blk, const mg_block_q8_K *y, int64_t ystride, int64_t T, int32_t *s1,
                     int32_t *s2) {
    kdec k;
    if (type == MG_Q5_K) dec_q5_K(blk, &k);
    else if (type == MG_IQ4_XS) dec_iq4_xs(blk, &k);
    else return MG_EUNSUPPORTED;
#if MG_X86
    if (mg_get_simd_level() >= 1) {
        kq_block_sums_avx2(&k, y, ystride, T, s1);
    } else
#endif
    {
        for (int64_t t = 0; t < T; t++) {
            int32_t sum = 0;
            for (int g = 0; g < 16; g++) sum += k.sc[g] * idot(k.q + 16 * g, y[t * ystride].qs + 16 * g, 16);
            s1[t] = sum;
        }
    }
    for (int64_t t = 0; t < T; t++) {
        int32_t m = 0;
        for (int g = 0; g < 16; g++) m += k.m[g] * y[t * ystride].bsums[g];
        s2[t] = m;
    }
    return MG_OK;
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
