/* nn.c - neural-net ops: RMSNorm, RoPE (NORM / adjacent-pair style, any frequency table, e.g. YaRN),
 * row softmax, SiLU*mul, causal attention over one shared latent K/V head (MLA absorbed form) and
 * top-k MoE routing.  Every kernel has a plain C path; the hot ones (RMSNorm, attention) add an AVX2+FMA
 * path chosen at run time through mg_get_simd_level().  The kernels know no architecture. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe_gguf.h"
#include "internal.h"

#if MG_X86
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------------------------ vector helpers */
static float dot_scalar(const float *a, const float *b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (int j = 0; j < 8; j++) s += acc[j];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* the same with the second operand / x in IEEE half (an F16 cache row) */
static float dot_f16_scalar(const float *a, const void *b, int64_t n) {
    const uint16_t *h = b;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * mg_f16_to_f32(h[i + j]);
    float s = 0.0f;
    for (int j = 0; j < 8; j++) s += acc[j];
    for (; i < n; i++) s += a[i] * mg_f16_to_f32(h[i]);
    return s;
}

static void axpy_f16_scalar(float *y, float a, const void *x, int64_t n) {
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++) y[i] += a * mg_f16_to_f32(h[i]);
}

#if MG_X86
MG_TARGET_AVX2 static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

MG_TARGET_AVX2 static float dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

MG_TARGET_AVX2 static void axpy_avx2(float *y, float a, const float *x, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

MG_TARGET_AVX2 static float dot_f16_avx2(const float *a, const void *bv, int64_t n) {
    const uint16_t *b = bv;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i h0, h1;
        memcpy(&h0, b + i, 16);
        memcpy(&h1, b + i + 8, 16);
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_cvtph_ps(h0), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_cvtph_ps(h1), s1);
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * mg_f16_to_f32(b[i]);
    return s;
}

MG_TARGET_AVX2 static void axpy_f16_avx2(float *y, float a, const void *xv, int64_t n) {
    const uint16_t *x = xv;
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h;
        memcpy(&h, x + i, 16);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(h), _mm256_loadu_ps(y + i)));
    }
    for (; i < n; i++) y[i] += a * mg_f16_to_f32(x[i]);
}

/* Four heads against one cache row: each row chunk is loaded once for the four queries.  Only used when
 * n is a multiple of 16 (then the per-head accumulation order is exactly dot_avx2's, and results are
 * bit-identical to four single calls); otherwise the caller uses the single-head kernels. */
MG_TARGET_AVX2 static void dot4_f32_avx2(const float *q, int64_t qs, const void *rowv, int64_t n, float *out) {
    const float *row = rowv;
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        __m256 r0 = _mm256_loadu_ps(row + i), r1 = _mm256_loadu_ps(row + i + 8);
        for (int k = 0; k < 4; k++) {
            acc[2 * k] = _mm256_fmadd_ps(_mm256_loadu_ps(q + k * qs + i), r0, acc[2 * k]);
            acc[2 * k + 1] = _mm256_fmadd_ps(_mm256_loadu_ps(q + k * qs + i + 8), r1, acc[2 * k + 1]);
        }
    }
    for (int k = 0; k < 4; k++) out[k] = hsum256(_mm256_add_ps(acc[2 * k], acc[2 * k + 1]));
}

MG_TARGET_AVX2 static void dot4_f16_avx2(const float *q, int64_t qs, const void *rowv, int64_t n, float *out) {
    const uint16_t *row = rowv;
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int64_t i = 0; i + 16 <= n; i += 16) {
        __m128i h0, h1;
        memcpy(&h0, row + i, 16);
        memcpy(&h1, row + i + 8, 16);
        __m256 r0 = _mm256_cvtph_ps(h0), r1 = _mm256_cvtph_ps(h1);
        for (int k = 0; k < 4; k++) {
            acc[2 * k] = _mm256_fmadd_ps(_mm256_loadu_ps(q + k * qs + i), r0, acc[2 * k]);
            acc[2 * k + 1] = _mm256_fmadd_ps(_mm256_loadu_ps(q + k * qs + i + 8), r1, acc[2 * k + 1]);
        }
    }
    for (int k = 0; k < 4; k++) out[k] = hsum256(_mm256_add_ps(acc[2 * k], acc[2 * k + 1]));
}

/* y_k += p[k] * row for k < 4 (y_k = y + k*ys); n a multiple of 8: per element exactly axpy_avx2's FMA */
MG_TARGET_AVX2 static void axpy4_f32_avx2(float *y, int64_t ys, const float *p, const void *rowv, int64_t n) {
    const float *row = rowv;
    __m256 pk[4];
    for (int k = 0; k < 4; k++) pk[k] = _mm256_set1_ps(p[k]);
    for (int64_t i = 0; i + 8 <= n; i += 8) {
        __m256 r = _mm256_loadu_ps(row + i);
        for (int k = 0; k < 4; k++) {
            float *yk = y + k * ys + i;
            _mm256_storeu_ps(yk, _mm256_fmadd_ps(pk[k], r, _mm256_loadu_ps(yk)));
        }
    }
}

MG_TARGET_AVX2 static void axpy4_f16_avx2(float *y, int64_t ys, const float *p, const void *rowv, int64_t n) {
    const uint16_t *row = rowv;
    __m256 pk[4];
    for (int k = 0; k < 4; k++) pk[k] = _mm256_set1_ps(p[k]);
    for (int64_t i = 0; i + 8 <= n; i += 8) {
        __m128i h;
        memcpy(&h, row + i, 16);
        __m256 r = _mm256_cvtph_ps(h);
        for (int k = 0; k < 4; k++) {
            float *yk = y + k * ys + i;
            _mm256_storeu_ps(yk, _mm256_fmadd_ps(pk[k], r, _mm256_loadu_ps(yk)));
        }
    }
}

MG_TARGET_AVX2 static float sumsq_avx2(const float *x, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i);
        s0 = _mm256_fmadd_ps(a, a, s0);
    }
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += x[i] * x[i];
    return s;
}
#endif

/* row operands are `const void *`: float32 or IEEE-half cache rows */
typedef float (*dot_fn)(const float *, const void *, int64_t);
typedef void (*axpy_fn)(float *, float, const void *, int64_t);

static float dot_f32_scalar(const float *a, const void *b, int64_t n) { return dot_scalar(a, b, n); }
static void axpy_f32_scalar(float *y, float a, const void *x, int64_t n) { axpy_scalar(y, a, x, n); }
#if MG_X86
MG_TARGET_AVX2 static float dot_f32_avx2(const float *a, const void *b, int64_t n) { return dot_avx2(a, b, n); }
MG_TARGET_AVX2 static void axpy_f32_avx2(float *y, float a, const void *x, int64_t n) { axpy_avx2(y, a, x, n); }
#endif

typedef void (*dot4_fn)(const float *q, int64_t q_stride, const void *row, int64_t n, float *out4);
typedef void (*axpy4_fn)(float *y, int64_t y_stride, const float *p4, const void *row, int64_t n);

static dot_fn pick_dot(int f16) {
#if MG_X86
    if (mg_get_simd_level() >= 1) return f16 ? dot_f16_avx2 : dot_f32_avx2;
#endif
    return f16 ? dot_f16_scalar : dot_f32_scalar;
}

static axpy_fn pick_axpy(int f16) {
#if MG_X86
    if (mg_get_simd_level() >= 1) return f16 ? axpy_f16_avx2 : axpy_f32_avx2;
#endif
    return f16 ? axpy_f16_scalar : axpy_f32_scalar;
}

/* ------------------------------------------------------------------------------------------ RMSNorm */
int mg_rms_norm(float *out, const float *x, const float *w, int64_t n_rows, int64_t d, float eps) {
    if (!out || !x || !w || n_rows < 0 || d <= 0 || !(eps >= 0.0f)) return MG_ESIZE;
    int simd = mg_get_simd_level();
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * d;
        float *yr = out + r * d;
        float ss;
#if MG_X86
        if (simd >= 1) ss = sumsq_avx2(xr, d);
        else
#endif
        {
            (void)simd;
            double acc = 0.0;
            for (int64_t i = 0; i < d; i++) acc += (double)xr[i] * (double)xr[i];
            ss = (float)acc;
        }
        float scale = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t i = 0; i < d; i++) yr[i] = (xr[i] * scale) * w[i];
    }
    return MG_OK;
}

/* ------------------------------------------------------------------------------------------ RoPE */
int mg_rope_norm(float *x, int64_t n_tok, int64_t n_head, int64_t n_rot, int64_t tok_stride, int64_t head_stride,
                 const int32_t *pos, const float *inv_freq, float magnitude) {
    if (!x || !pos || !inv_freq || n_tok < 0 || n_head < 0 || n_rot <= 0 || (n_rot & 1) || tok_stride < 0 || head_stride < 0)
        return MG_ESIZE;
    int64_t half = n_rot / 2;
    for (int64_t t = 0; t < n_tok; t++) {
        float p = (float)pos[t];
        for (int64_t i = 0; i < half; i++) {
            float theta = p * inv_freq[i]; /* float32 product, as the reference computes it */
            float c = cosf(theta) * magnitude, s = sinf(theta) * magnitude;
            for (int64_t h = 0; h < n_head; h++) {
                float *v = x + t * tok_stride + h * head_stride + 2 * i;
                float a = v[0], b = v[1];
                v[0] = a * c - b * s;
                v[1] = a * s + b * c;
            }
        }
    }
    return MG_OK;
}

/* ------------------------------------------------------------------------------------------ softmax, SwiGLU */
static void softmax_inplace(float *x, int64_t n) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    if (m == -INFINITY) { /* all masked: define as uniform zero output */
        for (int64_t i = 0; i < n; i++) x[i] = 0.0f;
        return;
    }
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

int mg_softmax_rows(float *x, int64_t n_rows, int64_t n) {
    if (!x || n_rows < 0 || n <= 0) return MG_ESIZE;
    for (int64_t r = 0; r < n_rows; r++) softmax_inplace(x + r * n, n);
    return MG_OK;
}

#if MG_X86
/* exp(x) for 8 floats: Cephes-style range reduction x = k ln2 + r and a degree-7 polynomial, ~2 ulp;
 * inputs are clamped to [-87.3, 88.7] (results stay normal and finite). */
MG_TARGET_AVX2 static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

MG_TARGET_AVX2 static void silu_mul_avx2(float *out, const float *g, const float *u, int64_t n) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 vg = _mm256_loadu_ps(g + i);
        __m256 d = _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, vg)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(vg, d), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
#endif

int mg_silu_mul(float *out, const float *g, const float *u, int64_t n) {
    if (!out || !g || !u || n < 0) return MG_ESIZE;
#if MG_X86
    if (mg_get_simd_level() >= 1) {
        silu_mul_avx2(out, g, u, n);
        return MG_OK;
    }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    return MG_OK;
}

/* ------------------------------------------------------------------------------------------ latent attention */
typedef struct {
    float *out;
    const float *q;
    const char *kv;
    int64_t n_tok, n_head, d_k, d_v, kv_stride /* bytes */, n_kv0;
    float scale;
    int64_t n_hgroup, hg_size; /* heads are split into n_hgroup groups of hg_size (last may be short) */
    dot_fn dot;
    axpy_fn axpy;
    dot4_fn dot4;   /* NULL unless d_k % 16 == 0 and SIMD is on */
    axpy4_fn axpy4; /* NULL unless d_v % 8 == 0 and SIMD is on */
    int failed;     /* set (by any thread) when scratch allocation fails */
} attn_args;

/* One work item: query token t, heads [h0, h1).  Each cache row is read once for all heads of the item. */
static void attn_item(const attn_args *a, float *sc, int64_t t, int64_t h0, int64_t h1) {
    int64_t n_kv = a->n_kv0 + t + 1, nh = h1 - h0;
    const float *qt = a->q + (t * a->n_head + h0) * a->d_k;
    float *ot = a->out + (t * a->n_head + h0) * a->d_v;
    int64_t nh4 = a->dot4 ? nh / 4 * 4 : 0, nv4 = a->axpy4 ? nh / 4 * 4 : 0;
    for (int64_t j = 0; j < n_kv; j++) {
        const void *row = a->kv + j * a->kv_stride;
        float d4[4];
        for (int64_t h = 0; h < nh4; h += 4) {
            a->dot4(qt + h * a->d_k, a->d_k, row, a->d_k, d4);
            for (int k = 0; k < 4; k++) sc[(h + k) * n_kv + j] = d4[k] * a->scale;
        }
        for (int64_t h = nh4; h < nh; h++) sc[h * n_kv + j] = a->dot(qt + h * a->d_k, row, a->d_k) * a->scale;
    }
    for (int64_t h = 0; h < nh; h++) softmax_inplace(sc + h * n_kv, n_kv);
    memset(ot, 0, sizeof(float) * (size_t)(nh * a->d_v));
    for (int64_t j = 0; j < n_kv; j++) {
        const void *row = a->kv + j * a->kv_stride;
        for (int64_t h = 0; h < nv4; h += 4) {
            float p4[4] = {sc[h * n_kv + j], sc[(h + 1) * n_kv + j], sc[(h + 2) * n_kv + j], sc[(h + 3) * n_kv + j]};
            a->axpy4(ot + h * a->d_v, a->d_v, p4, row, a->d_v);
        }
        for (int64_t h = nv4; h < nh; h++) a->axpy(ot + h * a->d_v, sc[h * n_kv + j], row, a->d_v);
    }
}

static void attn_task(void *arg, int ith, int nth) {
    attn_args *a = arg;
    int64_t n_items = a->n_tok * a->n_hgroup;
    if (ith >= n_items) return;
    float *sc = malloc(sizeof(float) * (size_t)(a->hg_size * (a->n_kv0 + a->n_tok)));
    if (!sc) {
        a->failed = 1; /* benign race: every writer stores 1 */
        return;
    }
    /* interleaved items: later tokens attend to more rows, so striding balances the load */
    for (int64_t it = ith; it < n_items; it += nth) {
        int64_t t = it / a->n_hgroup, g = it % a->n_hgroup;
        int64_t h0 = g * a->hg_size, h1 = h0 + a->hg_size < a->n_head ? h0 + a->hg_size : a->n_head;
        attn_item(a, sc, t, h0, h1);
    }
    free(sc);
}

int mg_latent_attention(mg_pool *pool, float *out, const float *q, int64_t n_tok, int64_t n_head, int64_t d_k, int64_t d_v,
                        const void *kv, int kv_type, int64_t kv_stride, int64_t n_kv0, float scale) {
    if (kv_type != MG_F32 && kv_type != MG_F16) return MG_EUNSUPPORTED;
    if (!out || !q || !kv || n_tok < 0 || n_head <= 0 || d_k <= 0 || d_v <= 0 || d_v > d_k || kv_stride < d_k || n_kv0 < 0)
        return MG_ESIZE;
    if (n_tok == 0) return MG_OK;
    int nth = pool ? mg_pool_n_threads(pool) : 1;
    /* waking the workers costs ~10-100 us (more on a busy machine): small jobs run on the caller alone */
    double macs = (double)n_tok * (double)(n_kv0 + (n_tok + 1) / 2) * (double)n_head * (double)(d_k + d_v);
    if (macs < 4.0e6) nth = 1;
    int f16 = kv_type == MG_F16;
    int64_t stride_bytes = kv_stride * (f16 ? 2 : 4);
    attn_args a = {out, q, kv, n_tok, n_head, d_k, d_v, stride_bytes, n_kv0, scale, 1, n_head, pick_dot(f16), pick_axpy(f16),
                   NULL, NULL, 0};
#if MG_X86
    if (mg_get_simd_level() >= 1) {
        if (d_k % 16 == 0) a.dot4 = f16 ? dot4_f16_avx2 : dot4_f32_avx2;
        if (d_v % 8 == 0) a.axpy4 = f16 ? axpy4_f16_avx2 : axpy4_f32_avx2;
    }
#endif
    if (n_tok < nth) { /* few tokens (decode): split the heads instead */
        a.n_hgroup = nth < n_head ? nth : n_head;
        a.hg_size = (n_head + a.n_hgroup - 1) / a.n_hgroup;
        a.n_hgroup = (n_head + a.hg_size - 1) / a.hg_size;
    }
    int64_t n_items = n_tok * a.n_hgroup;
    mg_pool_run(pool, attn_task, &a, (int)(n_items < nth ? n_items : nth));
    return a.failed ? MG_ENOMEM : MG_OK;
}

/* ------------------------------------------------------------------------------------------ MoE routing */
/* index of the largest value among the n entries of v not yet taken (ties: lowest index); -1 if none */
static int64_t argmax_free(const float *v, const unsigned char *taken, int64_t n) {
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++) {
        if (taken[i]) continue;
        if (best < 0 || v[i] > v[best]) best = i;
    }
    return best;
}

int mg_moe_route(int32_t *ids, float *w, const float *logits, int64_t n_tok, int64_t n_exp, int64_t k, int gating,
                 const float *bias, int64_t n_group, int64_t n_group_used, int norm, float scale) {
    if (!ids || !w || !logits || n_tok < 0 || n_exp <= 0 || k <= 0 || k > n_exp) return MG_ESIZE;
    if (gating != 1 && gating != 2) return MG_EUNSUPPORTED;
    if (n_group < 1) n_group = 1;
    if (n_group > 1) {
        if (n_exp % n_group || n_group_used < 1 || n_group_used > n_group || n_group_used * (n_exp / n_group) < k) return MG_ESIZE;
        if (gating == 2 && n_exp / n_group < 2) return MG_ESIZE;
    }
    int64_t gsize = n_exp / n_group;
    float *probs = malloc(sizeof(float) * (size_t)(2 * n_exp + n_group));
    unsigned char *taken = malloc((size_t)(n_exp + n_group));
    if (!probs || !taken) {
        free(probs);
        free(taken);
        return MG_ENOMEM;
    }
    float *sel = probs + n_exp, *gscore = sel + n_exp;
    unsigned char *gtaken = taken + n_exp;
    if (scale == 0.0f) scale = 1.0f;
    for (int64_t t = 0; t < n_tok; t++) {
        const float *l = logits + t * n_exp;
        if (gating == 1) {
            memcpy(probs, l, sizeof(float) * (size_t)n_exp);
            softmax_inplace(probs, n_exp);
        } else {
            for (int64_t e = 0; e < n_exp; e++) probs[e] = 1.0f / (1.0f + expf(-l[e]));
        }
        for (int64_t e = 0; e < n_exp; e++) sel[e] = bias ? probs[e] + bias[e] : probs[e];
        memset(taken, 0, (size_t)n_exp);
        if (n_group > 1) {
            for (int64_t g = 0; g < n_group; g++) {
                const float *s = sel + g * gsize;
                float m1 = -INFINITY, m2 = -INFINITY; /* top-2 of the group */
                for (int64_t e = 0; e < gsize; e++) {
                    if (s[e] > m1) {
                        m2 = m1;
                        m1 = s[e];
                    } else if (s[e] > m2) {
                        m2 = s[e];
                    }
                }
                gscore[g] = gating == 1 ? m1 : m1 + m2; /* V2 rule: group max; V3 rule: sum of top-2 */
            }
            memset(gtaken, 0, (size_t)n_group);
            for (int64_t r = 0; r < n_group_used; r++) gtaken[argmax_free(gscore, gtaken, n_group)] = 1;
            for (int64_t g = 0; g < n_group; g++)
                if (!gtaken[g]) memset(taken + g * gsize, 1, (size_t)gsize); /* experts of dropped groups are out */
        }
        int32_t *it = ids + t * k;
        float *wt = w + t * k;
        float sum = 0.0f;
        for (int64_t r = 0; r < k; r++) {
            int64_t e = argmax_free(sel, taken, n_exp);
            taken[e] = 1;
            it[r] = (int32_t)e;
            wt[r] = probs[e];
            sum += probs[e];
        }
        float f = scale;
        if (norm) f = scale / (sum + 1e-20f);
        for (int64_t r = 0; r < k; r++) wt[r] *= f;
    }
    free(probs);
    free(taken);
    return MG_OK;
}
