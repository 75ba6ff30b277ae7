/* nn.c - neural-net ops: RMSNorm, RoPE (NORM / adjacent-pair style, any frequency table, e.g. YaRN),
 * row softmax, SiLU*mul, causal attention over one shared latent K/V head (MLA absorbed form) and
 * top-k MoE routing.  Every kernel has a plain C path; the hot ones (RMSNorm, attention) add an AVX2+FMA
 * path chosen at run time through mg_get_simd_level().  The kernels know no architecture. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe_gguf.h"
#include "internal.h"
#include "vecdot.h"

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
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * d;
        float *yr = out + r * d;
        /* ggml's arithmetic: float squares summed in double, mean rounded to float, 1/sqrtf(mean + eps) */
        double acc = 0.0;
        for (int64_t i = 0; i < d; i++) acc += (double)(xr[i] * xr[i]);
        const float mean = (float)(acc / (double)d);
        const float scale = 1.0f / sqrtf(mean + eps);
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
    /* waking the workers costs ~5-100 us (more on a busy machine): only small jobs run on the caller alone.  Measured
     * on the V2-Lite decode (16 heads, 576/512 dims, f16 cache): 2 threads from ~17 cached rows on (0.25 M MACs)
     * took 28 us instead of 57 us at 31 rows and 128 us instead of 275 us at 201 rows; below that, 1 thread. */
    double macs = (double)n_tok * (double)(n_kv0 + (n_tok + 1) / 2) * (double)n_head * (double)(d_k + d_v);
    if (macs < 0.25e6) nth = 1;
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

/* ==========================================================================================================
 * llama.cpp's CPU arithmetic (ggml-cpu on x86 with AVX2/FMA/F16C, flash attention off), reproduced bit for
 * bit so that a quantized model gives llama.cpp's logits exactly (rounding differences of 1 ulp grow through
 * the 8-bit activation quantization of later layers into ~1-logit differences).  Facts used (read from ggml's
 * source, not copied): RoPE caches theta = pos, theta *= base^(-2/n_rot) per pair, cosf/sinf; GELU goes
 * through a table of f16(gelu(h)) indexed by f16(x); attention with an F16 K/V cache rounds q and the softmax
 * probabilities to f16, multiplies with F32 FMA accumulation whose lane layout depends on the batch: one 8-lane
 * accumulator (llamafile's tinyBLAS, n_tok >= 2) or four (ggml_vec_dot_f16, one token); softmax uses a
 * polynomial expf (the ARM optimized-routines algorithm) and sums 8-lane chunk sums in double.
 * ======================================================================================================== */

/* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): an AVX 8-lane horizontal sum (high+low halves, movehl, movehdup) */
static float ll_hsum8(const float l[8]) {
    float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    return (a0 + a2) + (a1 + a3);
}

/* the reduction of ggml's 4 x 8-lane F16 dot accumulators: (A0+A2)+(A1+A3) per lane, then high+low halves,
 * then two hadds: (t0+t1)+(t2+t3) */
static float ll_reduce4x8(const float *A /* [4][8] */) {
    float x[8], t[4];
    for (int l = 0; l < 8; l++) x[l] = (A[l] + A[16 + l]) + (A[8 + l] + A[24 + l]);
    for (int k = 0; k < 4; k++) t[k] = x[k] + x[k + 4];
    return (t[0] + t[1]) + (t[2] + t[3]);
}

/* expf of the ARM optimized-routines vector algorithm (as ggml_v_expf), for x <= 0: n = round(x/ln2) by the
 * 1.5*2^23 shift, b = x - n*ln2 (two FMA steps), degree-5 polynomial, times 2^n.  x < -87.3 (|n| > 126,
 * where that algorithm leaves its main path) gives 0 here: such weights are below 2^-126 and vanish in f16. */
static float ll_expf(float x) {
    const float r = 0x1.8p23f;
    float z = fmaf(x, 0x1.715476p+0f, r);
    float n = z - r;
    if (!(fabsf(n) <= 126.0f)) return 0.0f; /* also -inf (masked) and NaN */
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    uint32_t zb, one = 0x3f800000u, kb;
    memcpy(&zb, &z, 4);
    kb = (zb << 23) + one;
    float k;
    memcpy(&k, &kb, 4);
    float u = b * b;
    float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                   0x1.ffffecp-1f * b);
    return fmaf(j, k, k);
}

static inline float ll_f16r(float x) { return mg_f16_to_f32(mg_f32_to_f16(x)); }

/* q . k over d (a multiple of 32) of f16-valued floats q and an IEEE-half row k, in the lane layout of
 * mode 0 (one 8-lane accumulator: tinyBLAS) or mode 1 (four: ggml_vec_dot_f16). */
static float ll_dot16_scalar(const float *q, const uint16_t *k, int64_t d, int mode) {
    float A[32] = {0};
    int span = mode ? 32 : 8;
    for (int64_t i = 0; i < d; i++) {
        float *a = &A[i % span];
        *a = fmaf(mg_f16_to_f32(k[i]), q[i], *a);
    }
    return mode ? ll_reduce4x8(A) : ll_hsum8(A);
}

#if MG_X86
MG_TARGET_AVX2 static float ll_dot16_avx2(const float *q, const uint16_t *k, int64_t d, int mode) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < d; i += 32) {
        for (int s = 0; s < 4; s++) {
            __m128i h;
            memcpy(&h, k + i + 8 * s, 16);
            int slot = mode ? s : 0;
            a[slot] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(q + i + 8 * s), a[slot]);
        }
    }
    float l[32];
    for (int s = 0; s < 4; s++) _mm256_storeu_ps(l + 8 * s, a[s]);
    return mode ? ll_reduce4x8(l) : ll_hsum8(l);
}

/* acc[slot][0..d) += p * v[0..d) (v IEEE half), d a multiple of 8 */
MG_TARGET_AVX2 static void ll_axpy16_avx2(float *acc, float p, const uint16_t *v, int64_t d) {
    __m256 vp = _mm256_set1_ps(p);
    for (int64_t i = 0; i < d; i += 8) {
        __m128i h;
        memcpy(&h, v + i, 16);
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(_mm256_cvtph_ps(h), vp, _mm256_loadu_ps(acc + i)));
    }
}
/* ll_expf on 8 lanes (the same operations, fused where the scalar uses fmaf: bit-identical) */
MG_TARGET_AVX2 static __m256 ll_expf8(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    __m256 n = _mm256_sub_ps(z, r);
    __m256 ok = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), n), _mm256_set1_ps(126.0f), _CMP_LE_OQ);
    __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(z), 23), _mm256_set1_epi32(0x3f800000)));
    __m256 u = _mm256_mul_ps(b, b);
    __m256 j = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                                               _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
                               u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    return _mm256_and_ps(ok, _mm256_fmadd_ps(j, k, k));
}

/* x rounded to f16 and back, n a multiple of 8 */
MG_TARGET_AVX2 static void ll_f16r_avx2(float *dst, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
}

/* o[i] = the lane reduction (ll_hsum8 / ll_reduce4x8) of acc[s * d + i] over the span slots, 8 dims at a time */
MG_TARGET_AVX2 static void ll_reduce_avx2(float *o, const float *acc, int span, int64_t d) {
    for (int64_t i = 0; i < d; i += 8) {
        __m256 a[32];
        for (int s = 0; s < span; s++) a[s] = _mm256_loadu_ps(acc + s * d + i);
        if (span == 32)
            for (int l = 0; l < 8; l++) a[l] = _mm256_add_ps(_mm256_add_ps(a[l], a[16 + l]), _mm256_add_ps(a[8 + l], a[24 + l]));
        __m256 t0 = _mm256_add_ps(a[0], a[4]), t1 = _mm256_add_ps(a[1], a[5]), t2 = _mm256_add_ps(a[2], a[6]), t3 = _mm256_add_ps(a[3], a[7]);
        __m256 r = span == 32 ? _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3))
                              : _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3));
        _mm256_storeu_ps(o + i, r);
    }
}

/* softmax numerators of one chunk of 8 cells (masked lanes hold -inf) in place; returns their lane sum */
MG_TARGET_AVX2 static float ll_exp_chunk_avx2(float *l, float mx) {
    __m256 e = ll_expf8(_mm256_sub_ps(_mm256_loadu_ps(l), _mm256_set1_ps(mx)));
    _mm256_storeu_ps(l, e);
    return ll_hsum8(l);
}
#endif

static void ll_axpy16_scalar(float *acc, float p, const uint16_t *v, int64_t d) {
    for (int64_t i = 0; i < d; i++) acc[i] = fmaf(mg_f16_to_f32(v[i]), p, acc[i]);
}

typedef struct {
    float *out;
    const float *q;
    const uint16_t *kv;
    int64_t n_tok, n_head, n_head_kv, d_k, d_v, row_stride, n_kv0, window;
    int mode, simd, failed;
} ll_attn_args;

/* query token t, head h: scores, softmax, weighted values (see mg_attention_f16_ggml) */
static void ll_attn_item(const ll_attn_args *a, float *sc, float *qh, float *acc, int64_t t, int64_t h) {
    const int64_t p = a->n_kv0 + t, g = h / (a->n_head / a->n_head_kv), hw = a->d_v + a->d_k;
    const int64_t lo = a->window > 0 && p - a->window + 1 > 0 ? p - a->window + 1 : 0;
    const float *qs = a->q + (t * a->n_head + h) * a->d_k;
#if MG_X86
    if (a->simd) ll_f16r_avx2(qh, qs, a->d_k);
    else
#endif
        for (int64_t i = 0; i < a->d_k; i++) qh[i] = ll_f16r(qs[i]);
    float mx = -INFINITY;
    for (int64_t j = lo; j <= p; j++) {
        const uint16_t *k = a->kv + j * a->row_stride + g * hw + a->d_v;
#if MG_X86
        float s = a->simd ? ll_dot16_avx2(qh, k, a->d_k, a->mode) : ll_dot16_scalar(qh, k, a->d_k, a->mode);
#else
        float s = ll_dot16_scalar(qh, k, a->d_k, a->mode);
#endif
        sc[j] = s;
        mx = s > mx ? s : mx;
    }
    /* exp and the sum: chunks of 8 cache cells (masked cells are 0), each summed as 8 lanes, in double */
    double sum = 0.0;
    for (int64_t c0 = lo / 8 * 8; c0 <= p; c0 += 8) {
        float l[8];
        for (int u = 0; u < 8; u++) l[u] = c0 + u >= lo && c0 + u <= p ? sc[c0 + u] : -INFINITY;
#if MG_X86
        if (a->simd) sum += (double)ll_exp_chunk_avx2(l, mx);
        else
#endif
        {
            for (int u = 0; u < 8; u++) l[u] = ll_expf(l[u] - mx);
            sum += (double)ll_hsum8(l);
        }
        for (int u = 0; u < 8; u++)
            if (c0 + u >= lo && c0 + u <= p) sc[c0 + u] = l[u];
    }
    const float inv = (float)(1.0 / sum);
    const int span = a->mode ? 32 : 8;
    memset(acc, 0, sizeof(float) * (size_t)(span * a->d_v));
    for (int64_t j = lo; j <= p; j++) {
        float pj = ll_f16r(sc[j] * inv);
        if (pj == 0.0f) continue; /* adds +0 to every lane: no change */
        const uint16_t *v = a->kv + j * a->row_stride + g * hw;
        float *ac = acc + (j % span) * a->d_v;
#if MG_X86
        if (a->simd) ll_axpy16_avx2(ac, pj, v, a->d_v);
        else
#endif
            ll_axpy16_scalar(ac, pj, v, a->d_v);
    }
    float *o = a->out + (t * a->n_head + h) * a->d_v;
#if MG_X86
    if (a->simd) {
        ll_reduce_avx2(o, acc, span, a->d_v);
        return;
    }
#endif
    for (int64_t i = 0; i < a->d_v; i++) {
        float l[32];
        for (int s = 0; s < span; s++) l[s] = acc[s * a->d_v + i];
        o[i] = a->mode ? ll_reduce4x8(l) : ll_hsum8(l);
    }
}

static void ll_attn_task(void *arg, int ith, int nth) {
    ll_attn_args *a = arg;
    int64_t n_items = a->n_tok * a->n_head;
    if (ith >= n_items) return;
    size_t n_sc = (size_t)(a->n_kv0 + a->n_tok), n_acc = (size_t)(32 * a->d_v);
    float *buf = malloc(sizeof(float) * (n_sc + (size_t)a->d_k + n_acc));
    if (!buf) {
        a->failed = 1; /* benign race: every writer stores 1 */
        return;
    }
    for (int64_t it = ith; it < n_items; it += nth) ll_attn_item(a, buf, buf + n_sc, buf + n_sc + a->d_k, it / a->n_head, it % a->n_head);
    free(buf);
}

int mg_attention_f16_ggml(mg_pool *pool, float *out, const float *q, int64_t n_tok, int64_t n_head, int64_t n_head_kv,
                          int64_t d_k, int64_t d_v, const void *kv, int64_t row_stride, int64_t n_kv0, int64_t window) {
    if (!out || !q || !kv || n_tok < 0 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || d_k <= 0 || d_k % 32 ||
        d_v <= 0 || d_v % 32 || row_stride < n_head_kv * (d_k + d_v) || n_kv0 < 0 || window < 0)
        return MG_ESIZE;
    if (n_tok == 0) return MG_OK;
    ll_attn_args a = {out, q, kv, n_tok, n_head, n_head_kv, d_k, d_v, row_stride, n_kv0, window, n_tok >= 2 ? 0 : 1,
                      mg_get_simd_level() >= 1, 0};
    int nth = pool ? mg_pool_n_threads(pool) : 1;
    double macs = (double)n_tok * (double)(n_kv0 + (n_tok + 1) / 2) * (double)n_head * (double)(d_k + d_v);
    if (macs < 1.0e6) nth = 1;
    int64_t n_items = n_tok * n_head;
    mg_pool_run(pool, ll_attn_task, &a, (int)(n_items < nth ? n_items : nth));
    return a.failed ? MG_ENOMEM : MG_OK;
}

/* ------------------------------------------------------------------------------------ RoPE, ggml's way */
int mg_rope_ggml(float *x, int64_t n_tok, int64_t n_head, int64_t n_rot, int64_t tok_stride, int64_t head_stride,
                 const int32_t *pos, float freq_base, float freq_scale, const float *freq_factors, float mscale, int neox) {
    if (!x || !pos || n_tok < 0 || n_head < 0 || n_rot <= 0 || (n_rot & 1) || n_rot > 4096 || tok_stride < 0 ||
        head_stride < 0 || !(freq_base > 0.0f))
        return MG_ESIZE;
    const int64_t half = n_rot / 2;
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    float cs[4096];
    for (int64_t t = 0; t < n_tok; t++) {
        float theta = (float)pos[t];
        for (int64_t i = 0; i < half; i++) {
            float ff = freq_factors ? freq_factors[i] : 1.0f;
            float th = freq_scale * (theta / ff);
            cs[2 * i] = cosf(th) * mscale;
            cs[2 * i + 1] = sinf(th) * mscale;
            theta *= theta_scale;
        }
        for (int64_t h = 0; h < n_head; h++) {
            float *v = x + t * tok_stride + h * head_stride;
            for (int64_t i = 0; i < half; i++) {
                float *a = neox ? v + i : v + 2 * i, *b = neox ? v + i + half : v + 2 * i + 1;
                float x0 = *a, x1 = *b, c = cs[2 * i], s = cs[2 * i + 1];
                *a = fmaf(x0, c, -(x1 * s)); /* the FMA contraction of ggml's compiled x0*c - x1*s */
                *b = fmaf(x0, s, x1 * c);
            }
        }
    }
    return MG_OK;
}

/* ------------------------------------------------------------------------------------ GELU, ggml's table */
static float ll_gelu(float x) {
    const float a = 0.044715f, c = 0.79788456080286535587989211986876f;
    return 0.5f * x * (1.0f + tanhf(c * x * fmaf(a * x, x, 1.0f)));
}

int mg_gelu_table_f16(float *table) {
    if (!table) return MG_ESIZE;
    for (uint32_t i = 0; i < 65536u; i++) table[i] = ll_f16r(ll_gelu(mg_f16_to_f32((uint16_t)i)));
    return MG_OK;
}

int mg_geglu_table(float *out, const float *g, const float *u, int64_t n, const float *table) {
    if (!out || !g || !u || !table || n < 0) return MG_ESIZE;
    for (int64_t i = 0; i < n; i++) {
        float x = g[i];
        out[i] = x <= -10.0f ? 0.0f : x >= 10.0f ? x * u[i] : table[mg_f32_to_f16(x)] * u[i];
    }
    return MG_OK;
}

/* ------------------------------------------------------------ K-quant matmuls, llama.cpp's batched orders */
typedef struct {
    float *out;
    const uint8_t *w;
    const mg_block_q8_K *act;
    int64_t n_rows, nb, n_tok;
    int type, mode, simd, failed;
} ll_kq_args;

/* the 6-bit scales and mins of the 8 sub-blocks of a Q4_K super-block */
static void ll_q4k_scales(const uint8_t *s, int sc[8], int m[8]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = s[j] & 63;
            m[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
            m[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
}

/* integer dots of the 8 Q4_K sub-blocks (nibbles of qs[128]) with q8[256]: sub-block 2c = low nibbles of
 * qs[32c..32c+31] (elements 64c..64c+31), 2c+1 = their high nibbles (64c+32..64c+63) */
static void ll_q4k_dots_scalar(const uint8_t *qs, const int8_t *q8, int32_t dot[8]) {
    for (int c = 0; c < 4; c++) {
        int32_t lo = 0, hi = 0;
        for (int l = 0; l < 32; l++) {
            lo += (qs[32 * c + l] & 15) * q8[64 * c + l];
            hi += (qs[32 * c + l] >> 4) * q8[64 * c + 32 + l];
        }
        dot[2 * c] = lo;
        dot[2 * c + 1] = hi;
    }
}

/* Q6_K super-block -> 256 unsigned 6-bit codes (element order) */
static void ll_q6k_codes(const mg_block_q6_K *b, uint8_t q[MG_QK_K]) {
    for (int n = 0; n < 2; n++) {
        const uint8_t *ql = b->ql + 64 * n, *qh = b->qh + 32 * n;
        uint8_t *o = q + 128 * n;
        for (int l = 0; l < 32; l++) {
            o[l] = (uint8_t)((ql[l] & 15) | ((qh[l] & 3) << 4));
            o[l + 32] = (uint8_t)((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4));
            o[l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
            o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
        }
    }
}

/* dot16[j] = sum over the 16 elements of group j of code * q8 (the -32 offset is applied by the caller) */
static void ll_q6k_dots_scalar(const uint8_t *q, const int8_t *q8, int32_t dot16[16]) {
    for (int j = 0; j < 16; j++) {
        int32_t d = 0;
        for (int l = 0; l < 16; l++) d += q[16 * j + l] * q8[16 * j + l];
        dot16[j] = d;
    }
}

#if MG_X86
MG_TARGET_AVX2 static inline int32_t ll_hsum_i32x4(__m128i v) {
    v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 1));
    return _mm_cvtsi128_si32(v);
}

/* one Q4_K super-block against the T activation blocks y[t * ystride]: per token the 4 scale sums of 64
 * elements (isum) and min sums (imin), exact; nibbles unpacked once for all tokens */
MG_TARGET_AVX2 static void ll_q4k_block_avx2(const mg_block_q4_K *b, const int sc[8], const int m[8],
                                             const mg_block_q8_K *y, int64_t ystride, int64_t T, int32_t (*isum)[4],
                                             int32_t (*imin)[4]) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i lo[4], hi[4], s_lo[4], s_hi[4];
    for (int c = 0; c < 4; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(b->qs + 32 * c));
        lo[c] = _mm256_and_si256(v, m4);
        hi[c] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        s_lo[c] = _mm256_set1_epi16((short)sc[2 * c]);
        s_hi[c] = _mm256_set1_epi16((short)sc[2 * c + 1]);
    }
    for (int64_t t = 0; t < T; t++) {
        const mg_block_q8_K *yt = y + t * ystride;
        for (int c = 0; c < 4; c++) {
            __m256i a = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[c], _mm256_loadu_si256((const __m256i *)(const void *)(yt->qs + 64 * c))), s_lo[c]);
            __m256i e = _mm256_madd_epi16(_mm256_maddubs_epi16(hi[c], _mm256_loadu_si256((const __m256i *)(const void *)(yt->qs + 64 * c + 32))), s_hi[c]);
            __m256i v = _mm256_add_epi32(a, e);
            isum[t][c] = ll_hsum_i32x4(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
            imin[t][c] = m[2 * c] * (yt->bsums[4 * c] + yt->bsums[4 * c + 1]) + m[2 * c + 1] * (yt->bsums[4 * c + 2] + yt->bsums[4 * c + 3]);
        }
    }
}

/* sum_j scales[j] * (q - 32) . y over a Q6_K super-block (codes q unpacked) for the T activation blocks */
MG_TARGET_AVX2 static void ll_q6k_block_avx2(const uint8_t *q, const int8_t *scales, const mg_block_q8_K *y, int64_t ystride,
                                             int64_t T, int32_t *isum) {
    __m256i qv[8], sv[8];
    for (int k = 0; k < 8; k++) {
        qv[k] = _mm256_loadu_si256((const __m256i *)(const void *)(q + 32 * k));
        sv[k] = _mm256_set_m128i(_mm_set1_epi16(scales[2 * k + 1]), _mm_set1_epi16(scales[2 * k]));
    }
    for (int64_t t = 0; t < T; t++) {
        const mg_block_q8_K *yt = y + t * ystride;
        __m256i acc = _mm256_setzero_si256();
        for (int k = 0; k < 8; k++)
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(qv[k], _mm256_loadu_si256((const __m256i *)(const void *)(yt->qs + 32 * k))), sv[k]));
        int32_t off = 0;
        for (int j = 0; j < 16; j++) off += scales[j] * yt->bsums[j];
        isum[t] = ll_hsum_i32x4(_mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1))) - 32 * off;
    }
}
#endif

/* The float accumulation of one super-block for T tokens (fmaf is one instruction in the AVX2 build of the
 * same body).  Q4_K mode 0, repacked 8x8 GEMM: per 64 elements, scale and min sums in two FMA chains; mode 1,
 * tiled: res = d*isum - dmin*imin (fused), acc = fma(res, dy, acc) per super-block.  Q6_K (tiled): acc =
 * fma(d * isum, dy, acc). */
#define LL_Q4K_FMA_BODY                                                                                        \
    for (int64_t t = 0; t < T; t++) {                                                                          \
        const float dy = y[t * ystride].d;                                                                     \
        if (mode == 0) {                                                                                       \
            for (int sb = 0; sb < 4; sb++) {                                                                   \
                acc[t] = fmaf((float)isum[t][sb], d * dy, acc[t]);                                             \
                accm[t] = fmaf((float)imin[t][sb], dmin * dy, accm[t]);                                        \
            }                                                                                                  \
        } else {                                                                                               \
            int32_t s1 = isum[t][0] + isum[t][1] + isum[t][2] + isum[t][3];                                    \
            int32_t s2 = imin[t][0] + imin[t][1] + imin[t][2] + imin[t][3];                                    \
            acc[t] = fmaf(fmaf(-dmin, (float)s2, d * (float)s1), dy, acc[t]);                                  \
        }                                                                                                      \
    }
#define LL_Q4K_FMA_ARGS                                                                                        \
    float *acc, float *accm, int32_t (*isum)[4], int32_t (*imin)[4], float d, float dmin, const mg_block_q8_K *y, \
        int64_t ystride, int64_t T, int mode
#define LL_Q6K_FMA_BODY                                                                                        \
    for (int64_t t = 0; t < T; t++) acc[t] = fmaf(d * (float)isum[t], y[t * ystride].d, acc[t]);
#define LL_Q6K_FMA_ARGS float *acc, const int32_t *isum, float d, const mg_block_q8_K *y, int64_t ystride, int64_t T

static void ll_q4k_fma_scalar(LL_Q4K_FMA_ARGS) { LL_Q4K_FMA_BODY }
static void ll_q6k_fma_scalar(LL_Q6K_FMA_ARGS) { LL_Q6K_FMA_BODY }
#if MG_X86
MG_TARGET_AVX2 static void ll_q4k_fma_avx2(LL_Q4K_FMA_ARGS) { LL_Q4K_FMA_BODY }
MG_TARGET_AVX2 static void ll_q6k_fma_avx2(LL_Q6K_FMA_ARGS) { LL_Q6K_FMA_BODY }
#endif

static void ll_kq_task(void *arg, int ith, int nth) {
    ll_kq_args *a = arg;
    const size_t bbytes = a->type == MG_Q4_K   ? sizeof(mg_block_q4_K)
                          : a->type == MG_Q6_K ? sizeof(mg_block_q6_K)
                          : a->type == MG_Q5_K ? sizeof(mg_block_q5_K)
                                               : sizeof(mg_block_iq4_xs);
    const int64_t r0 = a->n_rows * ith / nth, r1 = a->n_rows * (ith + 1) / nth, T = a->n_tok;
    /* per token: acc, accm, and the integer sums of the current super-block */
    float *acc = malloc(sizeof(float) * (size_t)(2 * T) + sizeof(int32_t) * (size_t)(8 * T));
    if (!acc) {
        a->failed = 1; /* benign race: every writer stores 1 */
        return;
    }
    float *accm = acc + T;
    int32_t (*isum)[4] = (int32_t (*)[4])(void *)(accm + T), (*imin)[4] = isum + T;
    int32_t *isum6 = (int32_t *)isum;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = a->w + (size_t)r * (size_t)a->nb * bbytes;
        for (int64_t t = 0; t < T; t++) acc[t] = accm[t] = 0.0f;
        for (int64_t i = 0; i < a->nb; i++) {
            const mg_block_q8_K *y = a->act + i; /* token t's block: y[t * nb] */
            if (a->type == MG_Q5_K || a->type == MG_IQ4_XS) { /* tiled, as Q4_K (Q5_K) / as Q6_K (IQ4_XS) */
                const uint8_t *blk = row + (size_t)i * bbytes;
                int32_t *s1 = isum6, *s2 = (int32_t *)imin;
                mg_kq_block_sums(a->type, blk, y, a->nb, T, s1, s2);
                uint16_t dh[2];
                memcpy(dh, blk, 4); /* d (and dmin for Q5_K) */
                const float d = mg_f16_to_f32(dh[0]);
                if (a->type == MG_Q5_K) {
                    const float dmin = mg_f16_to_f32(dh[1]);
                    for (int64_t t = 0; t < T; t++)
                        acc[t] = fmaf(fmaf(-dmin, (float)s2[t], d * (float)s1[t]), y[t * a->nb].d, acc[t]);
                } else {
                    for (int64_t t = 0; t < T; t++) acc[t] = fmaf(d * (float)s1[t], y[t * a->nb].d, acc[t]);
                }
                continue;
            }
            if (a->type == MG_Q6_K) { /* tiled: acc = fma(d * isum, dy, acc) per super-block */
                mg_block_q6_K b;
                uint8_t q[MG_QK_K];
                memcpy(&b, row + (size_t)i * bbytes, sizeof(b));
                ll_q6k_codes(&b, q);
#if MG_X86
                if (a->simd) ll_q6k_block_avx2(q, b.scales, y, a->nb, T, isum6);
                else
#endif
                    for (int64_t t = 0; t < T; t++) {
                        const mg_block_q8_K *yt = y + t * a->nb;
                        int32_t dot16[16], sum = 0;
                        ll_q6k_dots_scalar(q, yt->qs, dot16);
                        for (int j = 0; j < 16; j++) sum += b.scales[j] * (dot16[j] - 32 * yt->bsums[j]);
                        isum6[t] = sum;
                    }
                const float d = mg_f16_to_f32(b.d);
#if MG_X86
                if (a->simd) ll_q6k_fma_avx2(acc, isum6, d, y, a->nb, T);
                else
#endif
                    ll_q6k_fma_scalar(acc, isum6, d, y, a->nb, T);
                continue;
            }
            mg_block_q4_K b;
            memcpy(&b, row + (size_t)i * bbytes, sizeof(b));
            int sc[8], m[8];
            ll_q4k_scales(b.scales, sc, m);
#if MG_X86
            if (a->simd) ll_q4k_block_avx2(&b, sc, m, y, a->nb, T, isum, imin);
            else
#endif
                for (int64_t t = 0; t < T; t++) {
                    const mg_block_q8_K *yt = y + t * a->nb;
                    int32_t dot[8];
                    ll_q4k_dots_scalar(b.qs, yt->qs, dot);
                    for (int sb = 0; sb < 4; sb++) { /* 64 elements: sub-blocks 2sb and 2sb+1 */
                        isum[t][sb] = sc[2 * sb] * dot[2 * sb] + sc[2 * sb + 1] * dot[2 * sb + 1];
                        imin[t][sb] = m[2 * sb] * (yt->bsums[4 * sb] + yt->bsums[4 * sb + 1]) +
                                      m[2 * sb + 1] * (yt->bsums[4 * sb + 2] + yt->bsums[4 * sb + 3]);
                    }
                }
            const float d = mg_f16_to_f32(b.d), dmin = mg_f16_to_f32(b.dmin);
#if MG_X86
            if (a->simd) ll_q4k_fma_avx2(acc, accm, isum, imin, d, dmin, y, a->nb, T, a->mode);
            else
#endif
                ll_q4k_fma_scalar(acc, accm, isum, imin, d, dmin, y, a->nb, T, a->mode);
        }
        for (int64_t t = 0; t < T; t++) a->out[t * a->n_rows + r] = acc[t] - accm[t];
    }
    free(acc);
}

int mg_kquant_gemm_ggml(mg_pool *pool, float *out, int type, int mode, const void *w, int64_t n_rows, int64_t n_in,
                        const float *x, int64_t n_tok) {
    if (!(type == MG_Q4_K && (mode == 0 || mode == 1)) &&
        !((type == MG_Q6_K || type == MG_Q5_K || type == MG_IQ4_XS) && mode == 1))
        return MG_EUNSUPPORTED;
    if (!out || !w || !x || n_rows <= 0 || n_in <= 0 || n_in % MG_QK_K || n_tok < 0) return MG_ESIZE;
    if (n_tok == 0) return MG_OK;
    const int64_t nb = n_in / MG_QK_K;
    mg_block_q8_K *act = malloc(sizeof(mg_block_q8_K) * (size_t)(nb * n_tok));
    if (!act) return MG_ENOMEM;
    for (int64_t t = 0; t < n_tok; t++) mg_quantize_row_q8_K(x + t * n_in, act + t * nb, n_in);
    ll_kq_args a = {out, w, act, n_rows, nb, n_tok, type, mode, mg_get_simd_level() >= 1, 0};
    int nth = pool ? mg_pool_n_threads(pool) : 1;
    mg_pool_run(pool, ll_kq_task, &a, (int)(n_rows < nth ? n_rows : nth));
    free(act);
    return a.failed ? MG_ENOMEM : MG_OK;
}
