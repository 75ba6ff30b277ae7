/* moe.c - the fused MoE FFN step: (routing ->) gate/up -> SwiGLU -> down -> weighted sum, routed + shared experts.
 *
 * One pool dispatch runs six phases; work items are handed out through atomic counters, so any subset of the
 * threads completes a phase, and a thread waits only for items of the previous phase that other threads are
 * still computing (no barrier over threads: a worker that wakes up late joins whatever phase is current).
 *   0. h quantized once per distinct activation format (router, gate, up, shared gate/up).
 *   1. router logits (optional) in row chunks; the thread finishing the last chunk runs mg_moe_route.
 *   2. gate and up rows of the same chunk of one chosen (or shared) expert together: a = silu(g) * u written
 *      straight away (mg_silu_mul on whole chunks, so the bits equal an unfused silu_mul over the rows).
 *   3. each a row quantized into its down weight's activation format.
 *   4. down rows per (chosen or shared expert, row chunk): each item streams one matrix's rows contiguously
 *      (measured faster than items reading k+1 matrices' rows in short interleaved bursts).
 *   5. per output row chunk: out[r] = sum_k w_k * d_k[r] (+ d_sh[r]), in slot order.
 * Every output element is computed by one fixed sequence of dot products and float adds, so results are
 * bit-identical for any thread count.  Scratch comes from the caller (mg_moe_ffn_work_bytes), nothing is
 * allocated per call.  Weights stream once per token (this is the decode kernel; prefill with many tokens is
 * better served by the expert-grouped mg_matmul_id).
 */
#define _POSIX_C_SOURCE 200809L
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>

#include "moe_gguf.h"
#include "internal.h"
#include "vecdot.h"

#if MG_X86
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define ITEM_BYTES 524288 /* target weight bytes per work item (128 KiB -> 512 KiB: +7-50 % decode, 3 of 3 pairs) */
#define MIN_ITEMS 8       /* ... but at least this many items per thread */
#define ROW_ALIGN 16      /* rows per item: a multiple of this */
#define MAX_ROWS 256      /* rows per item at most (stack buffers) */
#define SPIN_YIELD 4096   /* PAUSEs before a waiting thread starts yielding its core */

enum { PH_QH, PH_ROUTER, PH_GATEUP, PH_QA, PH_DOWN, PH_RED, N_PH };
enum { MAX_HFMT = 5 };

typedef struct {
    alignas(64) _Atomic int64_t claim; /* next item to hand out */
    alignas(64) _Atomic int64_t done;  /* items finished */
    _Atomic int ready;                 /* set (release) once every item and the epilogue are done */
    int64_t n;
} phase_t;

/* A job of phases run in order by any subset of the pool's threads (see the top of the file).  Embedded as the
 * first member of a job struct, so the callbacks can cast it back. */
typedef struct phased phased;
struct phased {
    phase_t *ph;
    int n_ph;
    void (*item)(phased *job, int ph, int64_t i);
    void (*finish)(phased *job, int ph); /* run by the thread that completes a phase's last item; may be NULL */
};

static void phases_reset(phase_t *ph, int n_ph) {
    for (int p = 0; p < n_ph; p++) {
        atomic_init(&ph[p].claim, 0);
        atomic_init(&ph[p].done, 0);
        atomic_init(&ph[p].ready, ph[p].n == 0);
    }
}

static void wait_ready(phase_t *p) {
    for (int i = 0; !atomic_load_explicit(&p->ready, memory_order_acquire); i++) {
        if (i < SPIN_YIELD) {
            CPU_RELAX();
        } else {
            sched_yield(); /* the thread we wait for may need this core */
        }
    }
}

static void phased_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    phased *job = arg;
    for (int ph = 0; ph < job->n_ph; ph++) {
        phase_t *p = &job->ph[ph];
        if (atomic_load_explicit(&p->ready, memory_order_acquire)) continue;
        int64_t mine = 0;
        for (int64_t i; (i = atomic_fetch_add_explicit(&p->claim, 1, memory_order_relaxed)) < p->n; mine++) job->item(job, ph, i);
        /* acq_rel: the last finisher sees every item's writes and publishes them (with its own) via `ready` */
        if (mine && atomic_fetch_add_explicit(&p->done, mine, memory_order_acq_rel) + mine == p->n) {
            if (job->finish) job->finish(job, ph);
            atomic_store_explicit(&p->ready, 1, memory_order_release);
        }
        wait_ready(p);
    }
}

/* one weight matrix (2-D, or one expert of a 3-D stack at base + e * expert_bytes) */
typedef struct {
    const mg_dot_info *info;
    int type;
    const char *base;
    size_t row_bytes, expert_bytes;
    int hf; /* which quantized h it multiplies (gate/up/router) */
} mat_t;

typedef struct {
    phased run; /* first member */
    phase_t ph[N_PH];
    const mg_moe_weights *m;
    const float *h;
    int64_t n_tok, D, F, Fs, E, k;
    int32_t *ids;
    float *wts;
    float *out;
    int has_sh, has_router;
    mat_t gate, up, down, sh_gate, sh_up, sh_down, router;
    /* distinct activation formats of h */
    int n_hf;
    int hf_type[MAX_HFMT];
    size_t hf_rb[MAX_HFMT];
    char *hq[MAX_HFMT];
    float *logits;       /* n_tok x E */
    float *a, *a_sh;     /* n_tok*k x F, n_tok x Fs */
    char *aq, *aq_sh;    /* quantized a rows */
    size_t aq_rb, aq_sh_rb;
    int64_t rows_r, cpe_r, rows_s, cpe_s, rows_gu, cpe_gu; /* rows per item / items per unit */
    int route_rc;
    float *dpart; /* down outputs: n_tok*k routed rows, then n_tok shared rows, of D */
    int64_t rows_dd, cpe_dd, rows_dsh, cpe_dsh, rows_red, cpe_red;
} moe_job;

/* activation format of a weight type (mirrors mg_act_quantize_row): types with equal values share rows */
static int act_fmt(int type) {
    switch (type) {
    case MG_F32: case MG_F16: case MG_BF16: return 0;
    case MG_Q4_0: case MG_Q5_0: case MG_Q8_0: case MG_IQ4_NL: return 1;
    case MG_Q4_1: case MG_Q5_1: return 2;
    default: return 3;
    }
}

/* do weight types a and b take the same activation rows? (same format and the same block geometry) */
static int same_act(int a, int b) {
    const mg_dot_info *ia = mg_dot_lookup(a), *ib = mg_dot_lookup(b);
    return act_fmt(a) == act_fmt(b) && ia && ib && ia->act_blck == ib->act_blck && ia->act_bytes == ib->act_bytes;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* rows per work item: about ITEM_BYTES of weights, at least MIN_ITEMS items per thread, a multiple of
 * ROW_ALIGN in [ROW_ALIGN, MAX_ROWS] */
static int64_t item_rows(size_t bytes_per_row, int64_t total_rows, int nth) {
    int64_t r = (int64_t)(ITEM_BYTES / (bytes_per_row ? bytes_per_row : 1));
    int64_t cap = total_rows / ((int64_t)MIN_ITEMS * (nth > 0 ? nth : 1));
    if (r > cap) r = cap;
    r = r / ROW_ALIGN * ROW_ALIGN;
    if (r < ROW_ALIGN) r = ROW_ALIGN;
    if (r > MAX_ROWS) r = MAX_ROWS;
    return r;
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

static int set_mat(mat_t *mt, int type, const void *p, int64_t n_rows, int64_t n_in) {
    mt->info = mg_dot_lookup(type);
    if (!mt->info) return MG_EUNSUPPORTED;
    if (!p || n_in <= 0 || n_in % mt->info->blck) return MG_ESIZE;
    mt->type = type;
    mt->base = p;
    mt->row_bytes = (size_t)(n_in / mt->info->blck) * mt->info->wbytes;
    mt->expert_bytes = mt->row_bytes * (size_t)n_rows;
    return MG_OK;
}

/* the index of h's activation format for weight type `type`, added if new */
static int add_hfmt(moe_job *j, int type) {
    for (int f = 0; f < j->n_hf; f++) {
        if (same_act(j->hf_type[f], type)) return f;
    }
    j->hf_type[j->n_hf] = type;
    return j->n_hf++;
}

/* Checks the arguments and fills everything but the scratch pointers; *work_bytes gets the scratch size. */
static int plan(moe_job *j, const mg_moe_weights *m, int64_t n_tok, int nth, size_t *work_bytes) {
    memset(j, 0, sizeof(*j));
    if (!m || n_tok < 0) return MG_ESIZE;
    j->m = m;
    j->n_tok = n_tok;
    j->D = m->n_embd;
    j->F = m->n_ff;
    j->E = m->n_expert;
    j->k = m->n_expert_used;
    if (j->D <= 0 || j->F <= 0 || j->E <= 0 || j->k <= 0 || j->k > j->E) return MG_ESIZE;
    if (n_tok > INT32_MAX / j->k) return MG_ESIZE;
    int rc;
    if (m->gate_up_merged) { /* [E, 2F, D]: gate rows then up rows per expert */
        if ((rc = set_mat(&j->gate, m->gate_type, m->gate, 2 * j->F, j->D))) return rc;
        j->up = j->gate;
        j->up.base = j->gate.base + (size_t)j->F * j->gate.row_bytes;
    } else {
        if ((rc = set_mat(&j->gate, m->gate_type, m->gate, j->F, j->D))) return rc;
        if ((rc = set_mat(&j->up, m->up_type, m->up, j->F, j->D))) return rc;
    }
    if ((rc = set_mat(&j->down, m->down_type, m->down, j->D, j->F))) return rc;
    j->has_sh = m->sh_gate != NULL;
    if (j->has_sh) {
        j->Fs = m->n_ff_sh;
        if (j->Fs <= 0) return MG_ESIZE;
        if ((rc = set_mat(&j->sh_gate, m->sh_gate_type, m->sh_gate, j->Fs, j->D))) return rc;
        if ((rc = set_mat(&j->sh_up, m->sh_up_type, m->sh_up, j->Fs, j->D))) return rc;
        if ((rc = set_mat(&j->sh_down, m->sh_down_type, m->sh_down, j->D, j->Fs))) return rc;
    }
    j->has_router = m->router != NULL;
    if (j->has_router) {
        if ((rc = set_mat(&j->router, m->router_type, m->router, j->E, j->D))) return rc;
        if (m->gating != 1 && m->gating != 2) return MG_EUNSUPPORTED;
        if (m->n_group > 1 && (j->E % m->n_group || m->n_group_used < 1 || m->n_group_used > m->n_group ||
                               m->n_group_used * (j->E / m->n_group) < j->k || (m->gating == 2 && j->E / m->n_group < 2)))
            return MG_ESIZE;
        j->router.hf = add_hfmt(j, m->router_type);
    }
    j->gate.hf = add_hfmt(j, j->gate.type);
    j->up.hf = add_hfmt(j, j->up.type);
    if (j->has_sh) {
        j->sh_gate.hf = add_hfmt(j, j->sh_gate.type);
        j->sh_up.hf = add_hfmt(j, j->sh_up.type);
    }
    size_t total = 0;
    for (int f = 0; f < j->n_hf; f++) {
        j->hf_rb[f] = mg_act_row_bytes(mg_dot_lookup(j->hf_type[f]), j->D);
        total += align64(j->hf_rb[f] * (size_t)n_tok);
    }
    int64_t n_pairs = n_tok * j->k;
    j->aq_rb = mg_act_row_bytes(j->down.info, j->F);
    j->aq_sh_rb = j->has_sh ? mg_act_row_bytes(j->sh_down.info, j->Fs) : 0;
    total += align64(sizeof(float) * (size_t)(n_tok * j->E)) + align64(sizeof(float) * (size_t)(n_pairs * j->F)) +
             align64(sizeof(float) * (size_t)(n_tok * j->Fs)) + align64(j->aq_rb * (size_t)n_pairs) +
             align64(j->aq_sh_rb * (size_t)n_tok) + align64(sizeof(float) * (size_t)(n_tok * (j->k + 1) * j->D));
    *work_bytes = total + 64; /* + slack for aligning the caller's pointer */
    /* work items */
    j->rows_r = item_rows(j->router.row_bytes, j->E * n_tok, nth);
    j->cpe_r = j->has_router ? cdiv(j->E, j->rows_r) : 0;
    int64_t gu_rows = n_pairs * j->F + n_tok * j->Fs;
    j->rows_gu = item_rows(j->gate.row_bytes + j->up.row_bytes, gu_rows, nth);
    j->cpe_gu = cdiv(j->F, j->rows_gu);
    j->rows_s = j->rows_gu;
    j->cpe_s = j->has_sh ? cdiv(j->Fs, j->rows_s) : 0;
    j->ph[PH_QH].n = n_tok * j->n_hf;
    j->ph[PH_ROUTER].n = n_tok * j->cpe_r;
    j->ph[PH_GATEUP].n = n_pairs * j->cpe_gu + n_tok * j->cpe_s;
    j->ph[PH_QA].n = n_pairs + (j->has_sh ? n_tok : 0);
    j->rows_dd = item_rows(j->down.row_bytes, j->D * n_tok * j->k, nth);
    j->cpe_dd = cdiv(j->D, j->rows_dd);
    j->rows_dsh = j->has_sh ? item_rows(j->sh_down.row_bytes, j->D * n_tok, nth) : 16;
    j->cpe_dsh = j->has_sh ? cdiv(j->D, j->rows_dsh) : 0;
    j->rows_red = MAX_ROWS;
    j->cpe_red = cdiv(j->D, j->rows_red);
    j->ph[PH_DOWN].n = n_tok * j->k * j->cpe_dd + n_tok * j->cpe_dsh;
    j->ph[PH_RED].n = n_tok * j->cpe_red;
    return MG_OK;
}

static void route(moe_job *j) {
    const mg_moe_weights *m = j->m;
    int rc = mg_moe_route(j->ids, j->wts, j->logits, j->n_tok, j->E, j->k, m->gating, m->bias, m->n_group,
                          m->n_group_used, m->norm, m->scale);
    if (rc != MG_OK) { /* cannot happen after plan()'s checks but for allocation failure: keep later phases safe */
        j->route_rc = rc ? rc : MG_EOTHER;
        memset(j->ids, 0, sizeof(int32_t) * (size_t)(j->n_tok * j->k));
        memset(j->wts, 0, sizeof(float) * (size_t)(j->n_tok * j->k));
    }
}

static void do_item(moe_job *j, int ph, int64_t i) {
    float g[MAX_ROWS], u[MAX_ROWS];
    switch (ph) {
    case PH_QH: {
        int64_t t = i / j->n_hf;
        int f = (int)(i % j->n_hf);
        mg_act_quantize_row(j->hf_type[f], j->h + t * j->D, j->hq[f] + (size_t)t * j->hf_rb[f], j->D);
        return;
    }
    case PH_ROUTER: {
        int64_t t = i / j->cpe_r, r0 = (i % j->cpe_r) * j->rows_r, r1 = r0 + j->rows_r < j->E ? r0 + j->rows_r : j->E;
        const mat_t *mt = &j->router;
        mg_gemv_rows(mt->info, j->D, mt->base, mt->row_bytes, r0, r1, j->hq[mt->hf] + (size_t)t * j->hf_rb[mt->hf],
                     j->logits + t * j->E + r0);
        return;
    }
    case PH_GATEUP: {
        int64_t n_routed = j->n_tok * j->k * j->cpe_gu;
        const mat_t *mg, *mu;
        int64_t t, r0, r1, e = 0;
        float *dst;
        if (i < n_routed) {
            int64_t p = i / j->cpe_gu;
            t = p / j->k;
            e = j->ids[p];
            r0 = (i % j->cpe_gu) * j->rows_gu;
            r1 = r0 + j->rows_gu < j->F ? r0 + j->rows_gu : j->F;
            mg = &j->gate;
            mu = &j->up;
            dst = j->a + p * j->F;
        } else {
            i -= n_routed;
            t = i / j->cpe_s;
            r0 = (i % j->cpe_s) * j->rows_s;
            r1 = r0 + j->rows_s < j->Fs ? r0 + j->rows_s : j->Fs;
            mg = &j->sh_gate;
            mu = &j->sh_up;
            dst = j->a_sh + t * j->Fs;
        }
        mg_gemv_rows(mg->info, j->D, mg->base + (size_t)e * mg->expert_bytes, mg->row_bytes, r0, r1,
                     j->hq[mg->hf] + (size_t)t * j->hf_rb[mg->hf], g);
        mg_gemv_rows(mu->info, j->D, mu->base + (size_t)e * mu->expert_bytes, mu->row_bytes, r0, r1,
                     j->hq[mu->hf] + (size_t)t * j->hf_rb[mu->hf], u);
        mg_silu_mul(dst + r0, g, u, r1 - r0);
        return;
    }
    case PH_QA: {
        int64_t n_pairs = j->n_tok * j->k;
        if (i < n_pairs) {
            mg_act_quantize_row(j->down.type, j->a + i * j->F, j->aq + (size_t)i * j->aq_rb, j->F);
        } else {
            i -= n_pairs;
            mg_act_quantize_row(j->sh_down.type, j->a_sh + i * j->Fs, j->aq_sh + (size_t)i * j->aq_sh_rb, j->Fs);
        }
        return;
    }
    case PH_DOWN: {
        int64_t n_routed = j->n_tok * j->k * j->cpe_dd;
        if (i < n_routed) {
            int64_t p = i / j->cpe_dd, r0 = (i % j->cpe_dd) * j->rows_dd, r1 = r0 + j->rows_dd < j->D ? r0 + j->rows_dd : j->D;
            const mat_t *md = &j->down;
            mg_gemv_rows(md->info, j->F, md->base + (size_t)j->ids[p] * md->expert_bytes, md->row_bytes, r0, r1,
                         j->aq + (size_t)p * j->aq_rb, j->dpart + p * j->D + r0);
        } else {
            i -= n_routed;
            int64_t t = i / j->cpe_dsh, r0 = (i % j->cpe_dsh) * j->rows_dsh, r1 = r0 + j->rows_dsh < j->D ? r0 + j->rows_dsh : j->D;
            const mat_t *md = &j->sh_down;
            mg_gemv_rows(md->info, j->Fs, md->base, md->row_bytes, r0, r1, j->aq_sh + (size_t)t * j->aq_sh_rb,
                         j->dpart + (j->n_tok * j->k + t) * j->D + r0);
        }
        return;
    }
    default: { /* PH_RED */
        int64_t t = i / j->cpe_red, r0 = (i % j->cpe_red) * j->rows_red, r1 = r0 + j->rows_red < j->D ? r0 + j->rows_red : j->D;
        float *o = j->out + t * j->D;
        for (int64_t r = r0; r < r1; r++) {
            float acc = j->wts[t * j->k] * j->dpart[(t * j->k) * j->D + r];
            for (int64_t s = 1; s < j->k; s++) acc += j->wts[t * j->k + s] * j->dpart[(t * j->k + s) * j->D + r];
            if (j->has_sh) acc += j->dpart[(j->n_tok * j->k + t) * j->D + r];
            o[r] = acc;
        }
        return;
    }
    }
}

static void moe_item(phased *run, int ph, int64_t i) { do_item((moe_job *)(void *)run, ph, i); }

static void moe_finish(phased *run, int ph) {
    if (ph == PH_ROUTER) route((moe_job *)(void *)run);
}

static int setup_job(moe_job *j, mg_pool *pool, const mg_moe_weights *m, const float *h, int64_t n_tok, int32_t *ids,
                     float *weights, float *out, void *work, size_t work_bytes, int *nth) {
    int pn = mg_pool_n_threads(pool);
    *nth = pn > 0 ? pn : 1;
    size_t need = 0;
    int rc = plan(j, m, n_tok, *nth, &need);
    if (rc) return rc;
    if (!h || !ids || !weights || !out || !work || work_bytes < need) return MG_ESIZE;
    if (!j->has_router) {
        for (int64_t p = 0; p < n_tok * j->k; p++) {
            if (ids[p] < 0 || ids[p] >= j->E) return MG_ESIZE;
        }
    }
    j->h = h;
    j->ids = ids;
    j->wts = weights;
    j->out = out;
    char *w = (char *)work + ((64 - (uintptr_t)work % 64) % 64);
    for (int f = 0; f < j->n_hf; f++) {
        j->hq[f] = w;
        w += align64(j->hf_rb[f] * (size_t)n_tok);
    }
    int64_t n_pairs = n_tok * j->k;
    j->logits = (float *)(void *)w;
    w += align64(sizeof(float) * (size_t)(n_tok * j->E));
    j->a = (float *)(void *)w;
    w += align64(sizeof(float) * (size_t)(n_pairs * j->F));
    j->a_sh = (float *)(void *)w;
    w += align64(sizeof(float) * (size_t)(n_tok * j->Fs));
    j->aq = w;
    w += align64(j->aq_rb * (size_t)n_pairs);
    j->aq_sh = w;
    w += align64(j->aq_sh_rb * (size_t)n_tok);
    j->dpart = (float *)(void *)w;
    phases_reset(j->ph, N_PH);
    j->run.ph = j->ph;
    j->run.n_ph = N_PH;
    j->run.item = moe_item;
    j->run.finish = moe_finish;
    return MG_OK;
}

int mg_moe_ffn_work_bytes(const mg_moe_weights *m, int64_t n_tok, size_t *bytes) {
    moe_job j;
    size_t need = 0;
    if (!bytes) return MG_ESIZE;
    int rc = plan(&j, m, n_tok, 1, &need);
    if (rc) return rc;
    *bytes = need;
    return MG_OK;
}

int mg_moe_ffn(mg_pool *pool, const mg_moe_weights *m, const float *h, int64_t n_tok, int32_t *ids, float *weights,
               float *out, void *work, size_t work_bytes) {
    moe_job j;
    int nth;
    int rc = setup_job(&j, pool, m, h, n_tok, ids, weights, out, work, work_bytes, &nth);
    if (rc) return rc;
    if (n_tok == 0) return MG_OK;
    mg_pool_run_dynamic(pool, phased_task, &j.run, nth);
    return j.route_rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * Batched decode GEMV: several matrices, each with its own input rows, in one dispatch.  Stage s's inputs are
 * quantized (once per distinct input and activation format) after stage s-1's outputs are complete, so stage-1
 * descriptors may read stage-0 outputs (e.g. W_UV per head, then W_O).  Phases: Q(0) G(0) Q(1) G(1) ...
 * ---------------------------------------------------------------------------------------------------------- */
enum { MAX_STAGES = 4 };

typedef struct { /* one distinct input: rows x + t * x_stride, quantized for weight type `type` */
    const float *x;
    int64_t x_stride, n_in;
    int type;
    size_t rb;
    char *q;
} gb_input;

typedef struct { /* per descriptor */
    const mg_dot_info *info;
    size_t row_bytes;
    int64_t rows, first; /* rows per item; index of its first item in its stage's G phase */
    int64_t xi;          /* its input */
} gb_aux;

typedef struct {
    phased run; /* first member */
    phase_t ph[2 * MAX_STAGES];
    const mg_gemv_desc *d;
    int64_t n_desc, n_tok;
    int n_stage;
    gb_aux *aux;
    int64_t *order;                   /* descriptors sorted by stage (stable) */
    int64_t st_first[MAX_STAGES + 1]; /* stage s: order[st_first[s] .. st_first[s+1]) */
    gb_input *in;
    int64_t in_first[MAX_STAGES + 1]; /* stage s: in[in_first[s] .. in_first[s+1]) */
} gb_job;

static int gb_check(const mg_gemv_desc *d, int64_t n_desc, int64_t n_tok, size_t *work_bytes) {
    if (!d || n_desc <= 0 || n_tok < 0 || n_desc > INT32_MAX) return MG_ESIZE;
    size_t total = align64(sizeof(gb_aux) * (size_t)n_desc) + align64(sizeof(int64_t) * (size_t)n_desc) +
                   align64(sizeof(gb_input) * (size_t)n_desc);
    for (int64_t i = 0; i < n_desc; i++) {
        const mg_dot_info *info = mg_dot_lookup(d[i].type);
        if (!info) return MG_EUNSUPPORTED;
        if (!d[i].w || !d[i].x || !d[i].y || d[i].n_out <= 0 || d[i].n_in <= 0 || d[i].n_in % info->blck) return MG_ESIZE;
        if (d[i].stage < 0 || d[i].stage >= MAX_STAGES) return MG_ESIZE;
        if (n_tok > 1 && (d[i].x_stride < d[i].n_in || d[i].y_stride < d[i].n_out)) return MG_ESIZE;
        total += align64(mg_act_row_bytes(info, d[i].n_in) * (size_t)n_tok); /* upper bound: inputs not merged */
    }
    *work_bytes = total + 64;
    return MG_OK;
}

static void gb_item(phased *run, int ph, int64_t i) {
    gb_job *j = (gb_job *)(void *)run;
    int s = ph / 2;
    if (ph % 2 == 0) { /* Q(s): input in_first[s] + i / n_tok, token i % n_tok */
        const gb_input *in = &j->in[j->in_first[s] + i / j->n_tok];
        int64_t t = i % j->n_tok;
        mg_act_quantize_row(in->type, in->x + t * in->x_stride, in->q + (size_t)t * in->rb, in->n_in);
        return;
    }
    /* G(s): the descriptor whose items hold i (binary search over the stage's `first`) */
    int64_t lo = j->st_first[s], hi = j->st_first[s + 1] - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (j->aux[j->order[mid]].first <= i) lo = mid; else hi = mid - 1;
    }
    int64_t di = j->order[lo];
    const mg_gemv_desc *d = &j->d[di];
    const gb_aux *a = &j->aux[di];
    const gb_input *in = &j->in[a->xi];
    int64_t r0 = (i - a->first) * a->rows, r1 = r0 + a->rows < d->n_out ? r0 + a->rows : d->n_out;
    for (int64_t t = 0; t < j->n_tok; t++) {
        mg_gemv_rows(a->info, d->n_in, d->w, a->row_bytes, r0, r1, in->q + (size_t)t * in->rb, d->y + t * d->y_stride + r0);
    }
}

int mg_gemv_batch_work_bytes(const mg_gemv_desc *d, int64_t n_desc, int64_t n_tok, size_t *bytes) {
    if (!bytes) return MG_ESIZE;
    return gb_check(d, n_desc, n_tok, bytes);
}

int mg_gemv_batch(mg_pool *pool, const mg_gemv_desc *d, int64_t n_desc, int64_t n_tok, void *work, size_t work_bytes) {
    size_t need = 0;
    int rc = gb_check(d, n_desc, n_tok, &need);
    if (rc) return rc;
    if (!work || work_bytes < need) return MG_ESIZE;
    if (n_tok == 0) return MG_OK;
    int pn = mg_pool_n_threads(pool), nth = pn > 0 ? pn : 1;
    gb_job j;
    memset(&j, 0, sizeof(j));
    j.d = d;
    j.n_desc = n_desc;
    j.n_tok = n_tok;
    char *w = (char *)work + ((64 - (uintptr_t)work % 64) % 64);
    j.aux = (gb_aux *)(void *)w;
    w += align64(sizeof(gb_aux) * (size_t)n_desc);
    j.order = (int64_t *)(void *)w;
    w += align64(sizeof(int64_t) * (size_t)n_desc);
    j.in = (gb_input *)(void *)w;
    w += align64(sizeof(gb_input) * (size_t)n_desc);
    /* descriptors by stage; per stage the distinct inputs, the rows per item and each descriptor's first item */
    int64_t n_in = 0, n_ord = 0;
    for (int s = 0; s < MAX_STAGES; s++) {
        j.st_first[s] = n_ord;
        j.in_first[s] = n_in;
        size_t stage_bytes = 0;
        for (int64_t i = 0; i < n_desc; i++) {
            if (d[i].stage != s) continue;
            gb_aux *a = &j.aux[i];
            a->info = mg_dot_lookup(d[i].type);
            a->row_bytes = (size_t)(d[i].n_in / a->info->blck) * a->info->wbytes;
            stage_bytes += a->row_bytes * (size_t)d[i].n_out;
            j.order[n_ord++] = i;
            int64_t x = j.in_first[s];
            while (x < n_in && !(j.in[x].x == d[i].x && j.in[x].n_in == d[i].n_in && same_act(j.in[x].type, d[i].type) &&
                                 (n_tok == 1 || j.in[x].x_stride == d[i].x_stride)))
                x++;
            if (x == n_in) {
                gb_input *in = &j.in[n_in++];
                in->x = d[i].x;
                in->x_stride = d[i].x_stride;
                in->n_in = d[i].n_in;
                in->type = d[i].type;
                in->rb = mg_act_row_bytes(a->info, d[i].n_in);
                in->q = w;
                w += align64(in->rb * (size_t)n_tok);
            }
            a->xi = x;
        }
        if (n_ord > j.st_first[s]) j.n_stage = s + 1;
        size_t target = stage_bytes / ((size_t)MIN_ITEMS * (size_t)nth);
        if (target > ITEM_BYTES) target = ITEM_BYTES;
        int64_t items = 0;
        for (int64_t o = j.st_first[s]; o < n_ord; o++) {
            gb_aux *a = &j.aux[j.order[o]];
            int64_t rows = (int64_t)(target / a->row_bytes) / ROW_ALIGN * ROW_ALIGN;
            a->rows = rows < ROW_ALIGN ? ROW_ALIGN : rows;
            a->first = items;
            items += cdiv(d[j.order[o]].n_out, a->rows);
        }
        j.ph[2 * s].n = (n_in - j.in_first[s]) * n_tok;
        j.ph[2 * s + 1].n = items;
    }
    j.st_first[MAX_STAGES] = n_ord;
    j.in_first[MAX_STAGES] = n_in;
    phases_reset(j.ph, 2 * MAX_STAGES);
    j.run.ph = j.ph;
    j.run.n_ph = 2 * j.n_stage;
    j.run.item = gb_item;
    j.run.finish = NULL;
    mg_pool_run_dynamic(pool, phased_task, &j.run, nth);
    return MG_OK;
}

/* ------------------------------------------------------------------------------------------------------------
 * MLA decode bookkeeping for one token (composes mg_rope_norm / mg_rms_norm, so the bits equal the unfused ops).
 * ---------------------------------------------------------------------------------------------------------- */
int mg_mla_decode_prep(float *q, int64_t n_head, int64_t q_head, int64_t n_rot, float *qa, int64_t kv_lora, float *ckv,
                       const float *norm_w, float eps, int32_t pos, const float *inv_freq, float magnitude, void *kv_row,
                       int kv_type) {
    if (!q || !qa || !ckv || !norm_w || !inv_freq || !kv_row || n_head <= 0 || n_rot <= 0 || (n_rot & 1) ||
        q_head < n_rot || kv_lora <= 0 || (kv_type != 0 && kv_type != 1) || !(eps >= 0.0f))
        return MG_ESIZE;
    int64_t qa_head = kv_lora + n_rot;
    int rc = mg_rope_norm(q + (q_head - n_rot), 1, n_head, n_rot, 0, q_head, &pos, inv_freq, magnitude);
    if (!rc) rc = mg_rope_norm(ckv + kv_lora, 1, 1, n_rot, 0, 0, &pos, inv_freq, magnitude);
    if (!rc) rc = mg_rms_norm(ckv, ckv, norm_w, 1, kv_lora, eps);
    if (rc) return rc;
    for (int64_t h = 0; h < n_head; h++) {
        memcpy(qa + h * qa_head + kv_lora, q + h * q_head + (q_head - n_rot), sizeof(float) * (size_t)n_rot);
    }
    if (kv_type == 0) {
        memcpy(kv_row, ckv, sizeof(float) * (size_t)qa_head);
    } else {
        uint16_t *dst = kv_row;
        for (int64_t i = 0; i < qa_head; i++) dst[i] = mg_f32_to_f16(ckv[i]);
    }
    return MG_OK;
}
