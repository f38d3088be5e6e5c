/* Dispatch, CPU features, the thread pool and the exported entry point of the matrix kernels.
 * Compiled for the baseline x86-64 so that loading the library never faults on an older CPU. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qgemm.h"

/* ------------------------------------------------------------------ CPU features */

int pd_paths(void) {
    int p = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) p |= PD_PATH_AVX2;
    if ((p & PD_PATH_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni"))
        p |= PD_PATH_AVX512VNNI;
    if ((p & PD_PATH_AVX512VNNI) && pd_amx_ok()) p |= PD_PATH_AMX;
    return p;
}

/* ------------------------------------------------------------------ thread pool
 * A parallel region is a list of chunks that the caller and the workers take in turn from an
 * atomic counter, so a worker the OS has not scheduled yet delays nothing: the others take its
 * chunks. Which thread computes a chunk never changes a result (every chunk is whole outputs).
 * Workers wait on a generation counter: a short spin (a decode step opens hundreds of regions a
 * token), then a condition variable, so that idle workers cost nothing. */

#define PD_MAX_THREADS 256
#define PD_SPIN 4000

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t run_mu = PTHREAD_MUTEX_INITIALIZER; /* one parallel region at a time */
static _Atomic unsigned pool_gen = 0;
static _Atomic int pool_size = 0; /* threads including the caller */
static int pool_started = 0; /* workers created */

/* the current region; its fields are written only while no worker is inside it */
static pd_task job_fn;
static void *job_arg;
static int job_chunks, job_param;
static _Atomic int job_next = 0, job_active = 0, job_closed = 1;

static void cpu_relax(void) { __asm__ __volatile__("pause"); }

static void run_chunks(void) {
    int c;
    while ((c = atomic_fetch_add(&job_next, 1)) < job_chunks) job_fn(job_arg, c, job_param);
}

static void *worker(void *p) {
    const int index = (int)(size_t)p; /* 1.. */
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load(&pool_gen)) == seen && spins < PD_SPIN) {
            cpu_relax();
            spins++;
        }
        if (g == seen) {
            pthread_mutex_lock(&pool_mu);
            while ((g = atomic_load(&pool_gen)) == seen) pthread_cond_wait(&pool_cv, &pool_mu);
            pthread_mutex_unlock(&pool_mu);
        }
        seen = g;
        if (index >= pool_size) continue;
        /* join, then look: the caller closes the region, then waits for no one inside */
        atomic_fetch_add(&job_active, 1);
        if (!atomic_load(&job_closed)) run_chunks();
        atomic_fetch_sub(&job_active, 1);
    }
    return 0;
}

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > PD_MAX_THREADS ? PD_MAX_THREADS : (int)n);
}

int pd_get_threads(void) { return pool_size > 0 ? pool_size : default_threads(); }

void pd_set_threads(int n) {
    if (n < 1) n = default_threads();
    if (n > PD_MAX_THREADS) n = PD_MAX_THREADS;
    pthread_mutex_lock(&run_mu);
    while (pool_started < n - 1) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &at, worker, (void *)(size_t)(pool_started + 1));
        pthread_attr_destroy(&at);
        if (rc != 0) break;
        pool_started++;
    }
    pool_size = pool_started + 1 < n ? pool_started + 1 : n;
    pthread_mutex_unlock(&run_mu);
}

/* A forked child has none of the parent's workers: start from an empty pool there. */
static void pool_after_fork(void) {
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    pool_mu = mu;
    run_mu = mu;
    pool_cv = cv;
    pool_started = 0;
    atomic_store(&pool_size, 0);
    atomic_store(&job_active, 0);
    atomic_store(&job_closed, 1);
}

__attribute__((constructor)) static void pool_init(void) { pthread_atfork(0, 0, pool_after_fork); }

/* fn(arg, c, param) for every chunk c in [0, chunks), shared among the pool's threads. */
static void pd_parallel_chunks(pd_task fn, void *arg, int chunks, int param) {
    if (pool_size == 0) pd_set_threads(0);
    pthread_mutex_lock(&run_mu);
    if (pool_size == 1 || chunks <= 1) {
        for (int c = 0; c < chunks; c++) fn(arg, c, param);
        pthread_mutex_unlock(&run_mu);
        return;
    }
    job_fn = fn;
    job_arg = arg;
    job_chunks = chunks;
    job_param = param;
    atomic_store(&job_next, 0);
    atomic_store(&job_closed, 0);
    pthread_mutex_lock(&pool_mu);
    atomic_fetch_add(&pool_gen, 1);
    pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    run_chunks();
    atomic_store(&job_closed, 1);
    /* a worker still inside holds a chunk; if the OS has parked it, give it the CPU */
    for (int spins = 0; atomic_load(&job_active) > 0; spins++) {
        if (spins < 2000)
            cpu_relax();
        else
            sched_yield();
    }
    pthread_mutex_unlock(&run_mu);
}

/* fn(arg, tid, nthreads) once for each tid in [0, nthreads). */
void pd_parallel(pd_task fn, void *arg) {
    if (pool_size == 0) pd_set_threads(0);
    pd_parallel_chunks(fn, arg, pool_size, pool_size);
}

/* ------------------------------------------------------------------ entry point */

typedef struct {
    const pd_qweight *w;
    const pd_qact *x;
    float *y;
    int ldy, path, tiles; /* tiles: column tiles of the product */
} qgemm_job;

/* Chunk c: the column tiles [c * per, (c + 1) * per) (param = per). */
static void qgemm_task(void *p, int c, int per) {
    const qgemm_job *j = (const qgemm_job *)p;
    const int t0 = c * per, t1 = t0 + per < j->tiles ? t0 + per : j->tiles;
    if (j->path == PD_PATH_AMX)
        pd_cols_amx(j->w, j->x, j->y, j->ldy, t0, t1);
    else if (j->path == PD_PATH_AVX512VNNI)
        pd_cols_avx512vnni(j->w, j->x, j->y, j->ldy, t0, t1);
    else
        pd_cols_avx2(j->w, j->x, j->y, j->ldy, t0, t1);
}

/* Column tiles a chunk of a product: runs of consecutive tiles (the weights are tile-major, so
 * a run is one stream of memory the prefetchers follow), PD_CHUNKS_PER_THREAD chunks a thread
 * so that a late thread's share is taken by the others. One tile a chunk interleaved the
 * threads' reads tile by tile and took a shared counter 13,000 times a forward. Which thread
 * computes a column never changes its value. */
#define PD_CHUNKS_PER_THREAD 2

/* Quantizing the activations: rows are independent (each row's blocks are a fixed function of
 * the row), so several rows are shared among the pool's threads, a chunk of rows each. */
typedef struct {
    const float *x;
    int m, k, ldx, kp, nb, rows;
    int8_t *q;
    float *d, *s;
    int32_t *x16;
} quant_job;

static void quant_task(void *p, int c, int unused) {
    (void)unused;
    const quant_job *j = (const quant_job *)p;
    const int r0 = c * j->rows, r1 = r0 + j->rows < j->m ? r0 + j->rows : j->m;
    if (r0 >= r1) return;
    pd_quantize_rows(j->x + (size_t)r0 * j->ldx, r1 - r0, j->k, j->ldx, j->kp, j->q + (size_t)r0 * j->kp, j->d + (size_t)r0 * j->nb,
                     j->s + (size_t)r0 * j->nb, j->x16 + (size_t)r0 * 2 * j->nb);
}

#define PD_QUANT_ROWS 4 /* rows a chunk (up to 4 rows the caller quantizes them alone) */

/* From how many rows a product takes the AMX path (below: AVX512-VNNI, the same bits). Settable
 * for measurements and tests; the default is PD_AMX_MIN_ROWS. */
static int amx_min_rows = PD_AMX_MIN_ROWS;
void pd_set_amx_min_rows(int rows) { amx_min_rows = rows < 1 ? 1 : rows; }
int pd_get_amx_min_rows(void) { return amx_min_rows; }

/* Scratch for the quantized activations of the calling thread. */
static __thread void *scratch = 0;
static __thread size_t scratch_size = 0;

int pd_qgemm_desc(int path, const pd_wdesc *wd, const float *x, int m, int ldx, float *y, int ldy) {
    const int n = wd->n, k = wd->k, kp = wd->kp;
    if (!(pd_paths() & path) || (path != PD_PATH_AVX2 && path != PD_PATH_AVX512VNNI && path != PD_PATH_AMX)) return -1;
    if (m < 0 || n < 0 || k < 0 || kp % 32 || kp < k || kp - k >= 32 || ldx < k || ldy < n) return -2;
    if ((wd->kind != PD_KIND_Q4 && wd->kind != PD_KIND_Q8) || (wd->group != 32 && wd->group != 16) ||
        (wd->kind == PD_KIND_Q4 && (wd->group != 32 || wd->biased)) || (wd->biased && wd->off))
        return -2;
    if (m == 0 || n == 0) return 0;
    const int nb = kp / 32;
    /* AMX: blocks of 16 rows, the last one padded with zero rows */
    int mpad = m;
    if (path == PD_PATH_AMX) {
        if (m >= amx_min_rows) {
            mpad = (m + 15) / 16 * 16;
        } else {
            path = PD_PATH_AVX512VNNI;
        }
    }
    const size_t qbytes = ((size_t)mpad * kp + 63) / 64 * 64, fbytes = (size_t)mpad * nb * 4 * sizeof(float);
    if (scratch_size < qbytes + fbytes) {
        free(scratch);
        scratch = 0;
        scratch_size = 0;
        if (posix_memalign(&scratch, 64, qbytes + fbytes) != 0) return -3;
        scratch_size = qbytes + fbytes;
    }
    int8_t *xq = (int8_t *)scratch;
    float *xd = (float *)((char *)scratch + qbytes), *xs = xd + (size_t)mpad * nb;
    int32_t *x16 = (int32_t *)(xs + (size_t)mpad * nb);
    const quant_job qj = {x, m, k, ldx, kp, nb, PD_QUANT_ROWS, xq, xd, xs, x16};
    pd_parallel_chunks(quant_task, (void *)&qj, (m + PD_QUANT_ROWS - 1) / PD_QUANT_ROWS, 0);
    if (mpad > m) { /* padding rows: zeros (computed by the AMX path, never stored) */
        const size_t pr = (size_t)(mpad - m);
        memset(xq + (size_t)m * kp, 0, pr * kp);
        memset(xd + (size_t)m * nb, 0, pr * nb * sizeof(float));
        memset(xs + (size_t)m * nb, 0, pr * nb * sizeof(float));
        memset(x16 + (size_t)m * 2 * nb, 0, pr * 2 * nb * sizeof(int32_t));
    }
    const pd_qweight w = {wd->kind, n, kp, wd->group, wd->half != 0, wd->biased != 0, wd->q, wd->a, wd->off};
    const pd_qact act = {m, kp, nb, xq, xd, xs, x16};
    const int tiles = (n + PD_TILE_COLS - 1) / PD_TILE_COLS, want = PD_CHUNKS_PER_THREAD * pd_get_threads();
    const int per = tiles <= want ? 1 : (tiles + want - 1) / want;
    qgemm_job job = {&w, &act, y, ldy, path, tiles};
    pd_tilecfg saved;
    if (path == PD_PATH_AMX) pd_amx_enter(&saved);
    pd_parallel_chunks(qgemm_task, &job, (tiles + per - 1) / per, per);
    if (path == PD_PATH_AMX) pd_amx_leave(&saved);
    return 0;
}
