/* AVX512-VNNI path: vpdpbusd on a pair of 32-blocks at once (low 256 bits: the even block, high:
 * the odd one), so its lanes are exactly the AVX2 path's even/odd accumulators. */
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include "qgemm_simd.h"

#define MT5 8

static const int32_t PAIR_IDX[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
static const int32_t QUAD_IDX[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};

/* Values i, i+1 of a float32 / float16 row: [v0 x8, v1 x8]. */
PD_INLINE __m512 pair_ps(const void *p, size_t i, int half) {
    __m128 two;
    if (half) {
        int32_t bits;
        __builtin_memcpy(&bits, (const uint16_t *)p + i, 4);
        two = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    } else {
        two = _mm_castpd_ps(_mm_load_sd((const double *)((const float *)p + i)));
    }
    return _mm512_permutexvar_ps(_mm512_loadu_si512(PAIR_IDX), _mm512_castps128_ps512(two));
}

/* Values i..i+3: [v0 x4, v1 x4, v2 x4, v3 x4]. */
PD_INLINE __m512 quad_ps(const void *p, size_t i, int half) {
    __m128 four = half ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)((const uint16_t *)p + i))) : _mm_loadu_ps((const float *)p + i);
    return _mm512_permutexvar_ps(_mm512_loadu_si512(QUAD_IDX), _mm512_castps128_ps512(four));
}

PD_INLINE float finish512(__m512 acc, const pd_qweight *w, int n, int half, const float *s, int nbp) {
    return pd_finish(_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)), w->off,
                     (size_t)n * nbp, half, s, nbp);
}

PD_INLINE void col_q4(const pd_qweight *w, const pd_qact *x, int n, int r0, int mt, int half, float *y, int ldy) {
    const int kp = w->kp, nb = kp / 32, np = kp / 64, nbp = x->nbp;
    const uint8_t *wq = w->q + (size_t)n * (kp / 2);
    const size_t a0 = (size_t)n * nb;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m512 acc[MT5];
    for (int r = 0; r < mt; r++) acc[r] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        __m256i raw = _mm256_loadu_si256((const __m256i *)(wq + 32 * p));
        __m512i wz = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(raw, m4)),
                                        _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), 1);
        const __m512 av = pair_ps(w->a, a0 + 2 * p, half);
        for (int r = 0; r < mt; r++) {
            const size_t xo = (size_t)(r0 + r) * kp + 64 * p; /* also the row's pair offset in dv (16 floats a pair) */
            __m512i i = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wz, _mm512_loadu_si512(x->q + xo));
            __m512 sc = _mm512_mul_ps(av, _mm512_loadu_ps(x->dv + xo / 4));
            acc[r] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(i), acc[r]);
        }
    }
    for (int r = 0; r < mt; r++) y[(size_t)(r0 + r) * ldy + n] = finish512(acc[r], w, n, half, x->s + (size_t)(r0 + r) * nbp, nbp);
}

PD_INLINE void col_q8(const pd_qweight *w, const pd_qact *x, int n, int r0, int mt, int g16, int half, float *y, int ldy) {
    const int kp = w->kp, nb = kp / 32, np = kp / 64, nbp = x->nbp;
    const int8_t *wq = (const int8_t *)w->q + (size_t)n * kp;
    const size_t a0 = (size_t)n * nb * (g16 ? 2 : 1);
    __m512 acc[MT5];
    for (int r = 0; r < mt; r++) acc[r] = _mm512_setzero_ps();
    for (int p = 0; p < np; p++) {
        __m512i wz = _mm512_loadu_si512(wq + 64 * p);
        __m512i u = _mm512_abs_epi8(wz);
        __mmask64 neg = _mm512_movepi8_mask(wz);
        const __m512 av = g16 ? quad_ps(w->a, a0 + 4 * p, half) : pair_ps(w->a, a0 + 2 * p, half);
        for (int r = 0; r < mt; r++) {
            const size_t xo = (size_t)(r0 + r) * kp + 64 * p;
            __m512i xz = _mm512_loadu_si512(x->q + xo);
            xz = _mm512_mask_sub_epi8(xz, neg, _mm512_setzero_si512(), xz);
            __m512i i = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, xz);
            __m512 sc = _mm512_mul_ps(av, _mm512_loadu_ps(x->dv + xo / 4));
            acc[r] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(i), acc[r]);
        }
    }
    for (int r = 0; r < mt; r++) y[(size_t)(r0 + r) * ldy + n] = finish512(acc[r], w, n, half, x->s + (size_t)(r0 + r) * nbp, nbp);
}

#define PD_COLS_CHUNK 4

#define PD_TILE(CALL)                                       \
    switch (mt) {                                           \
    case 1: { const int MT = 1; CALL; } break;              \
    case 2: { const int MT = 2; CALL; } break;              \
    case 3: { const int MT = 3; CALL; } break;              \
    case 4: { const int MT = 4; CALL; } break;              \
    case 5: { const int MT = 5; CALL; } break;              \
    case 6: { const int MT = 6; CALL; } break;              \
    case 7: { const int MT = 7; CALL; } break;              \
    default: { const int MT = 8; CALL; } break;             \
    }

#define PD_KINDS(H)                                         \
    if (w->kind == PD_KIND_Q4) {                            \
        PD_TILE(col_q4(w, x, n, r0, MT, H, y, ldy))         \
    } else if (w->group == 16) {                            \
        PD_TILE(col_q8(w, x, n, r0, MT, 1, H, y, ldy))      \
    } else {                                                \
        PD_TILE(col_q8(w, x, n, r0, MT, 0, H, y, ldy))      \
    }

void pd_cols_avx512vnni(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int n0, int n1) {
    for (int c0 = n0; c0 < n1; c0 += PD_COLS_CHUNK) {
        int c1 = c0 + PD_COLS_CHUNK < n1 ? c0 + PD_COLS_CHUNK : n1;
        for (int r0 = 0; r0 < x->m; r0 += MT5) {
            int mt = x->m - r0 < MT5 ? x->m - r0 : MT5;
            for (int n = c0; n < c1; n++) {
                if (w->half) {
                    PD_KINDS(1)
                } else {
                    PD_KINDS(0)
                }
            }
        }
    }
}
