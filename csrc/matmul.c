/* matmul.c - y = x W^T straight from the (mmap'd) weight rows, and the expert-indexed variant.
 *
 * 1. Activations are converted once per call into the weight type's activation format (vecdot.h).
 * 2. Work items are (block of up to TOK_BLOCK tokens) x (ROWS_PER_CHUNK output rows); threads take items from
 *    an atomic counter, so a slow (shared) core simply takes fewer.  Inside an item, tokens are processed
 *    in tiles of TOK_TILE: the item's weight rows stay in L1/L2 while they meet every activation row of
 *    the tile, and the dot kernels unpack each weight block once for up to 4 (Q4_K, Q6_K) or 8 tokens; types
 *    with a rows x tokens tile (Q4_0: the lanes are weight rows) take 8 rows per call.  An item with ONE
 *    activation row (decode; matmul_id with one token per expert) goes through mg_gemv_rows instead: 2 (or 8)
 *    weight rows per pass against the shared activation, prefetching the rows ahead.  Weights stream from
 *    memory once per token block (once per call for decode and for each expert of matmul_id).
 * 3. Every output element is computed by one dot-product call with a fixed block order, so results are
 *    bit-identical for any thread count and any chunk/tile assignment.
 * The expert variant sorts (token, slot) pairs by expert (counting sort), lays their activation rows out in
 * that order, and then runs the same chunked loop per expert, so each expert's weights stream once per call.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "moe_gguf.h"
#include "internal.h"
#include "vecdot.h"

#define ROWS_PER_CHUNK 16
#define GEMV_CHUNK_BYTES 1048576 /* decode: work items of about this many contiguous weight bytes (each item start
                                  * restarts a thread's DRAM stream: 64 KiB -> 1 MiB measured +10-25 % GB/s, 2 threads) */
#define GEMV_MIN_ITEMS 8       /* ... but at least this many items per thread, for balance */
#define TOK_TILE 8
#define TOK_BLOCK 32 /* work items are (up to 32 tokens) x (ROWS_PER_CHUNK rows), token blocks outermost */
#define MIN_MACS_PER_THREAD (1 << 18) /* below this, extra threads cost more to wake than they save */
#define MIN_QUANT_PER_THREAD (1 << 15)

typedef struct {
    const mg_dot_info *info;
    mg_dot_fn dot;
    mg_rowtile_fn rowtile; /* or NULL: dot per row */
    int wtype;
    const char *w;          /* expert 0, row 0 */
    size_t w_row_bytes;     /* bytes of one weight row */
    size_t w_expert_bytes;  /* bytes of one expert's matrix */
    int64_t n_out, n_in;
    /* activations */
    const float *x;
    char *act;
    size_t act_row_bytes;
    int64_t n_act;          /* activation rows */
    const int32_t *act_src; /* id variant: x row of each activation row (NULL: identity) */
    char *xq;               /* id variant with shared x: the n_x converted x rows, copied to their act rows */
    int64_t n_x;
    /* output */
    float *y;
    /* id variant: activation rows [seg_a[g], seg_a[g+1]) (at most TOK_BLOCK) belong to expert seg_e[g];
     * out_row gives the y row of each activation row */
    const int32_t *seg_e;
    const int64_t *seg_a;
    const int32_t *out_row;
    int64_t rows_per_chunk, chunks_per_expert, n_chunks;
    _Atomic int64_t next;   /* next work item of the compute phase */
    _Atomic int64_t qnext;  /* next row of the conversion / copy phases */
} mm_job;

/* The tasks hand out rows / items through atomic counters (mg_pool_run_dynamic): any subset of the threads
 * completes them, and which thread does what never changes a result. */
static void quantize_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    mm_job *j = arg;
    int64_t rows = j->xq ? j->n_x : j->n_act;
    for (int64_t r; (r = atomic_fetch_add_explicit(&j->qnext, 1, memory_order_relaxed)) < rows;) {
        if (j->xq) { /* shared x (matmul_id): convert each x row once */
            mg_act_quantize_row(j->wtype, j->x + r * j->n_in, j->xq + (size_t)r * j->act_row_bytes, j->n_in);
        } else {
            int64_t src = j->act_src ? j->act_src[r] : r;
            mg_act_quantize_row(j->wtype, j->x + src * j->n_in, j->act + (size_t)r * j->act_row_bytes, j->n_in);
        }
    }
}

static void copy_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    mm_job *j = arg;
    for (int64_t r; (r = atomic_fetch_add_explicit(&j->qnext, 1, memory_order_relaxed)) < j->n_act;) {
        memcpy(j->act + (size_t)r * j->act_row_bytes, j->xq + (size_t)j->act_src[r] * j->act_row_bytes, j->act_row_bytes);
    }
}

/* rows [r0, r1) of the matrix starting at w against activation rows [a0, a1); y row of activation row a is
 * out_row[a] (or a), column r. */
static void run_block(const mm_job *j, const char *w, int64_t r0, int64_t r1, int64_t a0, int64_t a1) {
    if (a1 - a0 == 1) { /* one activation row: the multi-row decode kernel, straight into y's row */
        int64_t yr = j->out_row ? j->out_row[a0] : a0;
        mg_gemv_rows(j->info, j->n_in, w, j->w_row_bytes, r0, r1, j->act + (size_t)a0 * j->act_row_bytes,
                     j->y + yr * j->n_out + r0);
        return;
    }
    float s[8 * TOK_TILE];
    for (int64_t t0 = a0; t0 < a1; t0 += TOK_TILE) {
        int nt = (int)(a1 - t0 < TOK_TILE ? a1 - t0 : TOK_TILE);
        const char *a = j->act + (size_t)t0 * j->act_row_bytes;
        if (j->rowtile) { /* kernels whose lanes are weight rows: 8 rows x the tile's tokens per call */
            for (int64_t r = r0; r < r1; r += 8) {
                int R = (int)(r1 - r < 8 ? r1 - r : 8);
                j->rowtile(j->n_in, w + (size_t)r * j->w_row_bytes, j->w_row_bytes, R, a, j->act_row_bytes, nt, s);
                for (int t = 0; t < nt; t++) {
                    int64_t yr = j->out_row ? j->out_row[t0 + t] : t0 + t;
                    for (int k = 0; k < R; k++) j->y[yr * j->n_out + r + k] = s[k * nt + t];
                }
            }
            continue;
        }
        for (int64_t r = r0; r < r1; r++) {
            j->dot(j->n_in, w + (size_t)r * j->w_row_bytes, a, j->act_row_bytes, nt, s);
            for (int t = 0; t < nt; t++) {
                int64_t yr = j->out_row ? j->out_row[t0 + t] : t0 + t;
                j->y[yr * j->n_out + r] = s[t];
            }
        }
    }
}

static void compute_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    mm_job *j = arg;
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (c >= j->n_chunks) break;
        int64_t u = c / j->chunks_per_expert, rb = c % j->chunks_per_expert;
        int64_t r0 = rb * j->rows_per_chunk, r1 = r0 + j->rows_per_chunk < j->n_out ? r0 + j->rows_per_chunk : j->n_out;
        if (j->seg_e) {
            const char *w = j->w + (size_t)j->seg_e[u] * j->w_expert_bytes;
            run_block(j, w, r0, r1, j->seg_a[u], j->seg_a[u + 1]);
        } else { /* u indexes a block of TOK_BLOCK activation rows (token-block-major order) */
            int64_t a0 = u * TOK_BLOCK, a1 = a0 + TOK_BLOCK < j->n_act ? a0 + TOK_BLOCK : j->n_act;
            run_block(j, j->w, r0, r1, a0, a1);
        }
    }
}

static int threads_for(const mm_job *j, double macs, int pool_n) {
    double n = macs / MIN_MACS_PER_THREAD;
    if (n > j->n_chunks) n = j->n_chunks;
    if (n > pool_n) n = pool_n;
    return n < 1 ? 1 : (int)n;
}

static void quantize_all(mg_pool *pool, mm_job *j) {
    int64_t rows = j->xq ? j->n_x : j->n_act;
    int64_t n = rows * j->n_in / MIN_QUANT_PER_THREAD;
    int pn = mg_pool_n_threads(pool);
    int nth = n < 1 ? 1 : (n > pn ? pn : (int)n);
    if (nth > rows) nth = (int)rows;
    atomic_store_explicit(&j->qnext, 0, memory_order_relaxed);
    mg_pool_run_dynamic(pool, quantize_task, j, nth);
    if (j->xq) {
        int64_t c = j->n_act * (int64_t)j->act_row_bytes / (MIN_QUANT_PER_THREAD * 4);
        atomic_store_explicit(&j->qnext, 0, memory_order_relaxed);
        mg_pool_run_dynamic(pool, copy_task, j, c < 1 ? 1 : (c > pn ? pn : (int)c));
    }
}

static int setup(mm_job *j, int type, const void *w, int64_t n_out, int64_t n_in, const float *x, float *y) {
    memset(j, 0, sizeof(*j));
    j->info = mg_dot_lookup(type);
    if (!j->info) return MG_EUNSUPPORTED;
    if (n_out <= 0 || n_in <= 0 || n_in % j->info->blck || !w || !x || !y) return MG_ESIZE;
    j->dot = mg_dot_kernel(j->info);
    j->rowtile = mg_rowtile_kernel(j->info);
    j->wtype = type;
    j->w = w;
    j->w_row_bytes = (size_t)(n_in / j->info->blck) * j->info->wbytes;
    j->w_expert_bytes = j->w_row_bytes * (size_t)n_out;
    j->n_out = n_out;
    j->n_in = n_in;
    j->x = x;
    j->y = y;
    j->act_row_bytes = mg_act_row_bytes(j->info, n_in);
    j->rows_per_chunk = ROWS_PER_CHUNK;
    j->chunks_per_expert = (n_out + ROWS_PER_CHUNK - 1) / ROWS_PER_CHUNK;
    return MG_OK;
}

/* Decode-sized calls (about one activation row per weight matrix): each work item streams its rows once, so
 * longer contiguous runs of rows (fewer item boundaries for the hardware prefetcher, fewer atomics) pay, as
 * long as every thread still gets GEMV_MIN_ITEMS items.  Only the row split changes, never a result. */
static void gemv_chunks(mm_job *j, int64_t n_units, int pool_n) {
    int64_t rows = (int64_t)(GEMV_CHUNK_BYTES / j->w_row_bytes) / ROWS_PER_CHUNK * ROWS_PER_CHUNK;
    int64_t cap = j->n_out * n_units / ((int64_t)GEMV_MIN_ITEMS * (pool_n > 0 ? pool_n : 1)) / ROWS_PER_CHUNK * ROWS_PER_CHUNK;
    if (rows > cap) rows = cap;
    if (rows <= ROWS_PER_CHUNK) return;
    j->rows_per_chunk = rows;
    j->chunks_per_expert = (j->n_out + rows - 1) / rows;
}

/* Per-thread scratch buffer (activation rows, expert lists), grown on demand and reused across calls: a fresh
 * allocation per call costs page faults that can exceed a small GEMM's compute.  Freed at thread exit. */
typedef struct { void *p; size_t n; } scratch_t;
static pthread_key_t g_scratch_key;
static pthread_once_t g_scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *v) {
    scratch_t *s = v;
    free(s->p);
    free(s);
}

static void scratch_init(void) { (void)pthread_key_create(&g_scratch_key, scratch_free); }

static void *scratch_get(size_t n) {
    pthread_once(&g_scratch_once, scratch_init);
    scratch_t *s = pthread_getspecific(g_scratch_key);
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s) return NULL;
        if (pthread_setspecific(g_scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (s->n < n) {
        void *p = NULL;
        size_t want = n + n / 4 + 4096;
        if (posix_memalign(&p, 64, want) != 0) return NULL;
        free(s->p);
        s->p = p;
        s->n = want;
    }
    return s->p;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

int mg_matmul(mg_pool *pool, int type, const void *w, int64_t n_out, int64_t n_in, const float *x, int64_t n_tok,
              float *y) {
    mm_job j;
    int rc = setup(&j, type, w, n_out, n_in, x, y);
    if (rc) return rc;
    if (n_tok < 0) return MG_ESIZE;
    if (n_tok == 0) return MG_OK;
    j.n_act = n_tok;
    j.act = scratch_get(j.act_row_bytes * (size_t)n_tok);
    if (!j.act) return MG_ENOMEM;
    quantize_all(pool, &j);
    if (n_tok <= 2) gemv_chunks(&j, 1, mg_pool_n_threads(pool));
    j.n_chunks = j.chunks_per_expert * ((n_tok + TOK_BLOCK - 1) / TOK_BLOCK);
    atomic_init(&j.next, 0);
    mg_pool_run_dynamic(pool, compute_task, &j, threads_for(&j, (double)n_out * n_in * n_tok, mg_pool_n_threads(pool)));
    return MG_OK;
}

int mg_matmul_id(mg_pool *pool, int type, const void *w, int64_t n_expert, int64_t n_out, int64_t n_in,
                 const float *x, int x_per_slot, const int32_t *ids, int64_t n_tok, int64_t k, float *y) {
    mm_job j;
    int rc = setup(&j, type, w, n_out, n_in, x, y);
    if (rc) return rc;
    if (n_expert <= 0 || n_tok < 0 || k <= 0 || !ids) return MG_ESIZE;
    if (n_tok > INT32_MAX / k) return MG_ESIZE;
    int64_t n_pairs = n_tok * k;
    if (n_pairs == 0) return MG_OK;
    for (int64_t p = 0; p < n_pairs; p++) {
        if (ids[p] < 0 || ids[p] >= n_expert) return MG_ESIZE;
    }
    /* one scratch block: activation rows, then the expert lists */
    size_t sz_act = align64(j.act_row_bytes * (size_t)n_pairs);
    size_t sz_cnt = align64(((size_t)n_expert + 1) * sizeof(int64_t));
    int64_t max_seg = n_expert + n_pairs / TOK_BLOCK + 1;
    size_t sz_seg_a = align64(((size_t)max_seg + 1) * sizeof(int64_t));
    size_t sz_seg_e = align64((size_t)max_seg * sizeof(int32_t));
    size_t sz_pairs = align64((size_t)n_pairs * sizeof(int32_t));
    size_t sz_xq = x_per_slot ? 0 : align64(j.act_row_bytes * (size_t)n_tok);
    char *mem = scratch_get(sz_act + sz_cnt + sz_seg_a + sz_seg_e + 2 * sz_pairs + sz_xq);
    if (!mem) return MG_ENOMEM;
    j.act = mem;
    char *m = mem + sz_act;
    int64_t *count = (int64_t *)(void *)m;
    int64_t *seg_a = (int64_t *)(void *)(m += sz_cnt);
    int32_t *seg_e = (int32_t *)(void *)(m += sz_seg_a);
    int32_t *out_row = (int32_t *)(void *)(m += sz_seg_e);
    int32_t *act_src = (int32_t *)(void *)(m += sz_pairs);
    if (!x_per_slot) {
        j.xq = m + sz_pairs;
        j.n_x = n_tok;
    }
    memset(count, 0, ((size_t)n_expert + 1) * sizeof(int64_t));
    /* counting sort of the (token, slot) pairs by expert; stable, so each expert's pairs stay in token order */
    for (int64_t p = 0; p < n_pairs; p++) count[ids[p]]++;
    /* segments: each used expert's rows in blocks of at most TOK_BLOCK, consecutive in activation-row order */
    int64_t n_seg = 0, acc = 0;
    for (int64_t e = 0; e < n_expert; e++) {
        int64_t c = count[e];
        for (int64_t a0 = acc; a0 < acc + c; a0 += TOK_BLOCK) {
            seg_e[n_seg] = (int32_t)e;
            seg_a[n_seg++] = a0;
        }
        count[e] = acc; /* now: the next free position of expert e */
        acc += c;
    }
    seg_a[n_seg] = acc;
    for (int64_t p = 0; p < n_pairs; p++) {
        int64_t pos = count[ids[p]]++;
        out_row[pos] = (int32_t)p;
        act_src[pos] = (int32_t)(x_per_slot ? p : p / k);
    }
    j.n_act = n_pairs;
    j.act_src = act_src;
    j.out_row = out_row;
    j.seg_e = seg_e;
    j.seg_a = seg_a;
    quantize_all(pool, &j);
    if (n_pairs <= 2 * n_seg) gemv_chunks(&j, n_seg, mg_pool_n_threads(pool));
    j.n_chunks = j.chunks_per_expert * n_seg;
    atomic_init(&j.next, 0);
    mg_pool_run_dynamic(pool, compute_task, &j, threads_for(&j, (double)n_out * n_in * n_pairs, mg_pool_n_threads(pool)));
    return rc;
}

/* ---- read bandwidth probe (for tools/bench_kernels.py) ---- */

typedef struct {
    const uint8_t *buf;
    size_t n;
    double part[256];
} sum_job;

#if MG_X86
#include <immintrin.h>
MG_TARGET_AVX2 static double sum_bytes_avx2(const uint8_t *p, size_t n) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 64 <= n; i += 64) { /* sad against zero: 4 x u64 partial sums per 32 bytes */
        acc0 = _mm256_add_epi64(acc0, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(const void *)(p + i)), _mm256_setzero_si256()));
        acc1 = _mm256_add_epi64(acc1, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(const void *)(p + i + 32)), _mm256_setzero_si256()));
    }
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)(void *)t, _mm256_add_epi64(acc0, acc1));
    uint64_t s = t[0] + t[1] + t[2] + t[3];
    for (; i < n; i++) s += p[i];
    return (double)s;
}
#endif

static double sum_bytes(const uint8_t *p, size_t n) {
#if MG_X86
    if (mg_get_simd_level() >= 1) return sum_bytes_avx2(p, n);
#endif
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    return (double)s;
}

static void sum_task(void *arg, int ith, int nth) {
    sum_job *j = arg;
    size_t per = (j->n / (size_t)nth) & ~(size_t)63;
    size_t a = per * (size_t)ith, b = ith == nth - 1 ? j->n : a + per;
    j->part[ith] = sum_bytes(j->buf + a, b - a);
}

double mg_read_sum(mg_pool *pool, int n_threads, const void *buf, size_t nbytes) {
    sum_job j;
    j.buf = buf;
    j.n = nbytes;
    int nth = n_threads < 1 ? 1 : n_threads;
    if (nth > mg_pool_n_threads(pool)) nth = mg_pool_n_threads(pool) > 0 ? mg_pool_n_threads(pool) : 1;
    mg_pool_run(pool, sum_task, &j, nth);
    double s = 0.0;
    for (int i = 0; i < nth; i++) s += j.part[i];
    return s;
}
