/* AVX512-VNNI path: a whole tile of 16 columns a vector; vpdpbusd adds 4 products a column
 * into exact int32 lanes. The float steps are the AVX2 path's, lane for lane. */
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include "qgemm_simd.h"

#define MT5 8


PD_INLINE void tile16(const pd_qweight *w, const pd_qact *x, int t, int r0, int mt, int kind, int g16, int half, int biased,
                      float *y, int ldy) {
    const int nb = x->nb, kp = x->kp, G = g16 ? 2 : 1;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[MT5];
    for (int r = 0; r < mt; r++) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const size_t tb = (size_t)t * nb + b;
        __m512i ilo[MT5], ihi[MT5];
        for (int r = 0; r < mt; r++) {
            if (biased) { /* stored q + 128: the dot is sum((q + 128) x) - 128 sum(x) */
                const int32_t *xs = x->x16 + (size_t)(r0 + r) * 2 * nb + 2 * b;
                if (g16) {
                    ilo[r] = _mm512_set1_epi32(-128 * xs[0]);
                    ihi[r] = _mm512_set1_epi32(-128 * xs[1]);
                } else {
                    ilo[r] = _mm512_set1_epi32(-128 * (xs[0] + xs[1]));
                }
            } else {
                ilo[r] = ihi[r] = _mm512_setzero_si512();
            }
        }
        if (kind == PD_KIND_Q4) { /* chunk j in the low nibbles, chunk j + 4 in the high ones */
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const __m512i raw = _mm512_loadu_si512(w->q + (tb * 4 + j) * 64);
                const __m512i lo = _mm512_and_si512(raw, m4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
#pragma GCC unroll 8
                for (int r = 0; r < mt; r++) {
                    const int8_t *xq = x->q + (size_t)(r0 + r) * kp + 32 * b;
                    ilo[r] = _mm512_dpbusd_epi32(ilo[r], lo, _mm512_set1_epi32(pd_load4b(xq + 4 * j)));
                    ilo[r] = _mm512_dpbusd_epi32(ilo[r], hi, _mm512_set1_epi32(pd_load4b(xq + 16 + 4 * j)));
                }
            }
        } else {
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const __m512i wv = _mm512_loadu_si512(w->q + (tb * 8 + j) * 64);
#pragma GCC unroll 8
                for (int r = 0; r < mt; r++) {
                    const int8_t *xq = x->q + (size_t)(r0 + r) * kp + 32 * b;
                    const __m512i xb = _mm512_set1_epi32(pd_load4b(xq + 4 * j));
                    if (g16 && j >= 4)
                        ihi[r] = _mm512_dpbusd_epi32(ihi[r], wv, xb);
                    else
                        ilo[r] = _mm512_dpbusd_epi32(ilo[r], wv, xb);
                }
            }
        }
        const size_t ab = tb * G * 16;
        const __m512 a0 = pd_load16(w->a, ab, half), a1 = g16 ? pd_load16(w->a, ab + 16, half) : a0;
        const __m512 ov = w->off ? pd_load16(w->off, tb * 16, half) : a0;
        for (int r = 0; r < mt; r++) {
            const size_t xb = (size_t)(r0 + r) * nb + b;
            acc[r] = pd_block_fma16(acc[r], ilo[r], ihi[r], a0, a1, ov, x->d[xb], x->s[xb], g16, w->off != 0);
        }
    }
    const int n0 = PD_TILE_COLS * t, cols = w->n - n0 < 16 ? w->n - n0 : 16;
    const __mmask16 keep = (__mmask16)((1u << cols) - 1u);
    for (int r = 0; r < mt; r++) _mm512_mask_storeu_ps(y + (size_t)(r0 + r) * ldy + n0, keep, acc[r]);
}

/* Row tiles of 1 to 8 rows, one instantiation of the unrolled kernel each: a product of up
 * to 8 rows is one pass over each weight tile (a tail of 7 rows as 4 + 2 + 1 widened the Q4
 * nibbles three times and cost more than 8 rows). Every row's arithmetic is the same in any of
 * them. */
#define PD_TILE(CALL)                                                      \
    switch (mt) {                                                          \
    case 8: { const int MT = 8; CALL; } break;                             \
    case 7: { const int MT = 7; CALL; } break;                             \
    case 6: { const int MT = 6; CALL; } break;                             \
    case 5: { const int MT = 5; CALL; } break;                             \
    case 4: { const int MT = 4; CALL; } break;                             \
    case 3: { const int MT = 3; CALL; } break;                             \
    case 2: { const int MT = 2; CALL; } break;                             \
    case 1: { const int MT = 1; CALL; } break;                             \
    }

#define PD_T(K, G, B) PD_TILE(tile16(w, x, t, r0, MT, K, G, w->half, B, y, ldy))

void pd_cols_avx512vnni(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int t0, int t1) {
    for (int t = t0; t < t1; t++)
        for (int r0 = 0, mt; r0 < x->m; r0 += mt) {
            const int left = x->m - r0;
            mt = left >= 8 ? 8 : left;
            if (w->kind == PD_KIND_Q4) {
                PD_T(PD_KIND_Q4, 0, 0)
            } else if (w->biased) {
                if (w->group == 16) { PD_T(PD_KIND_Q8, 1, 1) } else { PD_T(PD_KIND_Q8, 0, 1) }
            } else {
                PD_T(PD_KIND_Q8, 0, 0)
            }
        }
}
