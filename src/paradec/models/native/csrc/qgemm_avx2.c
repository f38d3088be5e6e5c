/* AVX2 path: u8 x s8 pair products (maddubs) summed to int32 lanes of 4 weights. */
#pragma GCC target("avx2,fma,f16c")
#include "qgemm_simd.h"

#define MT2 4 /* rows a weight block is applied to while it sits in registers */

PD_INLINE __m256i dot4(__m256i u, __m256i s) { /* u: u8, s: s8 -> 8 x int32 */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* Scale lanes of block b: a on all 8 lanes (group 32) or the lo/hi 16-groups' a on 4 lanes each. */
PD_INLINE __m256 scale_lanes(const void *a, size_t a0, int b, int g16, int half) {
    if (g16) {
        __m256 lo = _mm256_set1_ps(pd_get(a, a0 + 2 * b, half)), hi = _mm256_set1_ps(pd_get(a, a0 + 2 * b + 1, half));
        return _mm256_blend_ps(lo, hi, 0xF0);
    }
    return _mm256_set1_ps(pd_get(a, a0 + b, half));
}

PD_INLINE void col_q4(const pd_qweight *w, const pd_qact *x, int n, int r0, int mt, int half, float *y, int ldy) {
    const int kp = w->kp, nb = kp / 32, np = kp / 64, nbp = x->nbp;
    const uint8_t *wq = w->q + (size_t)n * (kp / 2);
    const size_t a0 = (size_t)n * nb;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 ae[MT2], ao[MT2];
    for (int r = 0; r < mt; r++) ae[r] = ao[r] = _mm256_setzero_ps();
    for (int p = 0; p < np; p++) {
        __m256i raw = _mm256_loadu_si256((const __m256i *)(wq + 32 * p));
        __m256i w0 = _mm256_and_si256(raw, m4), w1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        const __m256 s0 = scale_lanes(w->a, a0, 2 * p, 0, half), s1 = scale_lanes(w->a, a0, 2 * p + 1, 0, half);
        for (int r = 0; r < mt; r++) {
            const int8_t *xq = x->q + (size_t)(r0 + r) * kp + 64 * p;
            const float *xd = x->d + (size_t)(r0 + r) * nb + 2 * p;
            __m256i i0 = dot4(w0, _mm256_loadu_si256((const __m256i *)xq));
            __m256i i1 = dot4(w1, _mm256_loadu_si256((const __m256i *)(xq + 32)));
            ae[r] = _mm256_fmadd_ps(_mm256_mul_ps(s0, _mm256_broadcast_ss(xd)), _mm256_cvtepi32_ps(i0), ae[r]);
            ao[r] = _mm256_fmadd_ps(_mm256_mul_ps(s1, _mm256_broadcast_ss(xd + 1)), _mm256_cvtepi32_ps(i1), ao[r]);
        }
    }
    for (int r = 0; r < mt; r++)
        y[(size_t)(r0 + r) * ldy + n] = pd_finish(ae[r], ao[r], w->off, (size_t)n * nbp, half, x->s + (size_t)(r0 + r) * nbp, nbp);
}

PD_INLINE void col_q8(const pd_qweight *w, const pd_qact *x, int n, int r0, int mt, int g16, int half, float *y, int ldy) {
    const int kp = w->kp, nb = kp / 32, np = kp / 64, nbp = x->nbp;
    const int8_t *wq = (const int8_t *)w->q + (size_t)n * kp;
    const size_t a0 = (size_t)n * nb * (g16 ? 2 : 1);
    __m256 ae[MT2], ao[MT2];
    for (int r = 0; r < mt; r++) ae[r] = ao[r] = _mm256_setzero_ps();
    for (int p = 0; p < np; p++) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(wq + 64 * p));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(wq + 64 * p + 32));
        __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);
        const __m256 s0 = scale_lanes(w->a, a0, 2 * p, g16, half), s1 = scale_lanes(w->a, a0, 2 * p + 1, g16, half);
        for (int r = 0; r < mt; r++) {
            const int8_t *xq = x->q + (size_t)(r0 + r) * kp + 64 * p;
            const float *xd = x->d + (size_t)(r0 + r) * nb + 2 * p;
            __m256i i0 = dot4(u0, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)xq), w0));
            __m256i i1 = dot4(u1, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xq + 32)), w1));
            ae[r] = _mm256_fmadd_ps(_mm256_mul_ps(s0, _mm256_broadcast_ss(xd)), _mm256_cvtepi32_ps(i0), ae[r]);
            ao[r] = _mm256_fmadd_ps(_mm256_mul_ps(s1, _mm256_broadcast_ss(xd + 1)), _mm256_cvtepi32_ps(i1), ao[r]);
        }
    }
    for (int r = 0; r < mt; r++)
        y[(size_t)(r0 + r) * ldy + n] = pd_finish(ae[r], ao[r], w->off, (size_t)n * nbp, half, x->s + (size_t)(r0 + r) * nbp, nbp);
}

#define PD_COLS_CHUNK 4 /* columns whose weights stay in L1 while every row tile passes over them */

#define PD_TILE(CALL)                                                      \
    switch (mt) {                                                          \
    case 1: { const int MT = 1; CALL; } break;                             \
    case 2: { const int MT = 2; CALL; } break;                             \
    case 3: { const int MT = 3; CALL; } break;                             \
    default: { const int MT = 4; CALL; } break;                            \
    }

#define PD_KINDS(H)                                                        \
    if (w->kind == PD_KIND_Q4) {                                           \
        PD_TILE(col_q4(w, x, n, r0, MT, H, y, ldy))                        \
    } else if (w->group == 16) {                                           \
        PD_TILE(col_q8(w, x, n, r0, MT, 1, H, y, ldy))                     \
    } else {                                                               \
        PD_TILE(col_q8(w, x, n, r0, MT, 0, H, y, ldy))                     \
    }

void pd_cols_avx2(const pd_qweight *w, const pd_qact *x, float *y, int ldy, int n0, int n1) {
    for (int c0 = n0; c0 < n1; c0 += PD_COLS_CHUNK) {
        int c1 = c0 + PD_COLS_CHUNK < n1 ? c0 + PD_COLS_CHUNK : n1;
        for (int r0 = 0; r0 < x->m; r0 += MT2) {
            int mt = x->m - r0 < MT2 ? x->m - r0 : MT2;
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

/* Per row, per 32-block: d = max|x| / 127, q = round-to-nearest-even(x * (1/d)), s = d * sum(q). */
void pd_quantize_rows(const float *x, int m, int k, int ldx, int8_t *q, float *d, float *s, int kp, int nbp) {
    const int nb = kp / 32;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * ldx;
        int8_t *qr = q + (size_t)r * kp;
        float *dr = d + (size_t)r * nb, *sr = s + (size_t)r * nbp;
        for (int b = 0; b < nb; b++) {
            float buf[32];
            int base = 32 * b, valid = k - base < 32 ? (k - base > 0 ? k - base : 0) : 32;
            for (int j = 0; j < 32; j++) buf[j] = j < valid ? xr[base + j] : 0.0f;
            __m256 v[4], mx = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                v[j] = _mm256_loadu_ps(buf + 8 * j);
                mx = _mm256_max_ps(mx, _mm256_and_ps(v[j], absmask));
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
            const float amax = _mm_cvtss_f32(m4);
            const float db = amax / 127.0f;
            const float id = db > 0.0f ? 1.0f / db : 0.0f;
            const __m256 idv = _mm256_set1_ps(id);
            __m256i qi[4];
            for (int j = 0; j < 4; j++) qi[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], idv));
            /* x * (1/d) can round to 127.00001: clamp before narrowing (the packs saturate anyway) */
            __m256i p01 = _mm256_packs_epi32(qi[0], qi[1]), p23 = _mm256_packs_epi32(qi[2], qi[3]);
            __m256i p = _mm256_packs_epi16(p01, p23);
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            p = _mm256_max_epi8(p, _mm256_set1_epi8(-127));
            _mm256_storeu_si256((__m256i *)(qr + base), p);
            __m256i s16 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(1));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s16), _mm256_extracti128_si256(s16, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
            dr[b] = db;
            sr[b] = db * (float)_mm_cvtsi128_si32(s4);
        }
        for (int b = nb; b < nbp; b++) sr[b] = 0.0f;
    }
}
