/* AMX path: the integer dot of each 32-block is one tile product (TDPBSUD: signed activations
 * times unsigned weights into exact int32) for up to 16 rows and 16 columns at once; the float
 * steps are the AVX512 path's, lane for lane, so the three paths agree bit for bit.
 *
 * The weights' 32-block of a 16-column tile is already the B operand's layout (8 rows of 4
 * consecutive weights x 16 columns, csrc/qgemm.h): Q8 blocks are loaded as they sit, Q4 blocks
 * are widened to bytes first (low nibbles = chunks 0..3, high nibbles = chunks 4..7). Types with
 * a scale per 16 weights (Q6_K) take two half-depth products, one a scale group.
 *
 * Rows are processed in blocks of 16 (the quantized activations are padded to whole blocks with
 * zero rows by the caller). The float steps run over the first 4, 8 or 16 rows of a block
 * (whichever covers the real ones) with their accumulators in registers; only the real rows are
 * stored. A block's product is stored to a small buffer and scaled per row exactly as the VNNI
 * path does. Measured on a Xeon with AMX (docs/benchmarks.md): the tile product itself is cheap,
 * but the tile loads, the nibble widening and storing each block's int32 results still cost more
 * than 8 rows of VNNI dot products, so below PD_AMX_MIN_ROWS rows (pd_set_amx_min_rows) the
 * AVX512-VNNI path runs instead (same bits).
 *
 * Linux hands out the tile registers only on request (arch_prctl ARCH_REQ_XCOMP_PERM); pd_amx_ok
 * asks once and reports whether the path may run. Each thread loads its tile configuration the
 * first time it runs a weight type of the other group size. */
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "qgemm_simd.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int pd_amx_ok(void) {
    static int state = 0; /* 0 unknown, 1 usable, -1 not */
    if (state == 0) {
        unsigned a, b, c, d;
        __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
        const int has = (d >> 24 & 1) && (d >> 25 & 1); /* AMX-TILE, AMX-INT8 */
        state = has && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
    }
    return state == 1;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;
_Static_assert(sizeof(tilecfg) == sizeof(pd_tilecfg), "tile configuration is 64 bytes");

/* Four products are kept in flight (tiles do not rename: a block's tile must be stored before
 * the tile is reused, so one block at a time would wait on every product's latency).
 * 32-weight groups: tiles 0..3 int32 results of four blocks (16 x 16); 4, 5 activations
 * 16 x 32 bytes; 6, 7 weights 8 x 64 bytes (a whole block).
 * 16-weight groups (g16): tiles 0..3 the two halves of two blocks; 4, 5 activations 16 x 16
 * bytes; 6, 7 weights 4 x 64 bytes (half a block).
 * cfg_key: which of the two this thread has loaded (0: none, or unknown). */
static __thread int cfg_key = 0;

/* The calling thread may also run other code that uses the tiles (llama.cpp's AMX kernels,
 * oneDNN inside torch), which configures them its own way or releases them. So the caller
 * saves its tile configuration before a product, has ours loaded for the call, and gets its own
 * back after (pd_amx_enter / pd_amx_leave); pool workers run only these kernels and keep ours. */
void pd_amx_enter(pd_tilecfg *saved) {
    _tile_storeconfig(saved);
    cfg_key = 0;
}

void pd_amx_leave(const pd_tilecfg *saved) {
    if (saved->b[0]) /* palette 0: there was no configuration */
        _tile_loadconfig(saved);
    else
        _tile_release();
    cfg_key = 0;
}

/* Tests: what foreign code may do to this thread's tiles between two products (mode 0: release
 * them; 1: load another configuration). */
void pd_amx_test_clobber(int mode) {
    if (!pd_amx_ok()) return;
    if (mode == 0) {
        _tile_release();
        return;
    }
    tilecfg cfg __attribute__((aligned(64)));
    __builtin_memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    cfg.rows[0] = 2;
    cfg.colsb[0] = 8;
    _tile_loadconfig(&cfg);
}

/* A forked child configures its tiles again before its first tile op (whatever the kernel kept). */
static void forget_config(void) { cfg_key = 0; }
__attribute__((constructor)) static void amx_init(void) { pthread_atfork(0, 0, forget_config); }

static void configure(int g16) {
    const int key = g16 + 1;
    if (cfg_key == key) return;
    tilecfg cfg __attribute__((aligned(64)));
    __builtin_memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 4; i++) {
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    for (int i = 4; i < 6; i++) {
        cfg.rows[i] = 16;
        cfg.colsb[i] = g16 ? 16 : 32;
    }
    for (int i = 6; i < 8; i++) {
        cfg.rows[i] = g16 ? 4 : 8;
        cfg.colsb[i] = 64;
    }
    _tile_loadconfig(&cfg);
    cfg_key = key;
}


#define GB 4 /* tile products in flight */

/* Q4 blocks [b0, b0 + count) of column tile t (count clipped at nb) widened to bytes in the
 * B operand's order: rows 0..3 the low nibbles (chunks 0..3), rows 4..7 the high ones. */
PD_INLINE void widen(const pd_qweight *w, int t, int nb, int b0, int count, uint8_t (*out)[512]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int i = 0; i < count && b0 + i < nb; i++) {
        const size_t tb = (size_t)t * nb + b0 + i;
        for (int j = 0; j < 4; j++) {
            const __m512i raw = _mm512_loadu_si512(w->q + (tb * 4 + j) * 64);
            _mm512_store_si512(out[i] + 64 * j, _mm512_and_si512(raw, m4));
            _mm512_store_si512(out[i] + 64 * (j + 4), _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4));
        }
    }
}

/* The tile products of one group: nbk (1..4) whole blocks, or (g16) nbk (1..2) blocks as two
 * half-depth products each, of the activations at xa (row stride kp) with the weights wb[i];
 * their int32 results stored into c[0..3]. */
PD_INLINE void products(const int8_t *xa, int kp, const uint8_t *const *wb, int nbk, int g16, int32_t (*c)[16][16]) {
    if (g16) {
#define HALF(C, A, B, i, h)                                   \
    _tile_zero(C);                                            \
    _tile_loadd(A, xa + 32 * i + 16 * h, kp);                 \
    _tile_loadd(B, wb[i] + 256 * h, 64);                      \
    _tile_dpbsud(C, A, B);
        HALF(0, 4, 6, 0, 0)
        HALF(1, 5, 7, 0, 1)
        if (nbk > 1) { HALF(2, 4, 6, 1, 0) HALF(3, 5, 7, 1, 1) }
#undef HALF
        _tile_stored(0, c[0], 64);
        _tile_stored(1, c[1], 64);
        if (nbk > 1) {
            _tile_stored(2, c[2], 64);
            _tile_stored(3, c[3], 64);
        }
        return;
    }
#define WHOLE(C, A, B)                                        \
    _tile_zero(C);                                            \
    _tile_loadd(A, xa + 32 * C, kp);                          \
    _tile_loadd(B, wb[C], 64);                                \
    _tile_dpbsud(C, A, B);
    WHOLE(0, 4, 6)
    if (nbk > 1) { WHOLE(1, 5, 7) }
    if (nbk > 2) { WHOLE(2, 4, 6) }
    if (nbk > 3) { WHOLE(3, 5, 7) }
#undef WHOLE
    _tile_stored(0, c[0], 64);
    if (nbk > 1) _tile_stored(1, c[1], 64);
    if (nbk > 2) _tile_stored(2, c[2], 64);
    if (nbk > 3) _tile_stored(3, c[3], 64);
}

/* Column tile t for the rows [r0, r0 + rows) of a block of 16: the tile products cover all 16
 * (padding rows are zeros), the float steps only the first R (4, 8 or 16, a constant in each
 * instantiation; rows <= R): the float steps are most of the cost, so a few rows pay for a
 * few. The rows past `rows` are padding: computed, never stored. */
PD_INLINE void tile_rows(const pd_qweight *w, const pd_qact *x, int t, int r0, int rows, int kind, int g16, int half,
                         int biased, float *y, int ldy, const int R) {
    const int nb = x->nb, kp = x->kp, G = g16 ? 2 : 1, step = g16 ? 2 : GB;
    __attribute__((aligned(64))) int32_t cbuf[2][GB][16][16]; /* results: this group's, the last one's */
    __attribute__((aligned(64))) uint8_t wq[2][GB][512]; /* Q4 widened: this group's, the next one's */
    __m512 acc[16];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const int8_t *xa = x->q + (size_t)r0 * kp;
    if (kind == PD_KIND_Q4) widen(w, t, nb, 0, step, wq[0]);
    for (int b0 = 0, grp = 0; b0 < nb + step; b0 += step, grp ^= 1) {
        /* the products of group b0 (if any), then the float steps of the group before it, whose
         * results were stored a group ago (reading them at once would wait on the stores) */
        if (b0 < nb) {
            const int nbk = nb - b0 < step ? nb - b0 : step;
            const uint8_t *wb[GB];
            for (int i = 0; i < nbk; i++) wb[i] = kind == PD_KIND_Q4 ? wq[grp][i] : w->q + ((size_t)t * nb + b0 + i) * 512;
            products(xa + 32 * b0, kp, wb, nbk, g16, cbuf[grp]);
            /* widen the next group while the products run: a tile load right after the stores
             * that wrote its bytes would wait for them to reach the cache */
            if (kind == PD_KIND_Q4 && b0 + step < nb) widen(w, t, nb, b0 + step, step, wq[grp ^ 1]);
        }
        if (b0 == 0) continue;
        const int p0 = b0 - step, pnb = nb - p0 < step ? nb - p0 : step;
        int32_t (*c)[16][16] = cbuf[grp ^ 1];
        for (int i = 0; i < pnb; i++) {
            const int b = p0 + i;
            const size_t tb = (size_t)t * nb + b, ab = tb * G * 16;
            const int32_t *clo = g16 ? c[2 * i][0] : c[i][0], *chi = g16 ? c[2 * i + 1][0] : 0;
            const __m512 a0 = pd_load16(w->a, ab, half), a1 = g16 ? pd_load16(w->a, ab + 16, half) : a0;
            const __m512 ov = w->off ? pd_load16(w->off, tb * 16, half) : a0;
#pragma GCC unroll 16
            for (int r = 0; r < R; r++) { /* the first R rows of the block (padding rows are zeros) */
                __m512i ilo = _mm512_load_si512(clo + 16 * r), ihi = _mm512_setzero_si512();
                if (g16) ihi = _mm512_load_si512(chi + 16 * r);
                if (biased) { /* stored q + 128: the dot is sum((q + 128) x) - 128 sum(x) */
                    const int32_t *xs = x->x16 + (size_t)(r0 + r) * 2 * nb + 2 * b;
                    if (g16) {
                        ilo = _mm512_add_epi32(ilo, _mm512_set1_epi32(-128 * xs[0]));
                        ihi = _mm512_add_epi32(ihi, _mm512_set1_epi32(-128 * xs[1]));
                    } else {
                        ilo = _mm512_add_epi32(ilo, _mm512_set1_epi32(-128 * (xs[0] + xs[1])));
                    }
                }
                const size_t xb = (size_t)(r0 + r) * nb + b;
                acc[r] = pd_block_fma16(acc[r], ilo, ihi, a0, a1, ov, x->d[xb], x->s[xb], g16, w->off != 0);
            }
        }
    }
    const int n0 = PD_TILE_COLS * t, cols = w->n - n0 < 16 ? w->n - n0 : 16;
    const __mmask16 keep = (__mmask16)((1u << cols) - 1u);
    for (int r = 0; r < rows; r++) _mm512_mask_storeu_ps(y + (size_t)(r0 + r) * ldy + n0, keep, acc[r]);
}

#define PD_KINDS(R)                                                                                  \
    do {                                                                                             \
        if (w->kind == PD_KIND_Q4)                                                                   \
            tile_rows(w, x, t, r0, rows, PD_KIND_Q4, 0, w->half, 0, y, ldy, R);                      \
        else if (w->biased && g16)                                                                   \
            tile_rows(w, x, t, r0, rows, PD_KIND_Q8, 1, w->half, 1, y, ldy, R);                      \
        else if (w->biased)                                                                          \
            tile_rows(w, x, t, r0, rows, PD_KIND_Q8, 0, w->half, 1, y, ldy, R);                      \
        else                                                                                         \
            tile_rows(w, x, t, r0, rows, PD_KIND_Q8, 0, w->half, 0, y, ldy, R);                      \
    } while (0)

/* x->m rows in blocks of 16 rows; x->q, d, s and x16 hold whole blocks (the padding rows zeros). */
void pd_cols_amx(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int t0, int t1) {
    const int g16 = w->kind == PD_KIND_Q8 && w->group == 16;
    configure(g16);
    for (int t = t0; t < t1; t++)
        for (int r0 = 0; r0 < x->m; r0 += 16) {
            const int rows = x->m - r0 < 16 ? x->m - r0 : 16;
            if (rows <= 4)
                PD_KINDS(4);
            else if (rows <= 8)
                PD_KINDS(8);
            else
                PD_KINDS(16);
        }
}
