/* ggml_mm_bench.c - times llama.cpp's ggml_mul_mat / ggml_mul_mat_id on one shape, for tools/bench_kernels.py.
 *
 * Compiled at run time by bench_kernels.py against a llama.cpp build (headers in DIR/ggml/include, libraries in
 * DIR/build/bin); written against ggml's public API only.  Usage:
 *
 *   ggml_mm_bench TYPE N_OUT N_IN N_TOK N_EXPERT THREADS REPS COPIES REPACK SCALE_OFFSETS
 *
 * TYPE is a ggml type id; N_EXPERT = 0 times ggml_mul_mat(W [N_OUT x N_IN], X [N_TOK x N_IN]), N_EXPERT > 0
 * times ggml_mul_mat_id on an [N_EXPERT, N_OUT, N_IN] stack with every expert chosen once by each token.
 * COPIES weight tensors of random bytes (with the f16 scales at the comma-separated byte offsets of every block
 * set to 0.01, so all values are finite) are cycled so the working set can exceed the caches.  REPACK = 1 puts
 * the weights in the CPU backend's first "extra" buffer type (CPU_REPACK: what llama-bench / llama.cpp use for
 * the types it repacks, e.g. Q4_0, Q4_K, IQ4_NL on AVX2) when that type has a repacked layout for the tensor;
 * otherwise (or REPACK = 0) in the plain CPU buffer.  A persistent ggml threadpool of THREADS threads, as in
 * llama-bench.  Prints one line:  "<best seconds per pass over the copies> <repacked 0/1>".
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#define MAX_COPIES 64

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_next(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

int main(int argc, char **argv) {
    if (argc != 11) {
        fprintf(stderr, "usage: %s TYPE N_OUT N_IN N_TOK N_EXPERT THREADS REPS COPIES REPACK SCALE_OFFSETS\n", argv[0]);
        return 2;
    }
    enum ggml_type type = (enum ggml_type)atoi(argv[1]);
    int64_t n_out = atoll(argv[2]), n_in = atoll(argv[3]), n_tok = atoll(argv[4]), n_exp = atoll(argv[5]);
    int n_threads = atoi(argv[6]), reps = atoi(argv[7]), copies = atoi(argv[8]), repack = atoi(argv[9]);
    int offs[8], n_offs = 0;
    for (char *p = argv[10]; *p && n_offs < 8;) {
        offs[n_offs++] = (int)strtol(p, &p, 10);
        if (*p == ',') p++;
    }
    if (n_out <= 0 || n_in <= 0 || n_tok <= 0 || n_exp < 0 || n_threads <= 0 || reps <= 0 || copies <= 0 ||
        copies > MAX_COPIES || type < 0 || type >= GGML_TYPE_COUNT || n_in % ggml_blck_size(type)) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    ggml_backend_t be = ggml_backend_cpu_init();
    if (!be) return 1;
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
    struct ggml_threadpool *tp = ggml_threadpool_new(&tpp);
    ggml_backend_cpu_set_n_threads(be, n_threads);
    ggml_backend_cpu_set_threadpool(be, tp);
    ggml_backend_dev_t dev = ggml_backend_get_device(be);
    ggml_backend_buffer_type_t wbuft = ggml_backend_cpu_buffer_type();
    if (repack) {
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
        ggml_backend_dev_get_extra_bufts_t get_extra =
            (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
        ggml_backend_buffer_type_t *extra = get_extra ? get_extra(dev) : NULL;
        if (extra && extra[0]) wbuft = extra[0];
    }
    int64_t n_mat = n_exp > 0 ? n_exp : 1;
    size_t row_bytes = ggml_row_size(type, n_in);
    size_t w_bytes = row_bytes * (size_t)(n_out * n_mat);
    size_t blk_bytes = ggml_type_size(type);
    uint8_t *host = malloc(w_bytes);
    if (!host) return 1;

    /* weights: one context per copy (so a copy that cannot be repacked can fall back to the plain buffer) */
    struct ggml_context *wctx[MAX_COPIES];
    struct ggml_tensor *W[MAX_COPIES];
    ggml_backend_buffer_t wbuf[MAX_COPIES];
    int repacked = 0;
    for (int c = 0; c < copies; c++) {
        for (size_t i = 0; i < w_bytes; i += 8) {
            uint64_t v = rng_next();
            memcpy(host + i, &v, w_bytes - i < 8 ? w_bytes - i : 8);
        }
        const uint16_t h001 = 0x211f; /* 0.01 in IEEE half */
        for (size_t b = 0; b + blk_bytes <= w_bytes; b += blk_bytes)
            for (int k = 0; k < n_offs; k++) memcpy(host + b + offs[k], &h001, 2);
        for (int attempt = 0; attempt < 2; attempt++) {
            ggml_backend_buffer_type_t bt = attempt == 0 ? wbuft : ggml_backend_cpu_buffer_type();
            struct ggml_init_params ip = {ggml_tensor_overhead() * 2, NULL, true};
            wctx[c] = ggml_init(ip);
            W[c] = n_exp > 0 ? ggml_new_tensor_3d(wctx[c], type, n_in, n_out, n_exp) : ggml_new_tensor_2d(wctx[c], type, n_in, n_out);
            wbuf[c] = ggml_backend_alloc_ctx_tensors_from_buft(wctx[c], bt);
            if (!wbuf[c]) return 1;
            if (bt == ggml_backend_cpu_buffer_type()) break;
            if (W[c]->extra != NULL) { /* the repack buffer has a layout for this tensor */
                repacked = 1;
                break;
            }
            ggml_backend_buffer_free(wbuf[c]); /* no repacked layout: the plain CPU buffer, as llama.cpp does */
            ggml_free(wctx[c]);
        }
        ggml_backend_tensor_set(W[c], host, 0, w_bytes);
    }

    /* activations, ids and the graphs */
    struct ggml_init_params ip = {ggml_tensor_overhead() * (size_t)(4 * copies + 8) + ggml_graph_overhead() * (size_t)copies, NULL, true};
    struct ggml_context *ctx = ggml_init(ip);
    struct ggml_tensor *X = n_exp > 0 ? ggml_new_tensor_3d(ctx, GGML_TYPE_F32, n_in, 1, n_tok) : ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_in, n_tok);
    struct ggml_tensor *ids = n_exp > 0 ? ggml_new_tensor_2d(ctx, GGML_TYPE_I32, n_exp, n_tok) : NULL;
    struct ggml_cgraph *gf[MAX_COPIES];
    for (int c = 0; c < copies; c++) {
        struct ggml_tensor *Y = n_exp > 0 ? ggml_mul_mat_id(ctx, W[c], X, ids) : ggml_mul_mat(ctx, W[c], X);
        gf[c] = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf[c], Y);
    }
    ggml_backend_buffer_t abuf = ggml_backend_alloc_ctx_tensors(ctx, be);
    if (!abuf) return 1;
    float *xh = malloc((size_t)(n_in * n_tok) * sizeof(float));
    for (int64_t i = 0; i < n_in * n_tok; i++) xh[i] = (float)((double)(rng_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    ggml_backend_tensor_set(X, xh, 0, ggml_nbytes(X));
    if (ids) {
        int32_t *ih = malloc((size_t)(n_exp * n_tok) * sizeof(int32_t));
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t e = 0; e < n_exp; e++) ih[t * n_exp + e] = (int32_t)e;
        ggml_backend_tensor_set(ids, ih, 0, ggml_nbytes(ids));
        free(ih);
    }

    for (int c = 0; c < copies; c++) ggml_backend_graph_compute(be, gf[c]); /* warm up */
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        for (int c = 0; c < copies; c++) ggml_backend_graph_compute(be, gf[c]);
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    printf("%.9f %d\n", best, repacked);

    ggml_backend_buffer_free(abuf);
    ggml_free(ctx);
    for (int c = 0; c < copies; c++) {
        ggml_backend_buffer_free(wbuf[c]);
        ggml_free(wctx[c]);
    }
    ggml_backend_free(be);
    ggml_threadpool_free(tp);
    free(host);
    free(xh);
    return 0;
}
