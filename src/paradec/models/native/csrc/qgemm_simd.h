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

#ifdef __AVX512F__ /* the AVX512-VNNI and AMX files: one copy of their shared float steps */
/* 16 scales or offsets from p + i, float32 or float16 (widened exactly). */
PD_INLINE __m512 pd_load16(const void *p, size_t i, int half) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i))) : _mm512_loadu_ps((const float *)p + i);
}

/* One 32-block's float steps for one row (csrc/qgemm.h): acc += (a0 d) lo [+ (a1 d) hi] [+ off s],
 * lo and hi the block's exact integer dots (hi: the second 16-group where the type has them). */
PD_INLINE __m512 pd_block_fma16(__m512 acc, __m512i lo, __m512i hi, __m512 a0, __m512 a1, __m512 ov, float d, float s,
                                int g16, int off) {
    const __m512 dv = _mm512_set1_ps(d);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(a0, dv), _mm512_cvtepi32_ps(lo), acc);
    if (g16) acc = _mm512_fmadd_ps(_mm512_mul_ps(a1, dv), _mm512_cvtepi32_ps(hi), acc);
    if (off) acc = _mm512_fmadd_ps(ov, _mm512_set1_ps(s), acc);
    return acc;
}
#endif

#endif
