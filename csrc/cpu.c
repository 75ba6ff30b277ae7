/* cpu.c - run-time CPU feature detection and the global SIMD level switch. */
#include "moe_gguf.h"
#include "internal.h"

static int detect_level(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return 1;
#endif
    return 0;
}

/* -1 = not yet detected.  Written once at first use (benign: every thread computes the same value)
 * and by mg_set_simd_level, which tests call from a single thread before running kernels. */
static int g_level = -1;

int mg_cpu_simd_level(void) { return detect_level(); }

int mg_get_simd_level(void) {
    if (g_level < 0) g_level = detect_level();
    return g_level;
}

int mg_set_simd_level(int level) {
    int hw = detect_level();
    if (level < 0) level = 0;
    g_level = level > hw ? hw : level;
    return g_level;
}
