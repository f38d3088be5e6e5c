/* Pieces shared by the AVX2 and AVX512 translation units.
 * Include after a `#pragma GCC target` that enables at least avx2, fma and f16c. */
#ifndef PARADEC_QGEMM_SIMD_H
#define PARADEC_QGEMM_SIMD_H

#include <immintrin.h>

#include "qgemm.h"

#define PD_INLINE static inline __attribute__((always_inline))

/* 8 scales or offsets from p + i, float32 or float16 (widened exactly). */
PD_INLINE __m256 pd_load8(const void *p, size_t i, int half) {
    return half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i))) : _mm256_loadu_ps((const float *)p + i);
}

PD_INLINE int32_t pd_load4b(const int8_t *p) { /* 4 activation bytes as one int */
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}

#endif
