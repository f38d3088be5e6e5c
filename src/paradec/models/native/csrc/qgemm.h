/* Quantized matrix kernels: y[M, N] = x[M, K] @ W[N, K]^T on the GGUF's own integer weights.
 *
 * Weights (repacked once at load by kernels.py; no value changes): every 32-block b of row n is
 * integers q with a scale a per group of 32 (or of 16) weights and an optional offset per block:
 * w = a * q + off. Columns are interleaved in tiles of 16 (N padded with zero columns), so that
 * one vector holds 4 consecutive weights of each of 16 columns and a dot-product instruction
 * against 4 broadcast activations advances 16 outputs at once:
 *   chunk j (0..7) of block b covers weights 32b+4j .. 32b+4j+3;
 *   kind Q8: byte [tile][b][j][c][e] = q of column 16*tile+c, weight 32b+4j+e (512 bytes a tile
 *            block); stored q + 128 where the type is signed (biased = 1), else q (0..31).
 *   kind Q4: byte [tile][b][j][c][e] for j = 0..3 holds chunk j in its low nibble and chunk j+4
 *            in its high nibble (256 bytes a tile block).
 *   a:   [tile][b][group][16]   (32 / group scales a block)
 *   off: [tile][b][16] or NULL
 *   a and off are float32, or float16 (half = 1) where every value is exactly a float16: the
 *   kernels widen them exactly, so the arithmetic is the same either way (fewer bytes to read).
 *
 * Activations are quantized per row in 32-blocks: qx = round(x / d) in -127..127, d = max|x| / 127,
 * s = d * sum(qx) (the block sum the offsets need).
 *
 * Arithmetic, the same on every path (so that they agree bit for bit) and for every row whatever
 * M, the row's place in the batch or the thread count (batch invariance by construction):
 *   acc = 0; for each block b in order:
 *     for each scale group g of the block in order:
 *       i   = exact integer dot of the group's weights with qx
 *       acc = fma(a[b][g] * d[b], (float)i, acc)
 *     if off: acc = fma(off[b], s[b], acc)
 *   y = acc
 * One chain of fused multiply-adds per output; K is never split.
 */
#ifndef PARADEC_QGEMM_H
#define PARADEC_QGEMM_H

#include <stddef.h>
#include <stdint.h>

#define PD_PATH_AVX2 1
#define PD_PATH_AVX512VNNI 2
#define PD_PATH_AMX 4 /* AMX tiles for PD_AMX_MIN_ROWS rows and more, the AVX512-VNNI path below */

#define PD_AMX_MIN_ROWS 16

#define PD_KIND_Q4 0
#define PD_KIND_Q8 1

#define PD_TILE_COLS 16

typedef struct {
    int kind, n, kp, group, half, biased;
    const uint8_t *q;
    const void *a;   /* float or uint16_t (float16 bits) */
    const void *off; /* float or uint16_t, or NULL */
} pd_qweight;

typedef struct {
    int m, kp, nb;
    const int8_t *q;    /* [m][kp] */
    const float *d;     /* [m][nb] */
    const float *s;     /* [m][nb] */
    const int32_t *x16; /* [m][2 * nb]: sum(qx) of each 16-group */
} pd_qact;

/* Column tiles [t0, t1) of y (row stride ldy) for all m rows of x. */
void pd_cols_avx2(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int t0, int t1);
void pd_cols_avx512vnni(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int t0, int t1);
/* The AMX path: rows in blocks of 16; x->q, d, s, x16 padded to whole blocks with zero rows. */
void pd_cols_amx(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int t0, int t1);
int pd_amx_ok(void); /* the CPU has AMX-INT8 and the OS lets this process use it */
typedef struct {
    unsigned char b[64];
} __attribute__((aligned(64))) pd_tilecfg;
void pd_amx_enter(pd_tilecfg *saved);       /* the caller's tile configuration kept aside */
void pd_amx_leave(const pd_tilecfg *saved); /* and put back */
/* Quantize m rows of x (row stride ldx, k values) into the buffers (kp = k rounded up to 32). */
void pd_quantize_rows(const float *x, int m, int k, int ldx, int kp, int8_t *q, float *d, float *s, int32_t *x16);

/* The thread pool (pthreads, not OpenMP). fn(arg, tid, nthreads) runs once for each tid in
 * [0, nthreads), each on whichever pool thread (the caller included) takes it first. */
typedef void (*pd_task)(void *arg, int tid, int nthreads);
void pd_parallel(pd_task fn, void *arg);
int pd_get_threads(void);
void pd_set_threads(int n);
void pd_set_amx_min_rows(int rows); /* the AMX path from this many rows (default PD_AMX_MIN_ROWS) */
int pd_get_amx_min_rows(void);

/* Exported entry points (called through ctypes). */
int pd_paths(void); /* bitmask of PD_PATH_* this CPU runs */
typedef struct {
    int kind, n, k, kp, group, half, biased;
    const uint8_t *q;
    const void *a, *off;
} pd_wdesc;
/* Returns 0, or -1 (path not available on this CPU), -2 (bad arguments), -3 (out of memory). */
int pd_qgemm_desc(int path, const pd_wdesc *w, const float *x, int m, int ldx, float *y, int ldy);

#endif
