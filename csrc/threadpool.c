/* threadpool.c - one persistent pthread pool: n_threads - 1 workers plus the calling thread.
 *
 * A job is published as one 64-bit atomic word (generation << 8 | number of participating threads), so a
 * worker always sees the job's generation and its thread count together.  Workers spin briefly on that word
 * (cheap back-to-back kernel calls during decoding), then sleep on a condition variable.  The caller runs
 * share 0 itself, then waits (spin, then sleep) until every participating worker has finished.
 * Concurrent callers of the same pool are serialized by a mutex.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "moe_gguf.h"
#include "internal.h"

#if MG_X86
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_ITERS 2000 /* roughly 20-50 us of spinning before sleeping */
#define MAX_THREADS 255

struct mg_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t call_mu; /* serializes mg_pool_run callers */
    pthread_mutex_t mu;      /* guards sleeping on cv_work / cv_done */
    pthread_cond_t cv_work, cv_done;
    _Atomic uint64_t job;    /* generation << 8 | n participating threads */
    _Atomic int pending;     /* participating workers not yet done */
    _Atomic int stop;
    mg_task_fn fn;           /* written by the caller before publishing `job` (release) */
    void *arg;
};

typedef struct { mg_pool *pool; int ith; } worker_arg;

static void *worker_main(void *p) {
    worker_arg wa = *(worker_arg *)p;
    free(p);
    mg_pool *pool = wa.pool;
    uint64_t seen = 0; /* the value `job` had before any worker started */
    for (;;) {
        uint64_t job = atomic_load_explicit(&pool->job, memory_order_acquire);
        for (int i = 0; job == seen && i < SPIN_ITERS; i++) {
            CPU_RELAX();
            job = atomic_load_explicit(&pool->job, memory_order_acquire);
        }
        if (job == seen) {
            pthread_mutex_lock(&pool->mu);
            while ((job = atomic_load_explicit(&pool->job, memory_order_acquire)) == seen &&
                   !atomic_load_explicit(&pool->stop, memory_order_acquire)) {
                pthread_cond_wait(&pool->cv_work, &pool->mu);
            }
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) break;
        seen = job;
        int nth = (int)(job & 0xff);
        if (wa.ith < nth) {
            pool->fn(pool->arg, wa.ith, nth);
            if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
                pthread_mutex_lock(&pool->mu);
                pthread_cond_signal(&pool->cv_done);
                pthread_mutex_unlock(&pool->mu);
            }
        }
    }
    return NULL;
}

mg_pool *mg_pool_create(int n_threads) {
    if (n_threads < 1 || n_threads > MAX_THREADS) return NULL;
    mg_pool *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->call_mu, NULL);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv_work, NULL);
    pthread_cond_init(&pool->cv_done, NULL);
    atomic_init(&pool->job, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->stop, 0);
    if (n_threads > 1) {
        pool->threads = calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!pool->threads) {
            free(pool);
            return NULL;
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof(*wa));
        if (wa) {
            wa->pool = pool;
            wa->ith = i;
        }
        if (!wa || pthread_create(&pool->threads[i - 1], NULL, worker_main, wa) != 0) {
            free(wa);
            pool->n_threads = i; /* stop and join the ones already started */
            mg_pool_destroy(pool);
            return NULL;
        }
    }
    return pool;
}

void mg_pool_destroy(mg_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->call_mu);
    pthread_mutex_lock(&pool->mu);
    atomic_store_explicit(&pool->stop, 1, memory_order_release);
    atomic_fetch_add_explicit(&pool->job, (uint64_t)1 << 8, memory_order_acq_rel);
    pthread_cond_broadcast(&pool->cv_work);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->threads[i - 1], NULL);
    pthread_mutex_unlock(&pool->call_mu);
    pthread_mutex_destroy(&pool->call_mu);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv_work);
    pthread_cond_destroy(&pool->cv_done);
    free(pool->threads);
    free(pool);
}

int mg_pool_n_threads(const mg_pool *pool) { return pool ? pool->n_threads : 0; }

void mg_pool_run(mg_pool *pool, mg_task_fn fn, void *arg, int nth) {
    if (!pool || nth <= 1 || pool->n_threads <= 1) {
        fn(arg, 0, 1);
        return;
    }
    if (nth > pool->n_threads) nth = pool->n_threads;
    pthread_mutex_lock(&pool->call_mu);
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->pending, nth - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool->mu);
    uint64_t gen = (atomic_load_explicit(&pool->job, memory_order_relaxed) >> 8) + 1;
    atomic_store_explicit(&pool->job, (gen << 8) | (uint64_t)nth, memory_order_release);
    pthread_cond_broadcast(&pool->cv_work);
    pthread_mutex_unlock(&pool->mu);

    fn(arg, 0, nth);

    for (int i = 0; i < SPIN_ITERS && atomic_load_explicit(&pool->pending, memory_order_acquire) > 0; i++) CPU_RELAX();
    if (atomic_load_explicit(&pool->pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&pool->mu);
        while (atomic_load_explicit(&pool->pending, memory_order_acquire) > 0) pthread_cond_wait(&pool->cv_done, &pool->mu);
        pthread_mutex_unlock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->call_mu);
}
