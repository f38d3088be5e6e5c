/* Quantized matrix kernels: y[M, N] = x[M, K] @ W[N, K]^T on the GGUF's own integer weights.
 *
 * Weights (repacked once at load by kernels.py; no value changes): every 32-block b of row n is
 * integers q with a float32 scale a (one per 32, or two per 32 for 16-groups) and an optional
 * float32 offset: w = a * q + off.
 *   kind Q4: q in 0..15, two 32-blocks per 32 bytes: byte j of pair p holds weight 64p+j in its
 *            low nibble and weight 64p+32+j in its high nibble.        q: [N][kp/2] bytes
 *   kind Q8: q signed int8, one byte a weight.                           q: [N][kp] bytes
 *   a:   [N][nb * (32 / group)] (group 32 or 16)
 *   off: [N][nbp] or NULL (zero past nb)
 *   a and off are float32, or float16 (half = 1) where every value is exactly a float16: the
 *   kernels widen them exactly, so the arithmetic is the same either way (fewer bytes to read).
 * with kp = K rounded up to 64 (zero padding), nb = kp / 32, nbp = nb rounded up to 8.
 *
 * Activations are quantized per row in 32-blocks: qx = round(x / d) in -127..127, d = max|x| / 127,
 * s = d * sum(qx) (the block sum the offsets need).
 *
 * Arithmetic, the same on every path (so that they agree bit for bit) and for every row whatever
 * M, the row's place in the batch or the thread count (batch invariance by construction):
 *   i[b][l]   = exact int32 dot of weights 4l..4l+3 of block b with the activations (l = 0..7)
 *   acc_e[l]  = fma(a[b](l) * d[b], float(i[b][l]), acc_e[l]) over even b in increasing order,
 *   acc_o[l]    the same over odd b (a[b](l): the block's scale, or its 16-group's for group 16)
 *   y         = hsum(acc_e + acc_o) + hsum(fma-chain over 8-lanes of off[b] * s[b])
 * where hsum of 8 lanes is ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)). K is never split.
 */
#ifndef PARADEC_QGEMM_H
#define PARADEC_QGEMM_H

#include <stddef.h>
#include <stdint.h>

#define PD_PATH_AVX2 1
#define PD_PATH_AVX512VNNI 2

#define PD_KIND_Q4 0
#define PD_KIND_Q8 1

typedef struct {
    int kind, n, kp, group, half;
    const uint8_t *q;
    const void *a;   /* float or uint16_t (float16 bits) */
    const void *off; /* float or uint16_t, or NULL */
} pd_qweight;

typedef struct {
    int m, kp, nb, nbp;
    const int8_t *q; /* [m][kp] */
    const float *d;  /* [m][nb] */
    const float *s;  /* [m][nbp] */
    float *dv;       /* [m][kp / 64][16]: d of the pair's two blocks, 8 lanes each (AVX512 path) */
} pd_qact;

/* Column range [n0, n1) of y (row stride ldy) for all m rows of x. */
void pd_cols_avx2(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int n0, int n1);
void pd_cols_avx512vnni(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int n0, int n1);
/* Quantize m rows of x (row stride ldx, k values) into act's buffers (sized for kp, nb, nbp). */
void pd_quantize_rows(const float *x, int m, int k, int ldx, int8_t *q, float *d, float *s, int kp, int nbp);

/* The thread pool (pthreads, not OpenMP). fn(arg, tid, nthreads) runs once for each tid in
 * [0, nthreads), each on whichever pool thread (the caller included) takes it first. */
typedef void (*pd_task)(void *arg, int tid, int nthreads);
void pd_parallel(pd_task fn, void *arg);
int pd_get_threads(void);
void pd_set_threads(int n);

/* Exported entry points (called through ctypes). */
int pd_paths(void); /* bitmask of PD_PATH_* this CPU runs */
int pd_qgemm(int path, int kind, int n, int k, int kp, int group, int half, const uint8_t *q, const void *a,
             const void *off, const float *x, int m, int ldx, float *y, int ldy);

/* The same with the weight's arguments in one struct (one ctypes argument instead of nine). */
typedef struct {
    int kind, n, k, kp, group, half;
    const uint8_t *q;
    const void *a, *off;
} pd_wdesc;
int pd_qgemm_desc(int path, const pd_wdesc *w, const float *x, int m, int ldx, float *y, int ldy);

#endif
