/* quants.c - ggml quant formats: block geometry, row dequantization to float32, the simple (legacy)
 * quantizers Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, the activation quantizers Q8_0/Q8_K, and the type dispatch.
 * The K-quant and IQ4 quantizers (scale searches) live in quants_k.c.
 *
 * Blocks are read and written through byte pointers + memcpy, so `src`/`dst` need no alignment.
 * Every SIMD path performs the same float operations in the same order as its scalar reference
 * (no FMA contraction), so both produce bit-identical results; tests hold them to that.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "moe_gguf.h"
#include "internal.h"

#if MG_X86
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------ geometry ----- */

int mg_type_block_size(int type) {
    switch (type) {
    case MG_F32: case MG_F16: case MG_BF16: return 1;
    case MG_Q4_0: case MG_Q4_1: case MG_Q5_0: case MG_Q5_1: case MG_Q8_0: case MG_IQ4_NL: return MG_QK;
    case MG_Q2_K: case MG_Q3_K: case MG_Q4_K: case MG_Q5_K: case MG_Q6_K: case MG_Q8_K: case MG_IQ4_XS:
        return MG_QK_K;
    default: return 0;
    }
}

size_t mg_type_block_bytes(int type) {
    switch (type) {
    case MG_F32: return 4;
    case MG_F16: case MG_BF16: return 2;
    case MG_Q4_0: return sizeof(mg_block_q4_0);
    case MG_Q4_1: return sizeof(mg_block_q4_1);
    case MG_Q5_0: return sizeof(mg_block_q5_0);
    case MG_Q5_1: return sizeof(mg_block_q5_1);
    case MG_Q8_0: return sizeof(mg_block_q8_0);
    case MG_IQ4_NL: return sizeof(mg_block_iq4_nl);
    case MG_Q2_K: return sizeof(mg_block_q2_K);
    case MG_Q3_K: return sizeof(mg_block_q3_K);
    case MG_Q4_K: return sizeof(mg_block_q4_K);
    case MG_Q5_K: return sizeof(mg_block_q5_K);
    case MG_Q6_K: return sizeof(mg_block_q6_K);
    case MG_Q8_K: return sizeof(mg_block_q8_K);
    case MG_IQ4_XS: return sizeof(mg_block_iq4_xs);
    default: return 0;
    }
}

static inline float ld_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mg_f16_to_f32(h);
}

static inline void st_f16(uint8_t *p, float f) {
    uint16_t h = mg_f32_to_f16(f);
    memcpy(p, &h, 2);
}

/* --------------------------------------------------------- scalar dequantizers ----- */
/* Each takes `nb` blocks starting at byte pointer `s`. */

static void deq_f16(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = ld_f16(s + 2 * i);
}

static void deq_bf16(const uint8_t *s, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        y[i] = mg_bf16_to_f32(h);
    }
}

static void deq_q4_0(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q4_0), y += MG_QK) {
        const float d = ld_f16(s);
        const uint8_t *qs = s + offsetof(mg_block_q4_0, qs);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((qs[j] & 15) - 8);
            y[j + 16] = d * (float)((qs[j] >> 4) - 8);
        }
    }
}

static void deq_q4_1(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q4_1), y += MG_QK) {
        const float d = ld_f16(s), m = ld_f16(s + 2);
        const uint8_t *qs = s + offsetof(mg_block_q4_1, qs);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(qs[j] & 15) + m;
            y[j + 16] = d * (float)(qs[j] >> 4) + m;
        }
    }
}

static void deq_q5_0(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q5_0), y += MG_QK) {
        const float d = ld_f16(s);
        uint32_t qh;
        memcpy(&qh, s + offsetof(mg_block_q5_0, qh), 4);
        const uint8_t *qs = s + offsetof(mg_block_q5_0, qs);
        for (int j = 0; j < 16; j++) {
            int q0 = (int)((qs[j] & 15) | (((qh >> j) & 1u) << 4)) - 16;
            int q1 = (int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - 16;
            y[j] = d * (float)q0;
            y[j + 16] = d * (float)q1;
        }
    }
}

static void deq_q5_1(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q5_1), y += MG_QK) {
        const float d = ld_f16(s), m = ld_f16(s + 2);
        uint32_t qh;
        memcpy(&qh, s + offsetof(mg_block_q5_1, qh), 4);
        const uint8_t *qs = s + offsetof(mg_block_q5_1, qs);
        for (int j = 0; j < 16; j++) {
            unsigned q0 = (qs[j] & 15u) | (((qh >> j) & 1u) << 4);
            unsigned q1 = (qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4);
            y[j] = d * (float)q0 + m;
            y[j + 16] = d * (float)q1 + m;
        }
    }
}

static void deq_q8_0(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q8_0), y += MG_QK) {
        const float d = ld_f16(s);
        const int8_t *qs = (const int8_t *)(s + offsetof(mg_block_q8_0, qs));
        for (int j = 0; j < MG_QK; j++) y[j] = (float)qs[j] * d;
    }
}

static void deq_q8_K(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q8_K), y += MG_QK_K) {
        float d;
        memcpy(&d, s, 4);
        const int8_t *qs = (const int8_t *)(s + offsetof(mg_block_q8_K, qs));
        for (int j = 0; j < MG_QK_K; j++) y[j] = d * (float)qs[j];
    }
}

static void deq_iq4_nl(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_iq4_nl), y += MG_QK) {
        const float d = ld_f16(s);
        const uint8_t *qs = s + offsetof(mg_block_iq4_nl, qs);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)mg_kvalues_iq4nl[qs[j] & 15];
            y[j + 16] = d * (float)mg_kvalues_iq4nl[qs[j] >> 4];
        }
    }
}

static void deq_q2_K(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q2_K)) {
        const uint8_t *sc = s + offsetof(mg_block_q2_K, scales);
        const uint8_t *q = s + offsetof(mg_block_q2_K, qs);
        const float d = ld_f16(s + offsetof(mg_block_q2_K, d));
        const float dmin = ld_f16(s + offsetof(mg_block_q2_K, dmin));
        int is = 0;
        for (int n = 0; n < MG_QK_K; n += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; half++, is++) {
                    const float dl = d * (float)(sc[is] & 15), ml = dmin * (float)(sc[is] >> 4);
                    for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[16 * half + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/* the 16 signed 6-bit scales of a Q3_K block (packing: low nibbles in s[0..7], high 2 bits in s[8..11]) */
static void q3k_scales(const uint8_t *s, int out[16]) {
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (s[j] & 15) : (s[j - 8] >> 4);
        int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (lo | (hi << 4)) - 32;
    }
}

static void deq_q3_K(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q3_K)) {
        const uint8_t *hm = s + offsetof(mg_block_q3_K, hmask);
        const uint8_t *q = s + offsetof(mg_block_q3_K, qs);
        const float d_all = ld_f16(s + offsetof(mg_block_q3_K, d));
        int sc[16];
        q3k_scales(s + offsetof(mg_block_q3_K, scales), sc);
        int is = 0;
        unsigned m = 1;
        for (int n = 0; n < MG_QK_K; n += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                for (int half = 0; half < 2; half++, is++) {
                    const float dl = d_all * (float)sc[is];
                    for (int l = 0; l < 16; l++) {
                        int k = 16 * half + l;
                        int v = (int)((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4);
                        *y++ = dl * (float)v;
                    }
                }
            }
        }
    }
}

/* 6-bit scale and min of sub-block j of a Q4_K/Q5_K block */
static inline void k4_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Q4_K (has_qh = 0) and Q5_K (has_qh = 1): x = d*sc*q - dmin*m per 32-element sub-block */
static void deq_q45_K(const uint8_t *s, float *y, int64_t nb, int has_qh) {
    const size_t bytes = has_qh ? sizeof(mg_block_q5_K) : sizeof(mg_block_q4_K);
    for (int64_t i = 0; i < nb; i++, s += bytes) {
        const float d = ld_f16(s), dmin = ld_f16(s + 2);
        const uint8_t *scales = s + offsetof(mg_block_q4_K, scales);
        const uint8_t *qh = s + offsetof(mg_block_q5_K, qh);
        const uint8_t *q = s + (has_qh ? offsetof(mg_block_q5_K, qs) : offsetof(mg_block_q4_K, qs));
        for (int c = 0; c < 4; c++, q += 32) {
            int sc, m;
            k4_scale_min(2 * c, scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            k4_scale_min(2 * c + 1, scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            const unsigned u1 = 1u << (2 * c), u2 = 2u << (2 * c);
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)((q[l] & 15) + (has_qh && (qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)((q[l] >> 4) + (has_qh && (qh[l] & u2) ? 16 : 0)) - m2;
        }
    }
}

static void deq_q6_K(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q6_K)) {
        const float d = ld_f16(s + offsetof(mg_block_q6_K, d));
        const uint8_t *ql = s + offsetof(mg_block_q6_K, ql);
        const uint8_t *qh = s + offsetof(mg_block_q6_K, qh);
        const int8_t *sc = (const int8_t *)(s + offsetof(mg_block_q6_K, scales));
        for (int n = 0; n < MG_QK_K; n += 128, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = (int)((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = (int)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is + 0] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

/* signed 6-bit scale (ls - 32) of sub-block ib of the IQ4_XS block at s */
static inline int iq4xs_sub_scale(const uint8_t *s, int ib) {
    uint16_t sh;
    memcpy(&sh, s + offsetof(mg_block_iq4_xs, scales_h), 2);
    const uint8_t *sl = s + offsetof(mg_block_iq4_xs, scales_l);
    return (((sl[ib / 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)) - 32;
}

static void deq_iq4_xs(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_iq4_xs)) {
        const float d = ld_f16(s);
        const uint8_t *qs = s + offsetof(mg_block_iq4_xs, qs);
        for (int ib = 0; ib < MG_QK_K / 32; ib++, qs += 16, y += 32) {
            const float dl = d * (float)iq4xs_sub_scale(s, ib);
            for (int j = 0; j < 16; j++) {
                y[j] = dl * (float)mg_kvalues_iq4nl[qs[j] & 15];
                y[j + 16] = dl * (float)mg_kvalues_iq4nl[qs[j] >> 4];
            }
        }
    }
}

/* ----------------------------------------------------------- AVX2 dequantizers ----- */
#if MG_X86

MG_TARGET_AVX2 static void deq_f16_avx2(const uint8_t *s, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i));
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) y[i] = ld_f16(s + 2 * i);
}

/* 16 packed nibbles -> 32 bytes (low nibbles first, then high nibbles), as unsigned 0..15 */
MG_TARGET_AVX2 static inline __m256i unpack_nibbles_32(const uint8_t *qs) {
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)qs);
    __m128i lo = _mm_and_si128(b, _mm_set1_epi8(15));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15));
    return _mm256_set_m128i(hi, lo);
}

/* converts 32 signed bytes to floats, multiplies by d, stores 32 floats */
MG_TARGET_AVX2 static inline void store_i8x32_scaled(__m256i q, __m256 d, float *y) {
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
    _mm256_storeu_ps(y + 0, _mm256_mul_ps(d, f0));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(d, f1));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(d, f2));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(d, f3));
}

MG_TARGET_AVX2 static void deq_q4_0_avx2(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q4_0), y += MG_QK) {
        __m256i q = _mm256_sub_epi8(unpack_nibbles_32(s + 2), _mm256_set1_epi8(8));
        store_i8x32_scaled(q, _mm256_set1_ps(ld_f16(s)), y);
    }
}

MG_TARGET_AVX2 static void deq_q8_0_avx2(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q8_0), y += MG_QK) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(s + 2));
        store_i8x32_scaled(q, _mm256_set1_ps(ld_f16(s)), y);
    }
}

/* y[0..31] = d * float(q) - m for 32 unsigned bytes q */
MG_TARGET_AVX2 static inline void store_u8x32_affine(__m256i q, __m256 d, __m256 m, float *y) {
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
    _mm256_storeu_ps(y + 0, _mm256_sub_ps(_mm256_mul_ps(d, f0), m));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(d, f1), m));
    _mm256_storeu_ps(y + 16, _mm256_sub_ps(_mm256_mul_ps(d, f2), m));
    _mm256_storeu_ps(y + 24, _mm256_sub_ps(_mm256_mul_ps(d, f3), m));
}

MG_TARGET_AVX2 static void deq_q4_K_avx2(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q4_K)) {
        const float d = ld_f16(s), dmin = ld_f16(s + 2);
        const uint8_t *scales = s + offsetof(mg_block_q4_K, scales);
        const uint8_t *q = s + offsetof(mg_block_q4_K, qs);
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            int sc, m;
            __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)q);
            __m256i lo = _mm256_and_si256(b, _mm256_set1_epi8(15));
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(15));
            k4_scale_min(2 * c, scales, &sc, &m);
            store_u8x32_affine(lo, _mm256_set1_ps(d * (float)sc), _mm256_set1_ps(dmin * (float)m), y);
            k4_scale_min(2 * c + 1, scales, &sc, &m);
            store_u8x32_affine(hi, _mm256_set1_ps(d * (float)sc), _mm256_set1_ps(dmin * (float)m), y + 32);
        }
    }
}

/* y[0..15] = (d*sc) * float(q) for 16 signed bytes q */
MG_TARGET_AVX2 static inline void store_i8x16_scaled(__m128i q, __m256 dl, float *y) {
    _mm256_storeu_ps(y, _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)))));
}

MG_TARGET_AVX2 static void deq_q6_K_avx2(const uint8_t *s, float *y, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q6_K)) {
        const float d = ld_f16(s + offsetof(mg_block_q6_K, d));
        const uint8_t *ql = s + offsetof(mg_block_q6_K, ql);
        const uint8_t *qh = s + offsetof(mg_block_q6_K, qh);
        const int8_t *sc = (const int8_t *)(s + offsetof(mg_block_q6_K, scales));
        for (int n = 0; n < MG_QK_K; n += 128, ql += 64, qh += 32, sc += 8, y += 128) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(const void *)ql);
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 32));
            __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)qh);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m3), 4));
            for (int k = 0; k < 4; k++) {
                __m256i v = _mm256_sub_epi8(q[k], k32);
                store_i8x16_scaled(_mm256_castsi256_si128(v), _mm256_set1_ps(d * (float)sc[2 * k]), y + 32 * k);
                store_i8x16_scaled(_mm256_extracti128_si256(v, 1), _mm256_set1_ps(d * (float)sc[2 * k + 1]),
                                   y + 32 * k + 16);
            }
        }
    }
}

/* 32 lanes: 0xFF where bit `lane` of the 32-bit little-endian word at p is set */
MG_TARGET_AVX2 static inline __m256i bits_to_bytes_32(const uint8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL, 0x0202020202020202LL,
                                            0x0303030303030303LL);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)w), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL)); /* all bits but lane%8 set */
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* Q4_1 (bits 4, affine), Q5_0 (bits 5), Q5_1 (bits 5, affine); same float ops as the scalar versions */
MG_TARGET_AVX2 static void deq_legacy_avx2(const uint8_t *s, float *y, int64_t nb, int bits, int affine) {
    const size_t bytes = (size_t)(2 + 2 * affine + (bits == 5 ? 4 : 0) + MG_QK / 2);
    for (int64_t i = 0; i < nb; i++, s += bytes, y += MG_QK) {
        const uint8_t *p = s + 2 + 2 * affine;
        __m256i q;
        if (bits == 5) {
            q = _mm256_or_si256(unpack_nibbles_32(p + 4), _mm256_and_si256(bits_to_bytes_32(p), _mm256_set1_epi8(16)));
        } else {
            q = unpack_nibbles_32(p);
        }
        const __m256 d = _mm256_set1_ps(ld_f16(s));
        if (affine) { /* d*q + m, written as d*q - (-m) (exact) */
            store_u8x32_affine(q, d, _mm256_set1_ps(-ld_f16(s + 2)), y);
        } else {
            store_i8x32_scaled(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), d, y);
        }
    }
}

MG_TARGET_AVX2 static inline __m256i iq4_lookup_32(const uint8_t *qs) {
    const __m256i grid = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)mg_kvalues_iq4nl));
    return _mm256_shuffle_epi8(grid, unpack_nibbles_32(qs));
}

MG_TARGET_AVX2 static void deq_iq4_nl_avx2(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_iq4_nl), y += MG_QK)
        store_i8x32_scaled(iq4_lookup_32(s + 2), _mm256_set1_ps(ld_f16(s)), y);
}

MG_TARGET_AVX2 static void deq_iq4_xs_avx2(const uint8_t *s, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_iq4_xs)) {
        const float d = ld_f16(s);
        const uint8_t *qs = s + offsetof(mg_block_iq4_xs, qs);
        for (int ib = 0; ib < MG_QK_K / 32; ib++, qs += 16, y += 32)
            store_i8x32_scaled(iq4_lookup_32(qs), _mm256_set1_ps(d * (float)iq4xs_sub_scale(s, ib)), y);
    }
}

MG_TARGET_AVX2 static void deq_q5_K_avx2(const uint8_t *s, float *y, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(15), b16 = _mm256_set1_epi8(16);
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q5_K)) {
        const float d = ld_f16(s), dmin = ld_f16(s + 2);
        const uint8_t *scales = s + offsetof(mg_block_q5_K, scales);
        const __m256i hb = _mm256_loadu_si256((const __m256i *)(const void *)(s + offsetof(mg_block_q5_K, qh)));
        const uint8_t *q = s + offsetof(mg_block_q5_K, qs);
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            int sc, m;
            __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)q);
            /* bit 2c (low nibbles) and 2c+1 (high nibbles) of qh, moved to bit 4 */
            __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(hb, 2 * c), 4), b16);
            __m256i h2 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(hb, 2 * c + 1), 4), b16);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(b, m4), h1);
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4), h2);
            k4_scale_min(2 * c, scales, &sc, &m);
            store_u8x32_affine(lo, _mm256_set1_ps(d * (float)sc), _mm256_set1_ps(dmin * (float)m), y);
            k4_scale_min(2 * c + 1, scales, &sc, &m);
            store_u8x32_affine(hi, _mm256_set1_ps(d * (float)sc), _mm256_set1_ps(dmin * (float)m), y + 32);
        }
    }
}

/* y[0..15] = d * float(q) - m for 16 unsigned bytes q */
MG_TARGET_AVX2 static inline void store_u8x16_affine(__m128i q, __m256 d, __m256 m, float *y) {
    __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
    __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
    _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(d, f0), m));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(d, f1), m));
}

MG_TARGET_AVX2 static void deq_q2_K_avx2(const uint8_t *s, float *y, int64_t nb) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q2_K)) {
        const uint8_t *sc = s + offsetof(mg_block_q2_K, scales);
        const uint8_t *q = s + offsetof(mg_block_q2_K, qs);
        const float d = ld_f16(s + offsetof(mg_block_q2_K, d));
        const float dmin = ld_f16(s + offsetof(mg_block_q2_K, dmin));
        int is = 0;
        for (int n = 0; n < MG_QK_K; n += 128, q += 32) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)q);
            for (int shift = 0; shift < 8; shift += 2, is += 2, y += 32) {
                const __m256i v = _mm256_and_si256(_mm256_srli_epi16(b, shift), m3);
                store_u8x16_affine(_mm256_castsi256_si128(v), _mm256_set1_ps(d * (float)(sc[is] & 15)),
                                   _mm256_set1_ps(dmin * (float)(sc[is] >> 4)), y);
                store_u8x16_affine(_mm256_extracti128_si256(v, 1), _mm256_set1_ps(d * (float)(sc[is + 1] & 15)),
                                   _mm256_set1_ps(dmin * (float)(sc[is + 1] >> 4)), y + 16);
            }
        }
    }
}

MG_TARGET_AVX2 static void deq_q3_K_avx2(const uint8_t *s, float *y, int64_t nb) {
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1), four = _mm256_set1_epi8(4);
    for (int64_t i = 0; i < nb; i++, s += sizeof(mg_block_q3_K)) {
        const __m256i hm = _mm256_loadu_si256((const __m256i *)(const void *)(s + offsetof(mg_block_q3_K, hmask)));
        const uint8_t *q = s + offsetof(mg_block_q3_K, qs);
        const float d_all = ld_f16(s + offsetof(mg_block_q3_K, d));
        int sc[16];
        q3k_scales(s + offsetof(mg_block_q3_K, scales), sc);
        int is = 0, bit = 0;
        for (int n = 0; n < MG_QK_K; n += 128, q += 32) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)q);
            for (int shift = 0; shift < 8; shift += 2, bit++, is += 2, y += 32) {
                const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(b, shift), m3);
                const __m256i h = _mm256_and_si256(_mm256_srli_epi16(hm, bit), one); /* 1: no offset */
                const __m256i v = _mm256_add_epi8(_mm256_sub_epi8(lo, four), _mm256_slli_epi16(h, 2));
                store_i8x16_scaled(_mm256_castsi256_si128(v), _mm256_set1_ps(d_all * (float)sc[is]), y);
                store_i8x16_scaled(_mm256_extracti128_si256(v, 1), _mm256_set1_ps(d_all * (float)sc[is + 1]), y + 16);
            }
        }
    }
}
#endif /* MG_X86 */

int mg_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const int bs = mg_type_block_size(type);
    if (bs == 0) return MG_EUNSUPPORTED;
    if (n < 0 || n % bs != 0 || (n > 0 && (src == NULL || dst == NULL))) return MG_ESIZE;
    const uint8_t *s = (const uint8_t *)src;
    const int64_t nb = n / bs;
#if MG_X86
    if (mg_get_simd_level() >= 1) {
        switch (type) {
        case MG_F16: deq_f16_avx2(s, dst, n); return MG_OK;
        case MG_Q4_0: deq_q4_0_avx2(s, dst, nb); return MG_OK;
        case MG_Q4_1: deq_legacy_avx2(s, dst, nb, 4, 1); return MG_OK;
        case MG_Q5_0: deq_legacy_avx2(s, dst, nb, 5, 0); return MG_OK;
        case MG_Q5_1: deq_legacy_avx2(s, dst, nb, 5, 1); return MG_OK;
        case MG_Q8_0: deq_q8_0_avx2(s, dst, nb); return MG_OK;
        case MG_Q2_K: deq_q2_K_avx2(s, dst, nb); return MG_OK;
        case MG_Q3_K: deq_q3_K_avx2(s, dst, nb); return MG_OK;
        case MG_Q4_K: deq_q4_K_avx2(s, dst, nb); return MG_OK;
        case MG_Q5_K: deq_q5_K_avx2(s, dst, nb); return MG_OK;
        case MG_Q6_K: deq_q6_K_avx2(s, dst, nb); return MG_OK;
        case MG_IQ4_NL: deq_iq4_nl_avx2(s, dst, nb); return MG_OK;
        case MG_IQ4_XS: deq_iq4_xs_avx2(s, dst, nb); return MG_OK;
        default: break; /* the rest: scalar below */
        }
    }
#endif
    switch (type) {
    case MG_F32: if (n) memcpy(dst, s, (size_t)n * 4); break;
    case MG_F16: deq_f16(s, dst, n); break;
    case MG_BF16: deq_bf16(s, dst, n); break;
    case MG_Q4_0: deq_q4_0(s, dst, nb); break;
    case MG_Q4_1: deq_q4_1(s, dst, nb); break;
    case MG_Q5_0: deq_q5_0(s, dst, nb); break;
    case MG_Q5_1: deq_q5_1(s, dst, nb); break;
    case MG_Q8_0: deq_q8_0(s, dst, nb); break;
    case MG_Q8_K: deq_q8_K(s, dst, nb); break;
    case MG_IQ4_NL: deq_iq4_nl(s, dst, nb); break;
    case MG_Q2_K: deq_q2_K(s, dst, nb); break;
    case MG_Q3_K: deq_q3_K(s, dst, nb); break;
    case MG_Q4_K: deq_q45_K(s, dst, nb, 0); break;
    case MG_Q5_K: deq_q45_K(s, dst, nb, 1); break;
    case MG_Q6_K: deq_q6_K(s, dst, nb); break;
    case MG_IQ4_XS: deq_iq4_xs(s, dst, nb); break;
    default: return MG_EUNSUPPORTED;
    }
    return MG_OK;
}

/* ------------------------------------------------------ activation quantizers ----- */

/* Q8_0 file quantizer: d = amax/127, q = roundf(x/d) (round half away from zero), as ggml's reference and
 * gguf-py (mg_quantize_row).  The activation quantizer below uses llama.cpp's x86 convention instead. */
static void quant_q8_0_scalar(const float *x, uint8_t *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += MG_QK, y += sizeof(mg_block_q8_0)) {
        float amax = 0.0f;
        for (int j = 0; j < MG_QK; j++) {
            float a = fabsf(x[j]);
            if (a > amax) amax = a;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        st_f16(y, d);
        int8_t *qs = (int8_t *)(y + offsetof(mg_block_q8_0, qs));
        for (int j = 0; j < MG_QK; j++) {
            float r = roundf(x[j] * id);
            qs[j] = fabsf(r) <= 127.0f ? (int8_t)r : 0; /* inf/NaN (only when 1/d overflows) -> 0, as numpy */
        }
    }
}

/* Q8_0 activation quantizer, the arithmetic of ggml-cpu's x86 (AVX/AVX2) quantize_row_q8_0, which llama.cpp
 * uses for the activations of Q4_0/Q5_0/Q8_0/IQ4_NL matmuls: d = amax/127 (stored as f16), multiplier
 * id = 127/amax (not 1/d), q = x*id rounded half to even (not roundf).  When 127/amax overflows (amax < ~4e-37,
 * where d is 0 in f16 anyway) the quants are 0 (x86 would store the -128 of an "integer indefinite"). */
static void act_q8_0_scalar(const float *x, uint8_t *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += MG_QK, y += sizeof(mg_block_q8_0)) {
        float amax = 0.0f;
        for (int j = 0; j < MG_QK; j++) {
            float a = fabsf(x[j]);
            if (a > amax) amax = a;
        }
        st_f16(y, amax / 127.0f);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int8_t *qs = (int8_t *)(y + offsetof(mg_block_q8_0, qs));
        if (!isfinite(id)) {
            memset(qs, 0, MG_QK);
            continue;
        }
        for (int j = 0; j < MG_QK; j++) {
            int v = mg_nearest_int(x[j] * id);
            qs[j] = (int8_t)(v > 127 ? 127 : (v < -128 ? -128 : v));
        }
    }
}

/* Q8_K: iscale = -127/max (as ggml's quantize_row_q8_K_ref) (max = the first value of largest magnitude), q = min(127, nearest_int(iscale*x)),
 * d = 1/iscale (f32), bsums = sums of each 16 q. */
static void quant_q8_K_scalar(const float *x, uint8_t *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += MG_QK_K, y += sizeof(mg_block_q8_K)) {
        mg_block_q8_K b;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < MG_QK_K; j++) {
            float a = fabsf(x[j]);
            if (a > amax) { amax = a; max = x[j]; }
        }
        const float iscale = amax != 0.0f ? -127.0f / max : 0.0f;
        if (amax == 0.0f || !isfinite(iscale)) { /* zero block, or so tiny that 1/d overflows: all zeros */
            memset(&b, 0, sizeof(b));
        } else {
            for (int j = 0; j < MG_QK_K; j++) {
                int v = mg_nearest_int(iscale * x[j]);
                b.qs[j] = (int8_t)(v > 127 ? 127 : (v < -128 ? -128 : v));
            }
            for (int j = 0; j < MG_QK_K / 16; j++) {
                int sum = 0;
                for (int l = 0; l < 16; l++) sum += b.qs[16 * j + l];
                b.bsums[j] = (int16_t)sum;
            }
            b.d = 1.0f / iscale;
        }
        memcpy(y, &b, sizeof(b));
    }
}

#if MG_X86
/* exact roundf (half away from zero) of 8 floats: t = trunc(x); t += sign(x) where |x - t| >= 0.5 */
MG_TARGET_AVX2 static inline __m256 roundf_avx2(__m256 x) {
    __m256 t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 frac = _mm256_sub_ps(x, t);
    __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 ge = _mm256_cmp_ps(_mm256_and_ps(frac, absmask), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_andnot_ps(absmask, x));
    return _mm256_add_ps(t, _mm256_and_ps(ge, one));
}

MG_TARGET_AVX2 static inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* 32 floats (already rounded to integers in [-128,127]) -> 32 int8 in order */
MG_TARGET_AVX2 static inline __m256i pack_i8x32(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256i i0 = _mm256_cvtps_epi32(a), i1 = _mm256_cvtps_epi32(b);
    __m256i i2 = _mm256_cvtps_epi32(c), i3 = _mm256_cvtps_epi32(d);
    __m256i p01 = _mm256_packs_epi32(i0, i1), p23 = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(p01, p23);
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* 32 floats into v[4]; returns their largest magnitude */
MG_TARGET_AVX2 static inline float load32_amax(const float *x, __m256 v[4]) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 am = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        am = _mm256_max_ps(am, _mm256_and_ps(v[k], absmask));
    }
    return hmax_ps(am);
}

MG_TARGET_AVX2 static void quant_q8_0_avx2(const float *x, uint8_t *y, int64_t nb) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < nb; i++, x += MG_QK, y += sizeof(mg_block_q8_0)) {
        __m256 v[4];
        const float amax = load32_amax(x, v);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        st_f16(y, d);
        const __m256 vid = _mm256_set1_ps(id);
        const __m256 lim = _mm256_set1_ps(127.0f);
        for (int k = 0; k < 4; k++) {
            __m256 r = roundf_avx2(_mm256_mul_ps(v[k], vid));
            /* inf/NaN (only when 1/d overflows) -> 0, as the scalar path */
            v[k] = _mm256_and_ps(r, _mm256_cmp_ps(_mm256_and_ps(r, absmask), lim, _CMP_LE_OQ));
        }
        __m256i q = pack_i8x32(v[0], v[1], v[2], v[3]);
        _mm256_storeu_si256((__m256i *)(void *)(y + 2), q);
    }
}

/* act_q8_0_scalar's arithmetic, 8 lanes at a time (bit-identical). */
MG_TARGET_AVX2 static void act_q8_0_avx2(const float *x, uint8_t *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += MG_QK, y += sizeof(mg_block_q8_0)) {
        __m256 v[4];
        const float amax = load32_amax(x, v);
        st_f16(y, amax / 127.0f);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        if (!isfinite(id)) {
            memset(y + 2, 0, MG_QK);
            continue;
        }
        const __m256 vid = _mm256_set1_ps(id);
        for (int k = 0; k < 4; k++) v[k] = _mm256_round_ps(_mm256_mul_ps(v[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i q = pack_i8x32(v[0], v[1], v[2], v[3]); /* saturating, as the scalar clamp */
        _mm256_storeu_si256((__m256i *)(void *)(y + 2), q);
    }
}

MG_TARGET_AVX2 static void quant_q8_K_avx2(const float *x, uint8_t *y, int64_t nb) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < nb; i++, x += MG_QK_K, y += sizeof(mg_block_q8_K)) {
        mg_block_q8_K b;
        __m256 am = _mm256_setzero_ps();
        for (int k = 0; k < MG_QK_K; k += 8) am = _mm256_max_ps(am, _mm256_and_ps(_mm256_loadu_ps(x + k), absmask));
        const float amax = hmax_ps(am);
        float max = 0.0f;
        for (int j = 0; amax != 0.0f && j < MG_QK_K; j++) {
            if (fabsf(x[j]) == amax) { max = x[j]; break; }
        }
        const float iscale = amax != 0.0f ? -127.0f / max : 0.0f;
        if (amax == 0.0f || !isfinite(iscale)) {
            memset(&b, 0, sizeof(b));
            memcpy(y, &b, sizeof(b));
            continue;
        }
        const __m256 vis = _mm256_set1_ps(iscale);
        const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-128.0f);
        for (int k = 0; k < MG_QK_K; k += 32) {
            __m256 r[4];
            for (int u = 0; u < 4; u++) {
                __m256 t = _mm256_round_ps(_mm256_mul_ps(vis, _mm256_loadu_ps(x + k + 8 * u)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                r[u] = _mm256_max_ps(_mm256_min_ps(t, hi), lo);
            }
            __m256i q = pack_i8x32(r[0], r[1], r[2], r[3]);
            _mm256_storeu_si256((__m256i *)(void *)(b.qs + k), q);
            /* bsums of two groups of 16 */
            __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);      /* pairwise sums, int16 */
            __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));      /* 8 sums of 4 */
            __m128i a = _mm256_castsi256_si128(s32), c = _mm256_extracti128_si256(s32, 1);
            a = _mm_hadd_epi32(a, c);                                         /* 4 sums of 8: [0-7,8-15,16-23,24-31] */
            int32_t t4[4];
            _mm_storeu_si128((__m128i *)(void *)t4, a);
            b.bsums[k / 16] = (int16_t)(t4[0] + t4[1]);
            b.bsums[k / 16 + 1] = (int16_t)(t4[2] + t4[3]);
        }
        b.d = 1.0f / iscale;
        memcpy(y, &b, sizeof(b));
    }
}
#endif

/* the Q8_0 file quantizer (gguf-py's bytes) */
static void quant_q8_0(const float *x, uint8_t *y, int64_t nb) {
#if MG_X86
    if (mg_get_simd_level() >= 1) { quant_q8_0_avx2(x, y, nb); return; }
#endif
    quant_q8_0_scalar(x, y, nb);
}

void mg_quantize_row_q8_0(const float *x, void *y, int64_t n) {
#if MG_X86
    if (mg_get_simd_level() >= 1) { act_q8_0_avx2(x, (uint8_t *)y, n / MG_QK); return; }
#endif
    act_q8_0_scalar(x, (uint8_t *)y, n / MG_QK);
}

void mg_quantize_row_q8_K(const float *x, void *y, int64_t n) {
#if MG_X86
    if (mg_get_simd_level() >= 1) { quant_q8_K_avx2(x, (uint8_t *)y, n / MG_QK_K); return; }
#endif
    quant_q8_K_scalar(x, (uint8_t *)y, n / MG_QK_K);
}

/* ---------------------------------------------------- legacy 32-block quantizers ----- */
/* Same float operations as ggml's reference quantizers and gguf-py's numpy ones (byte-identical output):
 * symmetric types take the signed value of largest magnitude (first occurrence), d = max/-2^(bits-1),
 * q = min(qmax, (int)(x/d + 2^(bits-1) + 0.5)); affine types d = (max-min)/qmax, q = (int)((x-min)/d + 0.5). */

static void quant_sym_block(const float *x, int half, float *d_out, uint8_t q[MG_QK]) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < MG_QK; j++) {
        float a = fabsf(x[j]);
        if (amax < a) { amax = a; max = x[j]; }
    }
    const float d = max / (float)-half;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float off = (float)half + 0.5f;
    const int qmax = 2 * half - 1;
    for (int j = 0; j < MG_QK; j++) {
        float v = x[j] * id + off; /* in [0, 2*half+0.5] unless 1/d overflowed (tiny subnormal block) */
        int qi = (v >= 0.0f && v < 256.0f) ? (int)v : 0; /* inf/NaN -> 0, as numpy's cast on x86 */
        q[j] = (uint8_t)(qi > qmax ? qmax : (qi < 0 ? 0 : qi));
    }
    *d_out = d;
}

static void quant_aff_block(const float *x, int qmax, float *d_out, float *m_out, uint8_t q[MG_QK]) {
    float min = x[0], max = x[0];
    for (int j = 1; j < MG_QK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / (float)qmax;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < MG_QK; j++) {
        float v = (x[j] - min) * id + 0.5f;
        int qi = (v >= 0.0f && v < 256.0f) ? (int)v : 0;
        q[j] = (uint8_t)(qi > qmax ? qmax : (qi < 0 ? 0 : qi));
    }
    *d_out = d;
    *m_out = min;
}

static void pack_nibbles(const uint8_t q[MG_QK], uint8_t *qs) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 15) | ((q[j + 16] & 15) << 4));
}

static void pack_qh(const uint8_t q[MG_QK], uint8_t *qh_out) {
    uint32_t qh = 0;
    for (int j = 0; j < MG_QK; j++) qh |= (uint32_t)((q[j] >> 4) & 1) << j;
    memcpy(qh_out, &qh, 4);
}

/* Q4_0/Q5_0 (affine = 0) and Q4_1/Q5_1 (affine = 1) blocks: [d f16][m f16 if affine][qh u32 if 5-bit][qs] */
static void quant_legacy(const float *x, uint8_t *y, int64_t nb, int bits, int affine) {
    const size_t bytes = (size_t)(2 + 2 * affine + (bits == 5 ? 4 : 0) + MG_QK / 2);
    for (int64_t i = 0; i < nb; i++, x += MG_QK, y += bytes) {
        uint8_t q[MG_QK];
        float d, m = 0.0f;
        uint8_t *p = y;
        if (affine) {
            quant_aff_block(x, (1 << bits) - 1, &d, &m, q);
        } else {
            quant_sym_block(x, 1 << (bits - 1), &d, q);
        }
        st_f16(p, d);
        p += 2;
        if (affine) { st_f16(p, m); p += 2; }
        if (bits == 5) { pack_qh(q, p); p += 4; }
        pack_nibbles(q, p);
    }
}

/* float -> bf16 as ggml_compute_fp32_to_bf16: NaN forced quiet, otherwise round to nearest even */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* ---------------------------------------------------------------- dispatch ----- */

static int all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        if ((u & 0x7f800000u) == 0x7f800000u) return 0;
    }
    return 1;
}

int mg_quantize_row(int type, const float *src, void *dst, int64_t n, const float *imatrix) {
    const int bs = mg_type_block_size(type);
    if (bs == 0) return MG_EUNSUPPORTED;
    if (n < 0 || n % bs != 0 || (n > 0 && (src == NULL || dst == NULL))) return MG_ESIZE;
    uint8_t *y = (uint8_t *)dst;
    const int64_t nb = n / bs;
    switch (type) {
    case MG_F32: if (n) memcpy(y, src, (size_t)n * 4); return MG_OK;
    case MG_F16:
        for (int64_t i = 0; i < n; i++) st_f16(y + 2 * i, src[i]);
        return MG_OK;
    case MG_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = f32_to_bf16(src[i]);
            memcpy(y + 2 * i, &h, 2);
        }
        return MG_OK;
    default: break;
    }
    /* block formats: non-finite input has no meaningful encoding (and would make float->int casts undefined) */
    if (!all_finite(src, n)) return MG_EOTHER;
    if (imatrix != NULL && !all_finite(imatrix, n)) return MG_EOTHER;
    switch (type) {
    case MG_Q8_0: quant_q8_0(src, y, nb); return MG_OK;
    case MG_Q8_K: mg_quantize_row_q8_K(src, y, n); return MG_OK;
    case MG_Q4_0: quant_legacy(src, y, nb, 4, 0); return MG_OK;
    case MG_Q4_1: quant_legacy(src, y, nb, 4, 1); return MG_OK;
    case MG_Q5_0: quant_legacy(src, y, nb, 5, 0); return MG_OK;
    case MG_Q5_1: quant_legacy(src, y, nb, 5, 1); return MG_OK;
    default: return mg_quantize_row_kq(type, src, y, n, imatrix);
    }
}

int mg_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix) {
    const int bs = mg_type_block_size(type);
    if (bs == 0) return MG_EUNSUPPORTED;
    if (nrows < 0 || n_per_row < 0 || n_per_row % bs != 0) return MG_ESIZE;
    const size_t row_bytes = (size_t)(n_per_row / bs) * mg_type_block_bytes(type);
    for (int64_t r = 0; r < nrows; r++) {
        int rc = mg_quantize_row(type, src + r * n_per_row, (uint8_t *)dst + (size_t)r * row_bytes, n_per_row, imatrix);
        if (rc != MG_OK) return rc;
    }
    return MG_OK;
}
