/* Pieces shared by the AVX2 and AVX512 translation units, so that both reduce in one order.
 * Include after a `#pragma GCC target` that enables at least avx2 and fma. */
#ifndef PARADEC_QGEMM_SIMD_H
#define PARADEC_QGEMM_SIMD_H

#include <immintrin.h>

#include "qgemm.h"

#define PD_INLINE static inline __attribute__((always_inline))

/* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) */
PD_INLINE float pd_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* Scale or offset i of a row stored as float32 or float16 (widened exactly). */
PD_INLINE float pd_get(const void *p, size_t i, int half) {
    return half ? _cvtsh_ss(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

PD_INLINE __m256 pd_load8(const void *p, size_t i, int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i))) : _mm256_loadu_ps((const float *)p + i);
}

/* The end of one output: the two parity accumulators, then the offsets' term. */
PD_INLINE float pd_finish(__m256 acc_e, __m256 acc_o, const void *off, size_t o0, int half, const float *s, int nbp) {
    float y = pd_hsum8(_mm256_add_ps(acc_e, acc_o));
    if (off) {
        __m256 o = _mm256_setzero_ps();
        for (int b = 0; b < nbp; b += 8) o = _mm256_fmadd_ps(pd_load8(off, o0 + b, half), _mm256_loadu_ps(s + b), o);
        y += pd_hsum8(o);
    }
    return y;
}

#endif
