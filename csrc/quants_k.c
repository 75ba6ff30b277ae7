/* quants_k.c - K-quant (Q2_K..Q6_K) and IQ4 (IQ4_NL, IQ4_XS) quantizers.
 *
 * Written from the published descriptions of ggml's reference quantizers: per sub-block scales (and mins)
 * are found by a small search that minimises a weighted squared (or absolute) error instead of plain
 * min/max rounding, then the sub-block scales are themselves quantized to 4/6/8 bits against a super-block
 * fp16 scale and the codes are recomputed with the final, rounded scales.
 *   - "qx" search (Q6_K, Q3_K with imatrix): symmetric scale; try iscale = -(nmax + 0.1*k)/max, k = -9..9,
 *     keep the least-squares scale with the best weighted fit.
 *   - "q3" search (Q3_K): symmetric; start from -nmax/max, then coordinate descent on the codes.
 *   - "qkx" search (Q2_K, Q4_K, Q5_K): affine x ~ scale*q - min (min >= 0); try iscale = (nmax + rmin +
 *     rdelta*k)/(max-min) and solve the 2x2 weighted least squares for (scale, min) at each code set.
 *   - IQ4: non-linear 16-value grid; try 15 candidate scales (max mapped to grid[0] + k, k = -7..7), pick
 *     the weighted least-squares scale with the best fit.
 *   - "qp" search (imatrix path of Q2_K/Q4_K/Q5_K): the sub-block scales/mins against the super-block scale.
 * With an importance matrix the per-element weights are imatrix[col] * sqrt(sigma2 + x^2) (sigma2 = k * mean
 * x^2 of the super-block), otherwise each format's default weighting (noted below).
 * Each block is encoded three ways (MODE_REF: the format's ggml-style weighted search; MODE_FLAT: the same
 * search with unit weights, skipped with an imatrix; MODE_NAIVE: plain min/max rounding) and the encoding
 * with the smallest decoded squared error (imatrix-weighted if given) is kept, so the result is never worse
 * than naive rounding.  Inner loops use 8-lane partial sums with AVX2 twins that give identical bits, so the
 * output does not depend on the SIMD level.  Stack scratch only; no allocation.
 */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "moe_gguf.h"
#include "internal.h"

#if MG_X86
#include <immintrin.h>
#endif

#define GROUP_MAX_EPS 1e-15f

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* value of largest magnitude (first occurrence) and its magnitude */
static inline float signed_absmax(const float *x, int n, float *amax_out) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; max = x[i]; }
    }
    *amax_out = amax;
    return max;
}

/* 8-lane partial sums (lane k takes the elements i = k mod 8, in order) reduced in a fixed order, so the
 * scalar and AVX2 versions below give bit-identical sums */
static inline float lane_sum8(const float a[8]) {
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

/* symmetric codes l = clamp(nearest(iscale*x), -nmax, nmax-1), stored as l + nmax in L (if L); returns
 * sum w*l*x and sets *suml2 = sum w*l*l (8-lane sums, scalar and AVX2 bit-identical); n % 8 == 0 */
static float qx_fit_scalar(int n, int nmax, const float *x, const float *w, float iscale, int8_t *L, float *suml2) {
    float a[2][8] = {{0}};
    for (int i = 0; i < n; i++) {
        const int l = clampi(mg_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        if (L) L[i] = (int8_t)(l + nmax);
        const float wl = w[i] * (float)l;
        a[0][i & 7] += wl * x[i];
        a[1][i & 7] += wl * (float)l;
    }
    *suml2 = lane_sum8(a[1]);
    return lane_sum8(a[0]);
}

#if MG_X86
MG_TARGET_AVX2 static float qx_fit_avx2(int n, int nmax, const float *x, const float *w, float iscale, int8_t *L,
                                        float *suml2) {
    const __m256 vis = _mm256_set1_ps(iscale);
    const __m256 lo = _mm256_set1_ps((float)-nmax), hi = _mm256_set1_ps((float)(nmax - 1));
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        const __m256 vx = _mm256_loadu_ps(x + i);
        __m256 l = _mm256_round_ps(_mm256_mul_ps(vis, vx), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        l = _mm256_min_ps(_mm256_max_ps(l, lo), hi);
        const __m256 wl = _mm256_mul_ps(_mm256_loadu_ps(w + i), l);
        s0 = _mm256_add_ps(s0, _mm256_mul_ps(wl, vx));
        s1 = _mm256_add_ps(s1, _mm256_mul_ps(wl, l));
        if (L) {
            int32_t li[8];
            _mm256_storeu_si256((__m256i *)(void *)li, _mm256_cvtps_epi32(l));
            for (int k = 0; k < 8; k++) L[i + k] = (int8_t)(li[k] + nmax);
        }
    }
    float a[8];
    _mm256_storeu_ps(a, s1);
    *suml2 = lane_sum8(a);
    _mm256_storeu_ps(a, s0);
    return lane_sum8(a);
}
#endif

static inline float qx_fit(int n, int nmax, const float *x, const float *w, float iscale, int8_t *L, float *suml2) {
#if MG_X86
    if (mg_get_simd_level() >= 1) return qx_fit_avx2(n, nmax, x, w, iscale, L, suml2);
#endif
    return qx_fit_scalar(n, nmax, x, w, iscale, L, suml2);
}

/* "qx" search: L[i] in [0, 2*nmax), x ~ scale*(L - nmax).  w: weights (length n).  search = 0: plain
 * rounding with scale max/-nmax (the naive baseline). */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, const float *w, int search) {
    float amax;
    const float max = signed_absmax(x, n, &amax);
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float suml2;
    float iscale = -(float)nmax / max;
    float sumlx = qx_fit(n, nmax, x, w, iscale, L, &suml2);
    if (!search) return 1.0f / iscale;
    float scale = suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = qx_fit(n, nmax, x, w, iscale, NULL, &suml2);
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            qx_fit(n, nmax, x, w, iscale, L, &suml2);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* "q3" search for Q3_K without imatrix: weights x^2, coordinate descent on the codes. L in [0, 2*nmax). */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L) {
    float amax;
    const float max = signed_absmax(x, n, &amax);
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = -(float)nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = clampi(mg_nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)(l * l);
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (slx > 0.0f) {
                float sl2 = suml2 - w * (float)(L[i] * L[i]);
                int nl = clampi(mg_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (nl != L[i]) {
                    slx += w * x[i] * (float)nl;
                    sl2 += w * (float)(nl * nl);
                    if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* weighted absolute error of codes L for x ~ scale*L + min */
static float qkx_mad(int n, const float *x, const float *w, const uint8_t *L, float scale, float min) {
    float e = 0.0f;
    for (int i = 0; i < n; i++) e += w[i] * fabsf(scale * (float)L[i] + min - x[i]);
    return e;
}

/* codes L[i] = clamp(nearest(iscale*(x[i]-min)), 0, nmax) (stored if L) and out = {sum w*l, sum w*l*l, sum w*l*x};
 * n % 8 == 0 */
static void qkx_codes_scalar(int n, const float *x, const float *w, float min, float iscale, int nmax, uint8_t *L,
                             float out[3]) {
    float a[3][8] = {{0}};
    for (int i = 0; i < n; i++) {
        const int l = clampi(mg_nearest_int(iscale * (x[i] - min)), 0, nmax);
        if (L) L[i] = (uint8_t)l;
        const float wl = w[i] * (float)l;
        a[0][i & 7] += wl;
        a[1][i & 7] += wl * (float)l;
        a[2][i & 7] += wl * x[i];
    }
    for (int k = 0; k < 3; k++) out[k] = lane_sum8(a[k]);
}

#if MG_X86
MG_TARGET_AVX2 static void qkx_codes_avx2(int n, const float *x, const float *w, float min, float iscale, int nmax,
                                          uint8_t *L, float out[3]) {
    const __m256 vmin = _mm256_set1_ps(min), vis = _mm256_set1_ps(iscale);
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps((float)nmax);
    __m256 s0 = zero, s1 = zero, s2 = zero;
    for (int i = 0; i < n; i += 8) {
        const __m256 vx = _mm256_loadu_ps(x + i);
        __m256 l = _mm256_round_ps(_mm256_mul_ps(vis, _mm256_sub_ps(vx, vmin)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        l = _mm256_min_ps(_mm256_max_ps(l, zero), top);
        const __m256 wl = _mm256_mul_ps(_mm256_loadu_ps(w + i), l);
        s0 = _mm256_add_ps(s0, wl);
        s1 = _mm256_add_ps(s1, _mm256_mul_ps(wl, l));
        s2 = _mm256_add_ps(s2, _mm256_mul_ps(wl, vx));
        if (L) {
            int32_t li[8];
            _mm256_storeu_si256((__m256i *)(void *)li, _mm256_cvtps_epi32(l));
            for (int k = 0; k < 8; k++) L[i + k] = (uint8_t)li[k];
        }
    }
    float a[8];
    _mm256_storeu_ps(a, s0); out[0] = lane_sum8(a);
    _mm256_storeu_ps(a, s1); out[1] = lane_sum8(a);
    _mm256_storeu_ps(a, s2); out[2] = lane_sum8(a);
}
#endif

static inline void qkx_codes(int n, const float *x, const float *w, float min, float iscale, int nmax, uint8_t *L,
                             float out[3]) {
#if MG_X86
    if (mg_get_simd_level() >= 1) { qkx_codes_avx2(n, x, w, min, iscale, nmax, L, out); return; }
#endif
    qkx_codes_scalar(n, x, w, min, iscale, nmax, L, out);
}

/* weighted squared error sum w*(s*l + m - x)^2 from the sums (the constant sum w*x^2 left out) */
static inline double qkx_sq_err(const float sums[3], double sw, double sx, double s, double m) {
    return s * s * sums[1] + 2.0 * s * m * sums[0] - 2.0 * s * sums[2] + m * m * sw - 2.0 * m * sx;
}

/* "qkx" search: x ~ scale*L - the_min with L in [0, nmax], the_min >= 0 (returned through *the_min).
 * n is a multiple of 8.  With mad the error is sum w*|e|, else sum w*e^2 (evaluated from the sums). */
static float make_qkx_quants(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                             float rmin, float rdelta, int nstep, bool mad) {
    float min = x[0], max = x[0], sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float sums[3];
    float iscale = (float)nmax / (max - min);
    float scale = 1.0f / iscale;
    qkx_codes(n, x, w, min, iscale, nmax, L, sums);
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    double best = mad ? (double)qkx_mad(n, x, w, L, scale, min) : qkx_sq_err(sums, sum_w, sum_x, scale, min);
    uint8_t Laux[MG_QK_K];
    for (int is = 0; is <= nstep; is++) {
        /* as in ggml, later steps take codes relative to the best min found so far */
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        qkx_codes(n, x, w, min, iscale, nmax, mad ? Laux : NULL, sums);
        const float sum_l = sums[0], sum_l2 = sums[1], sum_xl = sums[2];
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0.0f) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0.0f) {
                this_min = 0.0f;
                this_scale = sum_xl / sum_l2;
            }
            const double e = mad ? (double)qkx_mad(n, x, w, Laux, this_scale, this_min)
                                 : qkx_sq_err(sums, sum_w, sum_x, this_scale, this_min);
            if (e < best) {
                if (mad) memcpy(L, Laux, (size_t)n);
                else qkx_codes(n, x, w, min, iscale, nmax, L, sums); /* the codes just evaluated */
                best = e;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* "qp" search for non-negative sub-block scales (or mins) x against one super-block scale, weighted by the
 * sub-blocks' total importance qw: try iscale = (nmax + 0.1*k)/max, k = -4..4, by weighted squared error,
 * then coordinate descent on the codes; L in [0, nmax].  Used on the imatrix path, as ggml does. */
static float make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *qw) {
    float max = 0.0f;
    for (int i = 0; i < n; i++) if (x[i] > max) max = x[i];
    if (max == 0.0f) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)nmax / max, best = 0.0f;
    for (int is = -4; is <= 4; is++) {
        const float isc = (0.1f * (float)is + (float)nmax) / max, sc = 1.0f / isc;
        float mse = 0.0f;
        for (int i = 0; i < n; i++) {
            const float diff = x[i] - sc * (float)clampi(mg_nearest_int(isc * x[i]), 0, nmax);
            mse += qw[i] * diff * diff;
        }
        if (is == -4 || mse < best) { best = mse; iscale = isc; }
    }
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = clampi(mg_nearest_int(iscale * x[i]), 0, nmax);
        L[i] = (uint8_t)l;
        sumlx += qw[i] * x[i] * (float)l;
        suml2 += qw[i] * (float)(l * l);
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - qw[i] * x[i] * (float)L[i];
            float sl2 = suml2 - qw[i] * (float)(L[i] * L[i]);
            if (slx > 0.0f && sl2 > 0.0f) {
                const int nl = clampi(mg_nearest_int(x[i] * sl2 / slx), 0, nmax);
                if (nl != L[i]) {
                    slx += qw[i] * x[i] * (float)nl;
                    sl2 += qw[i] * (float)(nl * nl);
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 1.0f / iscale;
}

/* Quantizes n non-negative sub-block scales (or mins) to L in [0, nmax] against one super-block scale, which
 * is returned: the "qp" search when sw (sub-block weights) is given, else max/nmax with plain rounding. */
static float quantize_block_scales(int n, int nmax, const float *v, uint8_t *L, const float *sw) {
    if (sw) return make_qp_quants(n, nmax, v, L, sw);
    float max = 0.0f;
    for (int i = 0; i < n; i++) if (v[i] > max) max = v[i];
    const float iscale = max > 0.0f ? (float)nmax / max : 0.0f;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)clampi(mg_nearest_int(iscale * v[i]), 0, nmax);
    return max / (float)nmax;
}

/* Candidate encodings of a block; the driver keeps the one with the smallest (imatrix-weighted) error. */
enum {
    MODE_REF = 0,   /* ggml's weighting (or the imatrix weighting) with its search */
    MODE_FLAT = 1,  /* the same search with unit weights (plain squared error); skipped with an imatrix */
    MODE_NAIVE = 2, /* no search: min/max (or max-magnitude) rounding, the baseline we must never lose to */
};

/* per-element weights of one super-block from the imatrix: qw * sqrt(sigma2 + x^2), sigma2 = k * mean(x^2)
 * (ggml uses k = 1 for Q2_K/Q6_K and k = 2 for Q3_K/Q4_K/Q5_K/IQ4) */
static void imatrix_weights(const float *x, const float *qw, int n, float k, float *w) {
    float sumx2 = 0.0f;
    for (int i = 0; i < n; i++) sumx2 += x[i] * x[i];
    const float sigma2 = k * sumx2 / (float)n;
    for (int i = 0; i < n; i++) w[i] = qw[i] * sqrtf(sigma2 + x[i] * x[i]);
}

/* ------------------------------------------------------------------------------ Q2_K ----- */

static void quant_q2_K(const float *x, uint8_t *y, const float *qw, int mode) {
    mg_block_q2_K b;
    memset(&b, 0, sizeof(b));
    uint8_t L[MG_QK_K];
    float w[MG_QK_K], scales[16], mins[16], sw[16];
    if (qw) imatrix_weights(x, qw, MG_QK_K, 1.0f, w);
    else for (int i = 0; i < MG_QK_K; i++) w[i] = mode == MODE_REF ? fabsf(x[i]) : 1.0f;
    /* ggml: |x| weights with absolute error; with an imatrix a finer, longer search on squared error */
    const int nstep = mode == MODE_NAIVE ? -1 : (qw ? 36 : 15);
    const float rmin = qw ? -0.9f : -0.5f, rdelta = qw ? 0.05f : 0.1f;
    const bool mad = !qw && mode == MODE_REF;
    for (int j = 0; j < 16; j++) {
        scales[j] = make_qkx_quants(16, 3, x + 16 * j, w + 16 * j, L + 16 * j, &mins[j], rmin, rdelta, nstep, mad);
        sw[j] = 0.0f;
        for (int i = 0; i < 16; i++) sw[j] += w[16 * j + i];
    }
    uint8_t ls[16], lm[16];
    const float *qsw = qw && mode != MODE_NAIVE ? sw : NULL;
    b.d = mg_f32_to_f16(quantize_block_scales(16, 15, scales, ls, qsw));
    b.dmin = mg_f32_to_f16(quantize_block_scales(16, 15, mins, lm, qsw));
    for (int j = 0; j < 16; j++) b.scales[j] = (uint8_t)(ls[j] | (lm[j] << 4));
    const float dr = mg_f16_to_f32(b.d), dminr = mg_f16_to_f32(b.dmin);
    for (int j = 0; j < 16; j++) {
        const float dl = dr * (float)(b.scales[j] & 15);
        if (dl == 0.0f) { memset(L + 16 * j, 0, 16); continue; }
        const float dm = dminr * (float)(b.scales[j] >> 4);
        for (int i = 0; i < 16; i++) L[16 * j + i] = (uint8_t)clampi(mg_nearest_int((x[16 * j + i] + dm) / dl), 0, 3);
    }
    for (int j = 0; j < MG_QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            b.qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    memcpy(y, &b, sizeof(b));
}

/* ------------------------------------------------------------------------------ Q3_K ----- */

static void quant_q3_K(const float *x, uint8_t *y, const float *qw, int mode) {
    mg_block_q3_K b;
    memset(&b, 0, sizeof(b));
    int8_t L[MG_QK_K];
    float scales[16];
    float w[MG_QK_K], sw[16];
    if (qw) imatrix_weights(x, qw, MG_QK_K, 2.0f, w);
    else for (int i = 0; i < MG_QK_K; i++) w[i] = 1.0f;
    float amax = 0.0f, max_scale = 0.0f;
    for (int j = 0; j < 16; j++) {
        if (qw || mode != MODE_REF) {
            scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, w + 16 * j, mode != MODE_NAIVE);
            sw[j] = 0.0f;
            for (int i = 0; i < 16; i++) sw[j] += w[16 * j + i];
        } else {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
        }
        const float a = fabsf(scales[j]);
        if (a > amax) { amax = a; max_scale = scales[j]; }
    }
    float d = 0.0f;
    if (amax > 0.0f) {
        int8_t Ls[16];
        if (qw && mode != MODE_NAIVE) { /* search the super-block scale too, weighting sub-blocks by total weight */
            d = make_qx_quants(16, 32, scales, Ls, sw, 1);
        } else {
            const float iscale = -32.0f / max_scale;
            for (int j = 0; j < 16; j++) Ls[j] = (int8_t)(clampi(mg_nearest_int(iscale * scales[j]), -32, 31) + 32);
            d = 1.0f / iscale;
        }
        for (int j = 0; j < 16; j++) {
            const int l = Ls[j];
            if (j < 8) b.scales[j] = (uint8_t)(l & 15);
            else b.scales[j - 8] |= (uint8_t)((l & 15) << 4);
            b.scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
    }
    b.d = mg_f32_to_f16(d);
    const float dr = mg_f16_to_f32(b.d);
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? (b.scales[j] & 15) : (b.scales[j - 8] >> 4);
        const int sc = (lo | (((b.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        const float dl = dr * (float)sc;
        if (dl == 0.0f) { memset(L + 16 * j, 4, 16); continue; }
        for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(clampi(mg_nearest_int(x[16 * j + i] / dl), -4, 3) + 4);
    }
    /* bit 2 of each code goes to hmask (bit position = element / 32, byte = element % 32) */
    for (int j = 0; j < MG_QK_K; j++) {
        if (L[j] > 3) {
            b.hmask[j % 32] |= (uint8_t)(1u << (j / 32));
            L[j] = (int8_t)(L[j] - 4);
        }
    }
    for (int j = 0; j < MG_QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            b.qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    memcpy(y, &b, sizeof(b));
}

/* ----------------------------------------------------------------------- Q4_K / Q5_K ----- */

/* 6-bit scales and mins of 8 sub-blocks into the 12-byte K_SCALE packing */
static void pack_k4_scales(const uint8_t ls[8], const uint8_t lm[8], uint8_t s[12]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 15) | ((lm[j] & 15) << 4));
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

/* shared Q4_K (nmax 15) / Q5_K (nmax 31) core: fills d, dmin, scales[12] and codes L[256] */
static void quant_k45_core(const float *x, const float *qw, int mode, int nmax, uint16_t *d_out,
                           uint16_t *dmin_out, uint8_t sc_out[12], uint8_t L[MG_QK_K]) {
    float w[MG_QK_K], scales[8], mins[8], sw[8];
    if (qw) {
        imatrix_weights(x, qw, MG_QK_K, 2.0f, w);
    } else {
        float sumx2 = 0.0f;
        for (int i = 0; i < MG_QK_K; i++) sumx2 += x[i] * x[i];
        const float av_x = sqrtf(sumx2 / (float)MG_QK_K);
        for (int i = 0; i < MG_QK_K; i++) w[i] = mode == MODE_REF ? av_x + fabsf(x[i]) : 1.0f;
    }
    const float rmin = qw ? -0.9f : (nmax == 15 ? -1.0f : -0.5f);
    const float rdelta = qw ? 0.05f : 0.1f;
    const int nstep = mode == MODE_NAIVE ? -1 : (qw ? 36 : (nmax == 15 ? 20 : 15));
    for (int j = 0; j < 8; j++) {
        scales[j] = make_qkx_quants(32, nmax, x + 32 * j, w + 32 * j, L + 32 * j, &mins[j], rmin, rdelta, nstep, false);
        sw[j] = 0.0f;
        for (int i = 0; i < 32; i++) sw[j] += w[32 * j + i];
    }
    uint8_t ls[8], lm[8];
    const float *qsw = qw && mode != MODE_NAIVE ? sw : NULL;
    *d_out = mg_f32_to_f16(quantize_block_scales(8, 63, scales, ls, qsw));
    *dmin_out = mg_f32_to_f16(quantize_block_scales(8, 63, mins, lm, qsw));
    memset(sc_out, 0, 12);
    pack_k4_scales(ls, lm, sc_out);
    const float dr = mg_f16_to_f32(*d_out), dminr = mg_f16_to_f32(*dmin_out);
    for (int j = 0; j < 8; j++) {
        const float dl = dr * (float)ls[j];
        if (dl == 0.0f) { memset(L + 32 * j, 0, 32); continue; }
        const float dm = dminr * (float)lm[j];
        for (int i = 0; i < 32; i++) L[32 * j + i] = (uint8_t)clampi(mg_nearest_int((x[32 * j + i] + dm) / dl), 0, nmax);
    }
}

static void quant_q4_K(const float *x, uint8_t *y, const float *qw, int mode) {
    mg_block_q4_K b;
    uint8_t L[MG_QK_K];
    quant_k45_core(x, qw, mode, 15, &b.d, &b.dmin, b.scales, L);
    for (int j = 0; j < MG_QK_K; j += 64)
        for (int l = 0; l < 32; l++) b.qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    memcpy(y, &b, sizeof(b));
}

static void quant_q5_K(const float *x, uint8_t *y, const float *qw, int mode) {
    mg_block_q5_K b;
    uint8_t L[MG_QK_K];
    quant_k45_core(x, qw, mode, 31, &b.d, &b.dmin, b.scales, L);
    memset(b.qh, 0, sizeof(b.qh));
    for (int j = 0, c = 0; j < MG_QK_K; j += 64, c++) {
        for (int l = 0; l < 32; l++) {
            const int l1 = L[j + l], l2 = L[j + l + 32];
            b.qh[l] |= (uint8_t)(((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1)));
            b.qs[j / 2 + l] = (uint8_t)((l1 & 15) | ((l2 & 15) << 4));
        }
    }
    memcpy(y, &b, sizeof(b));
}

/* ------------------------------------------------------------------------------ Q6_K ----- */

static void quant_q6_K(const float *x, uint8_t *y, const float *qw, int mode) {
    mg_block_q6_K b;
    memset(&b, 0, sizeof(b));
    int8_t L[MG_QK_K];
    float w[MG_QK_K], scales[16];
    if (qw) imatrix_weights(x, qw, MG_QK_K, 1.0f, w);
    else for (int i = 0; i < MG_QK_K; i++) w[i] = mode == MODE_REF ? x[i] * x[i] : 1.0f;
    float amax = 0.0f, max_scale = 0.0f;
    for (int j = 0; j < 16; j++) {
        scales[j] = make_qx_quants(16, 32, x + 16 * j, L + 16 * j, w + 16 * j, mode != MODE_NAIVE);
        const float a = fabsf(scales[j]);
        if (a > amax) { amax = a; max_scale = scales[j]; }
    }
    if (amax > 0.0f) {
        const float iscale = -128.0f / max_scale;
        b.d = mg_f32_to_f16(1.0f / iscale);
        for (int j = 0; j < 16; j++) b.scales[j] = (int8_t)clampi(mg_nearest_int(iscale * scales[j]), -128, 127);
    }
    const float dr = mg_f16_to_f32(b.d);
    for (int j = 0; j < 16; j++) {
        const float dl = dr * (float)b.scales[j];
        if (dl == 0.0f) { memset(L + 16 * j, 32, 16); continue; }
        for (int i = 0; i < 16; i++) L[16 * j + i] = (int8_t)(clampi(mg_nearest_int(x[16 * j + i] / dl), -32, 31) + 32);
    }
    for (int j = 0; j < MG_QK_K; j += 128) {
        uint8_t *ql = b.ql + j / 2, *qh = b.qh + j / 4;
        for (int l = 0; l < 32; l++) {
            const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
            ql[l] = (uint8_t)((q1 & 15) | ((q3 & 15) << 4));
            ql[l + 32] = (uint8_t)((q2 & 15) | ((q4 & 15) << 4));
            qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
    memcpy(y, &b, sizeof(b));
}

/* ------------------------------------------------------------------------------- IQ4 ----- */

/* iq4_lo[i] = the largest k < 15 with grid[k] <= i - 127 (i = 0..240 covers grid[0]..grid[15]) */
static const uint8_t iq4_lo[241] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5,
    5, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9,
    9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11,
    11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    14, /* i = 240 (v just below 113, rounded up): keep lo + 1 in range */
};

/* index of the grid value nearest to v; a tie goes to the larger value */
static inline int iq4_best_index(float v) {
    const int8_t *g = mg_kvalues_iq4nl;
    if (!(v > (float)g[0])) return 0; /* also NaN */
    if (v >= (float)g[15]) return 15;
    /* v + 127 is in (0, 240): truncation = floor, so g[lo] <= v < g[lo + 1], except when the addition rounds
     * v up onto a grid value g[lo] > v; then v is within an ulp of g[lo] and lo is still the nearest. */
    const int lo = iq4_lo[(int)(v + 127.0f)];
    return v - (float)g[lo] < (float)g[lo + 1] - v ? lo : lo + 1;
}

/* midpoints between neighbouring IQ4 grid values (exact in float) */
static const float iq4_mid[15] = {-115.5f, -93.5f, -74.0f, -57.0f, -42.0f, -28.5f, -16.0f, -4.5f,
                                  7.0f,    19.0f,  31.5f,  45.5f,  61.0f,  79.0f,  101.0f};

/* For the scale search of one 32-block: with code index = number of midpoints <= id*x (nearest grid value,
 * ties up), out = {sum w*q*x, sum w*q*q} as 8-lane partial sums (scalar and AVX2 bit-identical). */
static void iq4_sums_scalar(const float *x, const float *w, float id, float out[2]) {
    float a[2][8] = {{0}};
    for (int j = 0; j < 32; j++) {
        const float v = id * x[j];
        int k = 0;
        for (int m = 0; m < 15; m++) k += v >= iq4_mid[m];
        const float q = (float)mg_kvalues_iq4nl[k];
        const float wq = w[j] * q;
        a[0][j & 7] += wq * x[j];
        a[1][j & 7] += wq * q;
    }
    out[0] = lane_sum8(a[0]);
    out[1] = lane_sum8(a[1]);
}

#if MG_X86
MG_TARGET_AVX2 static void iq4_sums_avx2(const float *x, const float *w, float id, float out[2]) {
    const __m256 vid = _mm256_set1_ps(id);
    float g[16];
    for (int k = 0; k < 16; k++) g[k] = (float)mg_kvalues_iq4nl[k];
    const __m256 glo = _mm256_loadu_ps(g), ghi = _mm256_loadu_ps(g + 8);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int j = 0; j < 32; j += 8) {
        const __m256 vx = _mm256_loadu_ps(x + j);
        const __m256 v = _mm256_mul_ps(vid, vx);
        __m256i k = _mm256_setzero_si256();
        for (int m = 0; m < 15; m++) /* each true compare is -1 */
            k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_set1_ps(iq4_mid[m]), _CMP_GE_OQ)));
        const __m256 qlo = _mm256_permutevar8x32_ps(glo, k), qhi = _mm256_permutevar8x32_ps(ghi, k);
        const __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(k, _mm256_set1_epi32(7)));
        const __m256 q = _mm256_blendv_ps(qlo, qhi, upper);
        const __m256 wq = _mm256_mul_ps(_mm256_loadu_ps(w + j), q);
        s0 = _mm256_add_ps(s0, _mm256_mul_ps(wq, vx));
        s1 = _mm256_add_ps(s1, _mm256_mul_ps(wq, q));
    }
    float a[8];
    _mm256_storeu_ps(a, s0); out[0] = lane_sum8(a);
    _mm256_storeu_ps(a, s1); out[1] = lane_sum8(a);
}
#endif

static inline void iq4_sums(const float *x, const float *w, float id, float out[2]) {
#if MG_X86
    if (mg_get_simd_level() >= 1) { iq4_sums_avx2(x, w, id, out); return; }
#endif
    iq4_sums_scalar(x, w, id, out);
}

/* best scale of one 32-block on the IQ4 grid (0 for an all-tiny block): starting from max -> +127 (clipped
 * to the grid), try max -> grid[0] + k for k = -7..7, each with its weighted least-squares scale */
static float iq4_block_scale(const float *x, const float *w, int mode) {
    float amax;
    const float max = signed_absmax(x, 32, &amax);
    if (amax < GROUP_MAX_EPS) return 0.0f;
    const float g0 = (float)mg_kvalues_iq4nl[0];
    if (mode == MODE_NAIVE) return max / g0; /* the value of largest magnitude maps onto grid[0] = -127 */
    float d = -max / g0;
    float sums[2];
    iq4_sums(x, w, 1.0f / d, sums);
    d = sums[1] > 0.0f ? sums[0] / sums[1] : d;
    float best = d * sums[0];
    for (int itry = -7; itry <= 7; itry++) {
        iq4_sums(x, w, ((float)itry + g0) / max, sums);
        if (sums[1] > 0.0f && sums[0] * sums[0] > best * sums[1]) {
            d = sums[0] / sums[1];
            best = d * sums[0];
        }
    }
    return d;
}

static void iq4_weights(const float *x, const float *qw, int mode, int n, float *w) {
    if (qw) {
        float sumx2 = 0.0f;
        for (int i = 0; i < n; i++) sumx2 += x[i] * x[i];
        const float sigma2 = 2.0f * sumx2 / (float)n;
        for (int i = 0; i < n; i++) w[i] = qw[i] * sqrtf(sigma2 + x[i] * x[i]);
    } else {
        for (int i = 0; i < n; i++) w[i] = mode == MODE_REF ? x[i] * x[i] : 1.0f;
    }
}

static void iq4_pack(const uint8_t *L, int n, uint8_t *qs) {
    for (int i = 0; i < n / 32; i++)
        for (int j = 0; j < 16; j++) qs[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

static void iq4_codes(const float *x, float dl, uint8_t *L) {
    const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
    for (int j = 0; j < 32; j++) L[j] = (uint8_t)iq4_best_index(idl * x[j]);
}

static void quant_iq4_nl(const float *x, uint8_t *y, const float *qw, int mode) {
    mg_block_iq4_nl b;
    float w[32];
    uint8_t L[32];
    iq4_weights(x, qw, mode, 32, w);
    const float d = iq4_block_scale(x, w, mode);
    b.d = mg_f32_to_f16(d);
    iq4_codes(x, d, L);
    iq4_pack(L, 32, b.qs);
    memcpy(y, &b, sizeof(b));
}

static void quant_iq4_xs(const float *x, uint8_t *y, const float *qw, int mode) {
    mg_block_iq4_xs b;
    memset(&b, 0, sizeof(b));
    float w[MG_QK_K], scales[8];
    uint8_t L[MG_QK_K];
    iq4_weights(x, qw, mode, MG_QK_K, w);
    float amax = 0.0f, max_scale = 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        scales[ib] = iq4_block_scale(x + 32 * ib, w + 32 * ib, mode);
        const float a = fabsf(scales[ib]);
        if (a > amax) { amax = a; max_scale = scales[ib]; }
    }
    const float d = -max_scale / 32.0f;
    b.d = mg_f32_to_f16(d);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int ib = 0; ib < 8; ib++) {
        const int l = clampi(mg_nearest_int(id * scales[ib]), -32, 31);
        iq4_codes(x + 32 * ib, d * (float)l, L + 32 * ib);
        const int u = l + 32;
        b.scales_l[ib / 2] |= (uint8_t)((u & 15) << (4 * (ib % 2)));
        b.scales_h |= (uint16_t)((u >> 4) << (2 * ib));
    }
    iq4_pack(L, MG_QK_K, b.qs);
    memcpy(y, &b, sizeof(b));
}

/* ------------------------------------------------------------------------------ dispatch ----- */

/* error of an encoded block against x: sum qw*(x - x')^2, or the plain squared error without an imatrix */
static double block_err(int type, const uint8_t *blk, const float *x, const float *qw, int bs) {
    float dec[MG_QK_K];
    mg_dequantize_row(type, blk, dec, bs);
    double e = 0.0;
    for (int i = 0; i < bs; i++) {
        const double diff = (double)dec[i] - (double)x[i];
        e += (qw ? (double)qw[i] : 1.0) * diff * diff;
    }
    return e;
}

int mg_quantize_row_kq(int type, const float *x, void *vy, int64_t n, const float *imatrix) {
    void (*fn)(const float *, uint8_t *, const float *, int);
    int bs;
    switch (type) {
    case MG_Q2_K: fn = quant_q2_K; bs = MG_QK_K; break;
    case MG_Q3_K: fn = quant_q3_K; bs = MG_QK_K; break;
    case MG_Q4_K: fn = quant_q4_K; bs = MG_QK_K; break;
    case MG_Q5_K: fn = quant_q5_K; bs = MG_QK_K; break;
    case MG_Q6_K: fn = quant_q6_K; bs = MG_QK_K; break;
    case MG_IQ4_NL: fn = quant_iq4_nl; bs = MG_QK; break;
    case MG_IQ4_XS: fn = quant_iq4_xs; bs = MG_QK_K; break;
    default: return MG_EUNSUPPORTED;
    }
    if (n < 0 || n % bs != 0) return MG_ESIZE;
    const size_t bytes = mg_type_block_bytes(type);
    uint8_t *y = (uint8_t *)vy;
    uint8_t cand[sizeof(mg_block_q8_K)];
    for (int64_t i = 0; i < n / bs; i++) {
        const float *xb = x + i * bs;
        const float *qw = imatrix ? imatrix + i * bs : NULL;
        uint8_t *yb = y + (size_t)i * bytes;
        fn(xb, yb, qw, MODE_REF);
        double best = block_err(type, yb, xb, qw, bs);
        for (int mode = MODE_FLAT; mode <= MODE_NAIVE; mode++) {
            if (mode == MODE_FLAT && qw) continue;
            fn(xb, cand, qw, mode);
            const double e = block_err(type, cand, xb, qw, bs);
            if (e < best) {
                best = e;
                memcpy(yb, cand, bytes);
            }
        }
    }
    return MG_OK;
}
