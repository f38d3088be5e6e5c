/* AVX2 path: 8 columns a vector; u8 x s8 pair products (maddubs) summed exactly in integers. */
#pragma GCC target("avx2,fma,f16c")
#include "qgemm_simd.h"

#define MT2 4 /* rows a tile's weights are applied to while they sit in registers */

/* One half tile (8 columns, h = 0 or 1) of tile t for rows r0 .. r0+mt-1. */
PD_INLINE void tile8(const pd_qweight *w, const pd_qact *x, int t, int h, int r0, int mt, int kind, int g16, int half,
                     int biased, float *y, int ldy) {
    const int nb = x->nb, kp = x->kp, G = g16 ? 2 : 1;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones16 = _mm256_set1_epi16(1), bias = _mm256_set1_epi8((char)0x80);
    __m256 acc[MT2];
    for (int r = 0; r < mt; r++) acc[r] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const size_t tb = (size_t)t * nb + b;
        __m256i ilo[MT2], ihi[MT2];
        for (int r = 0; r < mt; r++) ilo[r] = ihi[r] = _mm256_setzero_si256();
        if (kind == PD_KIND_Q4) {
            /* int16 sums of the pair products stay exact: 8 chunks x 2 x 15 x 127 < 32768 */
            for (int jj = 0; jj < 4; jj++) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(w->q + (tb * 4 + jj) * 64 + 32 * h));
                __m256i wl = _mm256_and_si256(raw, m4), wh = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                for (int r = 0; r < mt; r++) {
                    const int8_t *xq = x->q + (size_t)(r0 + r) * kp + 32 * b;
                    __m256i pl = _mm256_maddubs_epi16(wl, _mm256_set1_epi32(pd_load4b(xq + 4 * jj)));
                    __m256i ph = _mm256_maddubs_epi16(wh, _mm256_set1_epi32(pd_load4b(xq + 4 * jj + 16)));
                    if (g16) {
                        ilo[r] = _mm256_add_epi16(ilo[r], pl);
                        ihi[r] = _mm256_add_epi16(ihi[r], ph);
                    } else {
                        ilo[r] = _mm256_add_epi16(ilo[r], _mm256_add_epi16(pl, ph));
                    }
                }
            }
            for (int r = 0; r < mt; r++) {
                ilo[r] = _mm256_madd_epi16(ilo[r], ones16);
                if (g16) ihi[r] = _mm256_madd_epi16(ihi[r], ones16);
            }
        } else {
            for (int j = 0; j < 8; j++) {
                __m256i wv = _mm256_loadu_si256((const __m256i *)(w->q + (tb * 8 + j) * 64 + 32 * h));
                __m256i ws = biased ? _mm256_xor_si256(wv, bias) : wv; /* the signed q */
                __m256i wu = biased ? _mm256_abs_epi8(ws) : wv;
                for (int r = 0; r < mt; r++) {
                    const int8_t *xq = x->q + (size_t)(r0 + r) * kp + 32 * b;
                    __m256i xb = _mm256_set1_epi32(pd_load4b(xq + 4 * j));
                    if (biased) xb = _mm256_sign_epi8(xb, ws);
                    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xb), ones16);
                    if (g16 && j >= 4)
                        ihi[r] = _mm256_add_epi32(ihi[r], p);
                    else
                        ilo[r] = _mm256_add_epi32(ilo[r], p);
                }
            }
        }
        const size_t ab = tb * G * 16 + 8 * h;
        const __m256 a0 = pd_load8(w->a, ab, half), a1 = g16 ? pd_load8(w->a, ab + 16, half) : a0;
        const __m256 ov = w->off ? pd_load8(w->off, tb * 16 + 8 * h, half) : a0;
        for (int r = 0; r < mt; r++) {
            const size_t xb = (size_t)(r0 + r) * nb + b;
            const __m256 d = _mm256_broadcast_ss(x->d + xb);
            acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(a0, d), _mm256_cvtepi32_ps(ilo[r]), acc[r]);
            if (g16) acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(a1, d), _mm256_cvtepi32_ps(ihi[r]), acc[r]);
            if (w->off) acc[r] = _mm256_fmadd_ps(ov, _mm256_broadcast_ss(x->s + xb), acc[r]);
        }
    }
    const int n0 = PD_TILE_COLS * t + 8 * h, cols = w->n - n0 < 8 ? w->n - n0 : 8;
    for (int r = 0; r < mt; r++) {
        float *yr = y + (size_t)(r0 + r) * ldy + n0;
        if (cols == 8) {
            _mm256_storeu_ps(yr, acc[r]);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, acc[r]);
            for (int c = 0; c < cols; c++) yr[c] = tmp[c];
        }
    }
}

/* Row tiles of 4/2/1 rows (fewer instantiations of the unrolled kernel: a tail of
 * 7 rows runs as 4 + 2 + 1; every row's arithmetic is the same in any of them). */
#define PD_TILE(CALL)                                                      \
    switch (mt) {                                                          \
    case 4: { const int MT = 4; CALL; } break;                             \
    case 3: { const int MT = 3; CALL; } break;                             \
    case 2: { const int MT = 2; CALL; } break;                             \
    case 1: { const int MT = 1; CALL; } break;                             \
    }

#define PD_T(K, G, B) PD_TILE(tile8(w, x, t, h, r0, MT, K, G, w->half, B, y, ldy))

void pd_cols_avx2(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int t0, int t1) {
    for (int t = t0; t < t1; t++)
        for (int h = 0; h < 2 && PD_TILE_COLS * t + 8 * h < w->n; h++)
        for (int r0 = 0, mt; r0 < x->m; r0 += mt) {
            const int left = x->m - r0;
            mt = left >= 4 ? 4 : left;
            if (w->kind == PD_KIND_Q4) {
                PD_T(PD_KIND_Q4, 0, 0)
            } else if (w->biased) {
                if (w->group == 16) { PD_T(PD_KIND_Q8, 1, 1) } else { PD_T(PD_KIND_Q8, 0, 1) }
            } else {
                PD_T(PD_KIND_Q8, 0, 0)
            }
        }
}

/* Per row, per 32-block: d = max|x| / 127, q = round-to-nearest-even(x * (1/d)), s = d * sum(q).
 * A whole block is loaded straight from the row; only a row's last, partial block goes through a
 * zero-padded copy (copying every block cost 4x the whole quantization). */
void pd_quantize_rows(const float *x, int m, int k, int ldx, int kp, int8_t *q, float *d, float *s, int32_t *x16) {
    const int nb = kp / 32;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        int8_t *qr = q + (size_t)r * kp;
        for (int b = 0; b < nb; b++) {
            const int base = 32 * b, valid = k - base < 32 ? k - base : 32;
            __m256 v[4], mx = _mm256_setzero_ps();
            if (valid == 32) { /* a whole block: straight from the row */
                for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(xr + base + 8 * j);
            } else { /* the row's last block: zeros past its end */
                float buf[32];
                for (int j = 0; j < 32; j++) buf[j] = j < valid ? xr[base + j] : 0.0f;
                for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(buf + 8 * j);
            }
            for (int j = 0; j < 4; j++) mx = _mm256_max_ps(mx, _mm256_and_ps(v[j], absmask));
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
            const float amax = _mm_cvtss_f32(m4);
            const float db = amax / 127.0f;
            const float id = db > 0.0f ? 1.0f / db : 0.0f;
            const __m256 idv = _mm256_set1_ps(id);
            __m256i qi[4];
            for (int j = 0; j < 4; j++) qi[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], idv));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            p = _mm256_max_epi8(p, _mm256_set1_epi8(-127));
            _mm256_storeu_si256((__m256i *)(qr + base), p);
            /* lanes 0..3 sum weights 0..15, lanes 4..7 weights 16..31 */
            __m256i s8 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(1));
            __m128i lo = _mm256_castsi256_si128(s8), hi = _mm256_extracti128_si256(s8, 1);
            lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0x4E));
            lo = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, 0xB1));
            hi = _mm_add_epi32(hi, _mm_shuffle_epi32(hi, 0x4E));
            hi = _mm_add_epi32(hi, _mm_shuffle_epi32(hi, 0xB1));
            const int32_t s0 = _mm_cvtsi128_si32(lo), s1 = _mm_cvtsi128_si32(hi);
            d[(size_t)r * nb + b] = db;
            s[(size_t)r * nb + b] = db * (float)(s0 + s1);
            x16[(size_t)r * 2 * nb + 2 * b] = s0;
            x16[(size_t)r * 2 * nb + 2 * b + 1] = s1;
        }
    }
}
