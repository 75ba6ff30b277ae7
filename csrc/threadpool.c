/* threadpool.c - one persistent pthread pool: n_threads - 1 workers plus the calling thread.
 *
 * A job is published as one 64-bit atomic word (generation << 16 | dynamic << 8 | number of participating
 * threads), so a worker always sees the job's generation, kind and thread count together.
 * Static jobs (mg_pool_run) wait for every participating worker.  Dynamic jobs (mg_pool_run_dynamic: the task
 * hands out work through its own atomic counter) only wait for workers that actually entered the job before
 * the caller finished its own share; a worker that wakes up later skips it.  On a busy machine a descheduled
 * worker then costs nothing instead of stalling every call.  Workers spin briefly on that word
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

#define SPIN_ITERS 2000 /* PAUSEs before sleeping, for workers and caller: ~10 us to ~100 us here (PAUSE takes
                        * ~5-60 ns on this VM).  Longer spins measured slower on the shared 2-core machine:
                        * a spinning thread takes the core from the thread with work. */
#define MAX_THREADS 255

struct mg_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t call_mu; /* serializes mg_pool_run callers */
    pthread_mutex_t mu;      /* guards sleeping on cv_work / cv_done */
    pthread_cond_t cv_work, cv_done;
    _Atomic uint64_t job;    /* generation << 16 | dynamic << 8 | n participating threads */
    _Atomic int pending;     /* static job: participating workers not yet done */
    _Atomic uint64_t gate;   /* dynamic job: generation << 16 | closed << 15 | workers inside */
    _Atomic int stop;
    _Atomic int sleepers;    /* workers inside the cv_work sleep loop (changed under mu) */
    _Atomic int caller_asleep; /* the caller sleeps on cv_done (changed under mu) */
    mg_task_fn fn;           /* written by the caller before publishing `job` (release) */
    void *arg;
};

typedef struct { mg_pool *pool; int ith; } worker_arg;

#define GATE_DYNAMIC ((uint64_t)1 << 8)
#define GATE_CLOSED ((uint64_t)1 << 15)
#define GATE_COUNT ((uint64_t)0x7fff)

/* Sleeper flags and the words they wait on are seq_cst on both sides: a sleeper raises its flag (under mu) and
 * then re-reads the word; a waker changes the word and then reads the flag.  One of the two sees the other, and
 * a waker that sees the flag takes mu, which the sleeper holds until it is inside pthread_cond_wait, so no
 * wake-up is lost and the common case (nobody asleep) costs no lock and no syscall. */
static void wake_caller(mg_pool *pool) {
    if (!atomic_load(&pool->caller_asleep)) return;
    pthread_mutex_lock(&pool->mu);
    pthread_mutex_unlock(&pool->mu);
    pthread_cond_signal(&pool->cv_done);
}

/* A worker enters dynamic job `gen` only while the gate is open for exactly that job. */
static int gate_enter(mg_pool *pool, uint64_t gen) {
    uint64_t v = atomic_load_explicit(&pool->gate, memory_order_acquire);
    for (;;) {
        if ((v >> 16) != gen || (v & GATE_CLOSED)) return 0;
        if (atomic_compare_exchange_weak_explicit(&pool->gate, &v, v + 1, memory_order_acq_rel, memory_order_acquire))
            return 1;
    }
}

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
            atomic_fetch_add(&pool->sleepers, 1);
            while ((job = atomic_load(&pool->job)) == seen && !atomic_load(&pool->stop)) {
                pthread_cond_wait(&pool->cv_work, &pool->mu);
            }
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) break;
        seen = job;
        int nth = (int)(job & 0xff);
        if (wa.ith >= nth) continue;
        if (job & GATE_DYNAMIC) {
            if (!gate_enter(pool, job >> 16)) continue; /* the caller already finished: skip */
            pool->fn(pool->arg, wa.ith, nth);
            uint64_t v = atomic_fetch_sub(&pool->gate, 1); /* seq_cst: see wake_caller */
            if ((v & GATE_COUNT) == 1 && (v & GATE_CLOSED)) wake_caller(pool);
        } else {
            pool->fn(pool->arg, wa.ith, nth);
            if (atomic_fetch_sub(&pool->pending, 1) == 1) wake_caller(pool);
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
    atomic_init(&pool->gate, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_init(&pool->caller_asleep, 0);
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
    atomic_fetch_add_explicit(&pool->job, (uint64_t)1 << 16, memory_order_acq_rel);
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

/* waits (spin, then sleep) until done(pool) */
static void wait_until(mg_pool *pool, int (*done)(mg_pool *)) {
    for (int i = 0; i < SPIN_ITERS && !done(pool); i++) CPU_RELAX();
    if (!done(pool)) {
        pthread_mutex_lock(&pool->mu);
        atomic_store(&pool->caller_asleep, 1);
        while (!done(pool)) pthread_cond_wait(&pool->cv_done, &pool->mu);
        atomic_store(&pool->caller_asleep, 0);
        pthread_mutex_unlock(&pool->mu);
    }
}

static int static_done(mg_pool *pool) { return atomic_load(&pool->pending) <= 0; }

static int dynamic_done(mg_pool *pool) { return (atomic_load(&pool->gate) & GATE_COUNT) == 0; }

static void run(mg_pool *pool, mg_task_fn fn, void *arg, int nth, int dynamic) {
    if (!pool || nth <= 1 || pool->n_threads <= 1) {
        fn(arg, 0, 1);
        return;
    }
    if (nth > pool->n_threads) nth = pool->n_threads;
    pthread_mutex_lock(&pool->call_mu);
    pool->fn = fn;
    pool->arg = arg;
    uint64_t gen = ((atomic_load_explicit(&pool->job, memory_order_relaxed) >> 16) + 1) & (((uint64_t)1 << 48) - 1);
    atomic_store_explicit(&pool->pending, nth - 1, memory_order_relaxed);
    atomic_store_explicit(&pool->gate, gen << 16, memory_order_relaxed); /* open, nobody inside */
    atomic_store(&pool->job, (gen << 16) | (dynamic ? GATE_DYNAMIC : 0) | (uint64_t)nth);
    if (atomic_load(&pool->sleepers) > 0) { /* spinning workers need no syscall */
        /* Taking mu once orders the new job after any sleeper's check; broadcasting after unlocking lets the
         * woken workers take mu without blocking on the caller (no futex wake-up from the unlock). */
        pthread_mutex_lock(&pool->mu);
        pthread_mutex_unlock(&pool->mu);
        pthread_cond_broadcast(&pool->cv_work);
    }

    fn(arg, 0, nth);

    if (dynamic) {
        atomic_fetch_or_explicit(&pool->gate, GATE_CLOSED, memory_order_acq_rel);
        wait_until(pool, dynamic_done);
    } else {
        wait_until(pool, static_done);
    }
    pthread_mutex_unlock(&pool->call_mu);
}

void mg_pool_run(mg_pool *pool, mg_task_fn fn, void *arg, int nth) { run(pool, fn, arg, nth, 0); }

void mg_pool_run_dynamic(mg_pool *pool, mg_task_fn fn, void *arg, int nth) { run(pool, fn, arg, nth, 1); }
