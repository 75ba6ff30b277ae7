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

#endif
