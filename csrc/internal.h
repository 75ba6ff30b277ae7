/* internal.h - helpers shared between the .c files of csrc/ (not exported to Python). */
#ifndef MOE_GGUF_INTERNAL_H
#define MOE_GGUF_INTERNAL_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define MG_X86 1
#define MG_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define MG_X86 0
#define MG_TARGET_AVX2
#endif

enum {
    MG_OK = 0, MG_EUNSUPPORTED = -1, MG_ESIZE = -2, MG_ENOMEM = -3, MG_EOTHER = -4,
};

/* ggml type ids */
enum {
    MG_F32 = 0, MG_F16 = 1, MG_Q4_0 = 2, MG_Q4_1 = 3, MG_Q5_0 = 6, MG_Q5_1 = 7, MG_Q8_0 = 8, MG_Q8_1 = 9,
    MG_Q2_K = 10, MG_Q3_K = 11, MG_Q4_K = 12, MG_Q5_K = 13, MG_Q6_K = 14, MG_Q8_K = 15,
    MG_IQ4_NL = 20, MG_IQ4_XS = 23, MG_BF16 = 30,
};

/* IEEE half <-> float, exact, portable. */
static inline float mg_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while ((man & 0x400u) == 0);
            man &= 0x3ffu;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float -> half, round to nearest even (as numpy's astype(float16)). */
static inline uint16_t mg_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) { /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u | ((absx >> 13) & 0x3ffu) : 0));
    }
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (absx < 0x38800000u) { /* subnormal or zero in half */
        if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25 rounds to 0 */
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 + (113 - e) - ... */
        /* half subnormal value = m * 2^(e-150) / 2^-24 = m >> (126 - e) */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = absx + 0xfffu + ((absx >> 13) & 1u); /* round to nearest even */
    r -= 0x38000000u;                                  /* rebias 127 -> 15 */
    return (uint16_t)(sign | (r >> 13));
}

static inline float mg_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- block layouts (ggml-common.h facts; see shared/docs/deepseek2-gguf.md) ---- */
#define MG_QK 32
#define MG_QK_K 256
#define MG_K_SCALE_SIZE 12

typedef struct { uint16_t d; uint8_t qs[MG_QK / 2]; } mg_block_q4_0;              /* 18 B */
typedef struct { uint16_t d, m; uint8_t qs[MG_QK / 2]; } mg_block_q4_1;           /* 20 B */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[MG_QK / 2]; } mg_block_q5_0; /* 22 B */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[MG_QK / 2]; } mg_block_q5_1; /* 24 B */
typedef struct { uint16_t d; int8_t qs[MG_QK]; } mg_block_q8_0;                    /* 34 B */
typedef struct { uint16_t d; uint8_t qs[MG_QK / 2]; } mg_block_iq4_nl;            /* 18 B */
typedef struct { uint8_t scales[MG_QK_K / 16]; uint8_t qs[MG_QK_K / 4]; uint16_t d, dmin; } mg_block_q2_K; /* 84 B */
typedef struct { uint8_t hmask[MG_QK_K / 8]; uint8_t qs[MG_QK_K / 4]; uint8_t scales[12]; uint16_t d; } mg_block_q3_K; /* 110 B */
typedef struct { uint16_t d, dmin; uint8_t scales[MG_K_SCALE_SIZE]; uint8_t qs[MG_QK_K / 2]; } mg_block_q4_K; /* 144 B */
typedef struct { uint16_t d, dmin; uint8_t scales[MG_K_SCALE_SIZE]; uint8_t qh[MG_QK_K / 8]; uint8_t qs[MG_QK_K / 2]; } mg_block_q5_K; /* 176 B */
typedef struct { uint8_t ql[MG_QK_K / 2]; uint8_t qh[MG_QK_K / 4]; int8_t scales[MG_QK_K / 16]; uint16_t d; } mg_block_q6_K; /* 210 B */
typedef struct { float d; int8_t qs[MG_QK_K]; int16_t bsums[MG_QK_K / 16]; } mg_block_q8_K; /* 292 B */
typedef struct { uint16_t d; uint16_t scales_h; uint8_t scales_l[MG_QK_K / 64]; uint8_t qs[MG_QK_K / 2]; } mg_block_iq4_xs; /* 136 B */

_Static_assert(sizeof(mg_block_q4_0) == 18, "q4_0");
_Static_assert(sizeof(mg_block_q4_1) == 20, "q4_1");
_Static_assert(sizeof(mg_block_q5_0) == 22, "q5_0");
_Static_assert(sizeof(mg_block_q5_1) == 24, "q5_1");
_Static_assert(sizeof(mg_block_q8_0) == 34, "q8_0");
_Static_assert(sizeof(mg_block_q2_K) == 84, "q2_K");
_Static_assert(sizeof(mg_block_q3_K) == 110, "q3_K");
_Static_assert(sizeof(mg_block_q4_K) == 144, "q4_K");
_Static_assert(sizeof(mg_block_q5_K) == 176, "q5_K");
_Static_assert(sizeof(mg_block_q6_K) == 210, "q6_K");
_Static_assert(sizeof(mg_block_q8_K) == 292, "q8_K");
_Static_assert(sizeof(mg_block_iq4_xs) == 136, "iq4_xs");

/* the IQ4_NL / IQ4_XS non-linear code book */
static const int8_t mg_kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* Activation quantizers shared by matmul (defined in quants.c; the SIMD path is chosen inside), bit for bit
 * what llama.cpp's x86 CPU backend gives its matmuls: Q8_0 with id = 127/amax and round half to even
 * (ggml-cpu's AVX quantize_row_q8_0; NOT the file quantizer mg_quantize_row(MG_Q8_0), which keeps gguf-py's
 * roundf(x/d)); Q8_K as ggml's quantize_row_q8_K_ref (iscale = -127/max, nearest_int, bsums). */
void mg_quantize_row_q8_0(const float *x, void *y, int64_t n);
void mg_quantize_row_q8_K(const float *x, void *y, int64_t n);

/* K-quant and IQ4 quantizers with scale searches (defined in quants_k.c; mg_quantize_row dispatches to it
 * for Q2_K..Q6_K, IQ4_NL, IQ4_XS).  `x` is finite; `imatrix` (may be NULL) holds n per-column weights. */
int mg_quantize_row_kq(int type, const float *x, void *y, int64_t n, const float *imatrix);

/* ggml's nearest_int: round half to even (the default FPU mode) via the 1.5*2^23 trick; needs |f| < 2^22
 * for a meaningful answer, never undefined (inf/NaN give some int). */
static inline int mg_nearest_int(float f) {
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

#endif
