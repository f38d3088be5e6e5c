/* Per-row operations of the native decoder: RMSNorm, rotary, SiLU * up, KV-cache writes and
 * attention over the native KV cache for a draft tree.
 *
 * Batch invariance by construction: every output row is a fixed function of its own inputs.
 * No loop bound, reduction order or vector width depends on how many rows come together; an
 * attention query reduces over its allowed keys in slot order, whatever other queries exist.
 *
 * KV cache layout (one cache = one request): keys and values each [layers, kv_heads, cap, dim]
 * float32. Callers pass, per query row, the cache's base addresses and capacity, so the rows of
 * one call may live on different caches (continuous batching).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qgemm.h"

/* The native backend runs only where the kernels' AVX2 path does (kernels.available()). No
 * contraction into fma behind the source's back (build flags); where fma is meant, it is
 * written out. */
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define LANES 8

/* sum over i of a[i] * b[i] in a fixed order: LANES partial sums, then a fixed tree. */
static inline float dot_fixed(const float *a, const float *b, int64_t n) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * (w + shift), rows x n; shift is 1 for Gemma. */
void pd_rmsnorm(const float *x, const float *w, float *out, int64_t rows, int64_t n, float eps, float shift) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *o = out + r * n;
        float ss = dot_fixed(xr, xr, n);
        float inv = 1.0f / sqrtf(ss / (float)n + eps);
        for (int64_t i = 0; i < n; i++) o[i] = (w[i] + shift) * (xr[i] * inv);
    }
}

/* cos and sin of each row's angles (rows x rot/2 each): cs = cos(p * inv_freq[i]) * attn_scale. */
static void rope_table(int64_t rows, int64_t half, const int64_t *pos, const float *inv_freq, float attn_scale, float *cs,
                       float *sn) {
    for (int64_t r = 0; r < rows; r++) {
        float p = (float)pos[r];
        for (int64_t i = 0; i < half; i++) {
            float a = p * inv_freq[i];
            cs[r * half + i] = cosf(a) * attn_scale;
            sn[r * half + i] = sinf(a) * attn_scale;
        }
    }
}

static void rope_apply(float *x, int64_t rows, int64_t heads, int64_t dim, int64_t rot, int64_t stride, const float *cs,
                       const float *sn, int neox) {
    int64_t half = rot / 2;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < heads; h++) {
            float *v = x + r * stride + h * dim;
            const float *c = cs + r * half, *s = sn + r * half;
            for (int64_t i = 0; i < half; i++) {
                int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                float x0 = v[i0], x1 = v[i1];
                v[i0] = x0 * c[i] - x1 * s[i];
                v[i1] = x1 * c[i] + x0 * s[i];
            }
        }
}

/* Rotary in place on x [rows, heads, dim] (row r at x + r * stride) at positions pos[rows]. inv_freq [rot/2] (the
 * scaling already folded in), attn_scale multiplies cos and sin (1 unless the scaling says).
 * neox = 1: pairs (i, i + rot/2) (rotate-half); neox = 0: adjacent pairs (2i, 2i + 1). */
void pd_rope(float *x, int64_t rows, int64_t heads, int64_t dim, int64_t rot, int64_t stride, const int64_t *pos,
             const float *inv_freq, float attn_scale, int neox) {
    int64_t half = rot / 2;
    float cs[512], sn[512];
    if (half > 512) return;
    for (int64_t r = 0; r < rows; r++) {
        rope_table(1, half, pos + r, inv_freq, attn_scale, cs, sn);
        rope_apply(x + r * stride, 1, heads, dim, rot, stride, cs, sn, neox);
    }
}

static inline __m256 exp8(__m256 x);

/* out[r, i] = silu(gate[r, i]) * up[r, i], rows x n; gate and up rows are `stride` apart
 * (2n when they sit side by side in one [rows, 2n] product). silu(a) = a / (1 + e^-a) with
 * exp8's e^x, element by element (the same value wherever the element sits). gelu = 1: the
 * tanh GELU instead of SiLU (Gemma). */
void pd_act_mul(const float *gate, const float *up, float *out, int64_t rows, int64_t n, int64_t stride, int gelu) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate + r * stride, *u = up + r * stride;
        float *o = out + r * n;
        int64_t i = 0;
        if (!gelu)
            for (; i + 8 <= n; i += 8) {
                const __m256 a = _mm256_loadu_ps(g + i);
                const __m256 act = _mm256_div_ps(a, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, a))));
                _mm256_storeu_ps(o + i, _mm256_mul_ps(act, _mm256_loadu_ps(u + i)));
            }
        for (; i < n; i++) {
            float a = g[i], act;
            if (gelu) {
                act = 0.5f * a * (1.0f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a)));
            } else {
                float tmp[8] = {-a};
                _mm256_storeu_ps(tmp, exp8(_mm256_loadu_ps(tmp)));
                act = a / (1.0f + tmp[0]);
            }
            o[i] = act * u[i];
        }
    }
}

/* Write row r's keys/values (k, v + r * stride: [kv_heads, dim]) into its cache at slot slot[r]. */
void pd_kv_write(const float *k, const float *v, int64_t rows, int64_t kvh, int64_t dim, int64_t stride, const int64_t *kptr,
                 const int64_t *vptr, const int64_t *cap, const int64_t *slot, int64_t layer) {
    for (int64_t r = 0; r < rows; r++) {
        float *K = (float *)(intptr_t)kptr[r], *V = (float *)(intptr_t)vptr[r];
        for (int64_t g = 0; g < kvh; g++) {
            int64_t off = ((layer * kvh + g) * cap[r] + slot[r]) * dim;
            memcpy(K + off, k + r * stride + g * dim, sizeof(float) * dim);
            memcpy(V + off, v + r * stride + g * dim, sizeof(float) * dim);
        }
    }
}

/* Attention: q [rows, heads, dim] (row r at q + r * qstride) -> out [rows, heads, dim]. Row r
 * attends to the slots s < nkeys[r] of its cache with mask[r * mask_stride + s] != 0, in slot
 * order (the scores, then their maximum and weights, then the weighted values). Grouped heads:
 * head h reads kv head h / (heads / kv_heads). The (row, head) items are split over the
 * kernels' thread pool; each item is computed by one thread, the same way whatever the split. */
typedef struct {
    const float *q;
    float *out;
    int64_t qstride, rows, heads, kvh, dim, mask_stride, layer, max_keys;
    const int64_t *kptr, *vptr, *cap, *nkeys;
    const uint8_t *mask;
    float scale;
} attn_job;

/* e^x for 8 lanes (Cephes' polynomial, about 1 ulp; x clamped to [-87.3, 88.4]): a fixed
 * function of each lane, so a score's weight never depends on its neighbours. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.37626f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline float hsum8(__m256 v) { /* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) */
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}

#define PD_MAX_DIM 256

/* One (row, head) for the head sizes attend_rows does not take (not a multiple of 8, or above
 * PD_MAX_DIM): the allowed slots gathered in order, their scores (dot_fixed each), weights
 * exp(score - max), and the weighted sum of values in slot order. */
static void attend_one(const attn_job *j, int64_t r, int64_t h, float *scores, int32_t *idx) {
    int64_t dim = j->dim, kvh = j->kvh, g = h / (j->heads / kvh);
    const float *K = (const float *)(intptr_t)j->kptr[r], *V = (const float *)(intptr_t)j->vptr[r];
    const float *Kg = K + (j->layer * kvh + g) * j->cap[r] * dim;
    const float *Vg = V + (j->layer * kvh + g) * j->cap[r] * dim;
    const float *qh = j->q + r * j->qstride + h * dim;
    const uint8_t *m = j->mask + r * j->mask_stride;
    float *o = j->out + (r * j->heads + h) * dim;
    int64_t n = j->nkeys[r], cnt = 0;
    for (int64_t s = 0; s < n; s++)
        if (m[s]) idx[cnt++] = (int32_t)s;
    for (int64_t i = 0; i < dim; i++) o[i] = 0.0f;
    if (cnt == 0) return; /* no allowed key: zeros (the decode loop never asks this) */
    float mx = -INFINITY;
    for (int64_t c = 0; c < cnt; c++) {
        const float sc = dot_fixed(qh, Kg + (int64_t)idx[c] * dim, dim) * j->scale;
        scores[c] = sc;
        if (sc > mx) mx = sc;
    }
    int64_t c = 0;
    __m256 vmx = _mm256_set1_ps(mx);
    for (; c + 8 <= cnt; c += 8) _mm256_storeu_ps(scores + c, exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + c), vmx)));
    if (c < cnt) {
        float tmp[8] = {0};
        for (int64_t t = c; t < cnt; t++) tmp[t - c] = scores[t] - mx;
        _mm256_storeu_ps(tmp, exp8(_mm256_loadu_ps(tmp)));
        for (int64_t t = c; t < cnt; t++) scores[t] = tmp[t - c];
    }
    float total = 0.0f;
    for (c = 0; c < cnt; c++) total += scores[c];
    for (c = 0; c < cnt; c++) {
        const float *vs = Vg + (int64_t)idx[c] * dim;
        for (int64_t i = 0; i < dim; i++) o[i] += scores[c] * vs[i];
    }
    float inv = 1.0f / total;
    for (int64_t i = 0; i < dim; i++) o[i] *= inv;
}

/* Queries of one attention pass: up to ATT_ROWS (row, head) pairs, the rows of one cache and the
 * heads of one kv head (grouped-query attention: the pass reads that kv head's keys and values
 * once for all of them). */
#define ATT_ROWS 16
/* Keys scored per tile: a tile's keys stay in L1 while every query of the pass reads them. */
#define ATT_KTILE 64
/* Room past each query's scores, so the last group of 4 (and of 8) may be written whole. */
#define ATT_PAD 8

/* The scores of 4 keys (k0..k3) for one query q (NV vectors of 8): each key's products in 8
 * lanes, one fma chain per lane over the vectors in order, then the fixed tree
 * ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)), times scale. The tree is taken by horizontal adds
 * that never mix two keys, so a key's score is the same whichever keys share its group. */
static inline __attribute__((always_inline)) __m128 score4(const float *q, const float *k0, const float *k1,
                                                           const float *k2, const float *k3, const int NV, __m128 scale) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < NV; i++) {
        const __m256 qv = _mm256_loadu_ps(q + 8 * i);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 8 * i), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + 8 * i), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + 8 * i), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + 8 * i), a3);
    }
    /* hadd(x, y) = [x01 x23 y01 y23 | x45 x67 y45 y67]; twice gives [k0..k3 of l0-3 | of l4-7] */
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    return _mm_mul_ps(s, scale);
}

/* A row's allowed-key flags for slots [s, s + 8) as lane masks (slots at or past nk: not allowed). */
static inline __m256 allowed8(const uint8_t *m, int64_t s, int64_t nk) {
    uint8_t b[8] = {0};
    if (s + 8 <= nk) memcpy(b, m + s, 8);
    else
        for (int64_t t = s; t < nk; t++) b[t - s] = m[t];
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(v, _mm256_setzero_si256()));
}

/* The heads [h0, h1) (of one kv head) for the rows [ra, rb), which share one cache: query
 * qi = (ra + qi / nh, h0 + qi % nh). Each query's arithmetic is its own and fixed, whatever
 * other queries or masked keys exist:
 * - the score of slot s: score4's fma chain and tree (computed for every slot below the row's
 *   nkeys; a masked slot's score is never used);
 * - the maximum over the allowed slots (exact, so in any order);
 * - weights w_s = exp8(score - max); their total over the allowed slots in 8 lanes, the k-th
 *   allowed slot in lane k % 8, in slot order, then hsum8's fixed tree (a tree node's path has
 *   the same allowed slots in the same order as the same tokens computed alone, at other slots);
 * - the output: sum over allowed slots, in slot order, of w_s * v_s (one fma chain per element),
 *   times 1 / total.
 * The queries share only the loads: keys and values are read a tile at a time for all of them.
 * NV (= dim / 8) is a constant in each instantiation. */
static inline __attribute__((always_inline)) void attend_rows_nv(const attn_job *j, int64_t ra, int64_t rb, int64_t h0,
                                                                  int64_t h1, float *scores, int32_t *idx, const int NV) {
    const int64_t dim = 8 * NV, kvh = j->kvh, g = h0 / (j->heads / kvh), nh = h1 - h0, nq = (rb - ra) * nh;
    const int64_t stride = (j->max_keys > 0 ? j->max_keys : 1) + ATT_PAD;
    const float *K = (const float *)(intptr_t)j->kptr[ra], *V = (const float *)(intptr_t)j->vptr[ra];
    const float *Kg = K + (j->layer * kvh + g) * j->cap[ra] * dim;
    const float *Vg = V + (j->layer * kvh + g) * j->cap[ra] * dim;
    const __m128 scale = _mm_set1_ps(j->scale);
    int64_t n = 0;
    for (int64_t r = ra; r < rb; r++)
        if (j->nkeys[r] > n) n = j->nkeys[r];
    for (int64_t s0 = 0; s0 < n; s0 += ATT_KTILE)
        for (int64_t qi = 0; qi < nq; qi++) {
            const int64_t row = ra + qi / nh, h = h0 + qi % nh;
            const int64_t nk = j->nkeys[row], end = s0 + ATT_KTILE < nk ? s0 + ATT_KTILE : nk;
            const float *qh = j->q + row * j->qstride + h * dim;
            float *sr = scores + qi * stride;
            for (int64_t s = s0; s < end; s += 4) {
                /* past the row's last key: repeat it (that lane's score is written to the padding) */
                const float *k0 = Kg + s * dim;
                const float *k1 = s + 1 < end ? k0 + dim : k0, *k2 = s + 2 < end ? k0 + 2 * dim : k0;
                const float *k3 = s + 3 < end ? k0 + 3 * dim : k0;
                _mm_storeu_ps(sr + s, score4(qh, k0, k1, k2, k3, NV, scale));
            }
        }
    int64_t cnt[ATT_ROWS], cur[ATT_ROWS]; /* allowed slots of each query; the next one to add */
    float inv[ATT_ROWS];
    for (int64_t qi = 0; qi < nq; qi++) {
        const int64_t row = ra + qi / nh, h = h0 + qi % nh;
        float *sr = scores + qi * stride, *o = j->out + (row * j->heads + h) * dim;
        int32_t *ir = idx + qi * stride;
        const int64_t nk = j->nkeys[row];
        const uint8_t *m = j->mask + row * j->mask_stride;
        const __m256 ninf = _mm256_set1_ps(-INFINITY);
        __m256 vmx = ninf;
        for (int64_t s = 0; s < nk; s += 8)
            vmx = _mm256_max_ps(vmx, _mm256_blendv_ps(ninf, _mm256_loadu_ps(sr + s), allowed8(m, s, nk)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float mx = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
        for (int64_t i = 0; i < dim; i++) o[i] = 0.0f; /* the accumulators, from slot 0 on */
        cnt[qi] = cur[qi] = 0;
        inv[qi] = 0.0f;
        if (mx == -INFINITY) continue; /* no allowed key: zeros (the decode loop never asks this) */
        vmx = _mm256_set1_ps(mx);
        for (int64_t s = 0; s < nk; s += 8)
            _mm256_storeu_ps(sr + s, exp8(_mm256_sub_ps(_mm256_loadu_ps(sr + s), vmx)));
        /* the allowed slots and their weights, packed (c <= s: in place), then the total: the
         * k-th allowed slot's weight in lane k % 8 */
        int64_t c = 0;
        for (int64_t s = 0; s < nk; s++)
            if (m[s]) {
                ir[c] = (int32_t)s;
                sr[c++] = sr[s];
            }
        for (int64_t t = c; t < c + 8; t++) sr[t] = 0.0f; /* c <= nk: within the query's padding */
        __m256 tot = _mm256_setzero_ps();
        for (int64_t t = 0; t < c; t += 8) tot = _mm256_add_ps(tot, _mm256_loadu_ps(sr + t));
        cnt[qi] = c;
        inv[qi] = 1.0f / hsum8(tot);
    }
    /* The weighted values, a tile of slots at a time for all the queries (the tile's values stay
     * in L1 while every query reads them): each query's accumulators wait in its output between
     * tiles, so each element is still one fma chain over the allowed slots in slot order. The
     * inner loop has no branch and no store, which keeps its accumulators in registers. */
    for (int64_t s0 = 0; s0 < n; s0 += ATT_KTILE)
        for (int64_t qi = 0; qi < nq; qi++) {
            const float *sr = scores + qi * stride;
            const int32_t *ir = idx + qi * stride;
            int64_t t = cur[qi], e = t;
            while (e < cnt[qi] && ir[e] < s0 + ATT_KTILE) e++;
            if (e == t) continue;
            float *o = j->out + ((ra + qi / nh) * j->heads + h0 + qi % nh) * dim;
            __m256 acc[NV];
            for (int i = 0; i < NV; i++) acc[i] = _mm256_loadu_ps(o + 8 * i);
            for (; t < e; t++) {
                const float *vs = Vg + (int64_t)ir[t] * dim;
                const __m256 p = _mm256_set1_ps(sr[t]);
                for (int i = 0; i < NV; i++) acc[i] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vs + 8 * i), acc[i]);
            }
            for (int i = 0; i < NV; i++) _mm256_storeu_ps(o + 8 * i, acc[i]);
            cur[qi] = e;
        }
    for (int64_t qi = 0; qi < nq; qi++) {
        float *o = j->out + ((ra + qi / nh) * j->heads + h0 + qi % nh) * dim;
        const __m256 iv = _mm256_set1_ps(inv[qi]);
        if (cnt[qi])
            for (int i = 0; i < NV; i++) _mm256_storeu_ps(o + 8 * i, _mm256_mul_ps(_mm256_loadu_ps(o + 8 * i), iv));
    }
}

/* the head sizes the models use get their own unrolled copy; other multiples of 8 up to
 * PD_MAX_DIM share a general one (the same arithmetic) */
static void attend_rows(const attn_job *j, int64_t ra, int64_t rb, int64_t h0, int64_t h1, float *scores, int32_t *idx) {
    switch (j->dim) {
    case 64: attend_rows_nv(j, ra, rb, h0, h1, scores, idx, 8); break;
    case 128: attend_rows_nv(j, ra, rb, h0, h1, scores, idx, 16); break;
    case 256: attend_rows_nv(j, ra, rb, h0, h1, scores, idx, 32); break;
    default: attend_rows_nv(j, ra, rb, h0, h1, scores, idx, (int)(j->dim / 8)); break;
    }
}

/* Blocks of up to ATT_ROWS consecutive rows on one cache. */
static int64_t row_block_end(const attn_job *j, int64_t ra) {
    int64_t rb = ra + 1;
    while (rb < j->rows && rb - ra < ATT_ROWS && j->kptr[rb] == j->kptr[ra] && j->vptr[rb] == j->vptr[ra] && j->cap[rb] == j->cap[ra]) rb++;
    return rb;
}

/* Heads [h0, h1) for the rows [ra, rb): one pass per kv head they touch, each taking as many
 * of that kv head's query heads as fit ATT_ROWS queries. */
static void attend_heads(const attn_job *j, int64_t ra, int64_t rb, int64_t h0, int64_t h1, float *scores, int32_t *idx) {
    const int64_t group = j->heads / j->kvh, per = ATT_ROWS / (rb - ra) > 0 ? ATT_ROWS / (rb - ra) : 1;
    for (int64_t h = h0; h < h1;) {
        int64_t e = (h / group + 1) * group; /* the end of h's kv head */
        if (e > h1) e = h1;
        if (e - h > per) e = h + per;
        attend_rows(j, ra, rb, h, e, scores, idx);
        h = e;
    }
}

/* Work split. A decoding step (its rows one block: one request's root and draft): each thread
 * takes a contiguous run of heads, so that a kv head's query heads are mostly done in one pass
 * that reads its keys and values once (9 heads on 3 kv heads over 2 threads: 4 such reads
 * instead of 6). Several blocks (a prefill, batched requests): items (block, head) dealt round
 * robin, so that a causal prefill's long and short rows spread evenly over the threads. Which
 * thread computes a query never changes its value. */
static void attn_task(void *arg, int tid, int nth) {
    const attn_job *j = (const attn_job *)arg;
    const int vec = j->dim % 8 == 0 && j->dim <= PD_MAX_DIM;
    size_t n = (size_t)(j->max_keys > 0 ? j->max_keys : 1);
    float *scores = (float *)malloc(sizeof(float) * (vec ? (n + ATT_PAD) * ATT_ROWS : n));
    int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (n + ATT_PAD) * (vec ? ATT_ROWS : 1));
    if (scores && idx) {
        if (vec && row_block_end(j, 0) == j->rows) {
            const int64_t h0 = j->heads * tid / nth, h1 = j->heads * (tid + 1) / nth;
            if (h1 > h0) attend_heads(j, 0, j->rows, h0, h1, scores, idx);
        } else {
            int64_t item = 0;
            for (int64_t ra = 0, rb; ra < j->rows; ra = rb) {
                rb = vec ? row_block_end(j, ra) : ra + 1;
                for (int64_t h = 0; h < j->heads; h++, item++) {
                    if (item % nth != tid) continue;
                    if (vec)
                        attend_rows(j, ra, rb, h, h + 1, scores, idx);
                    else
                        attend_one(j, ra, h, scores, idx);
                }
            }
        }
    }
    free(scores); /* out of memory: these rows stay as they were (never seen in practice) */
    free(idx);
}

void pd_attention(const float *q, int64_t qstride, float *out, int64_t rows, int64_t heads, int64_t kvh, int64_t dim,
                  const int64_t *kptr, const int64_t *vptr, const int64_t *cap, const uint8_t *mask,
                  int64_t mask_stride, const int64_t *nkeys, int64_t layer, float scale) {
    attn_job j = {q, out, qstride, rows, heads, kvh, dim, mask_stride, layer, 0, kptr, vptr, cap, nkeys, mask, scale};
    int64_t work = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (nkeys[r] > j.max_keys) j.max_keys = nkeys[r];
        work += nkeys[r];
    }
    if (work * heads * dim < (1 << 16)) attn_task(&j, 0, 1); /* too little to share */
    else pd_parallel(attn_task, &j);
}

/* ---- the whole decoder stack in one call ------------------------------------------------------
 * Per layer: RMSNorm, the q/k/v product(s) (+ biases), rotary, KV write, attention, the output
 * product + residual, RMSNorm, gate/up product(s), SiLU * up, down product + residual. Every
 * step is one of the per-row functions above or the kernels' pd_qgemm_desc, so the stack is as
 * batch-invariant as they are. Python makes the descriptors once at load. */
typedef struct {
    const float *attn_norm, *ffn_norm, *qkv_bias; /* bias NULL when the model has none */
    const pd_wdesc *in[3];                        /* q|k|v fused (n_in 1) or q, k, v (n_in 3) */
    const pd_wdesc *o;
    const pd_wdesc *gu[2]; /* gate|up fused (n_gu 1) or gate, up (n_gu 2) */
    const pd_wdesc *down;
    int64_t n_in, n_gu;
} pd_layer;

typedef struct {
    int64_t n_layers, hidden, heads, kv_heads, head_dim, ffn, rope_dim, neox, path;
    float eps, scale;
    const float *inv_freq;
} pd_model;

/* h [t, hidden] in place: the embeddings in, the last layer's output (before the final norm)
 * out. Work buffers: x [t, hidden], qkv [t, (heads + 2 kv_heads) dim], attn [t, heads dim],
 * proj [t, hidden], gu [t, 2 ffn], act [t, ffn]. Returns 0 or the first kernel error. */
int pd_decoder(const pd_model *m, const pd_layer *layers, float *h, int64_t t, const int64_t *pos,
               const int64_t *kptr, const int64_t *vptr, const int64_t *cap, const int64_t *slot,
               const int64_t *nkeys, const uint8_t *mask, int64_t mask_stride, float *x, float *qkv, float *attn,
               float *proj, float *gu, float *act) {
    const int64_t H = m->hidden, d = m->head_dim, F = m->ffn, hq = m->heads, hkv = m->kv_heads;
    const int64_t nq = hq * d, nk = hkv * d, stride = nq + 2 * nk;
    const int path = (int)m->path, T = (int)t;
    const int64_t half = m->rope_dim / 2;
    float *cs = (float *)malloc(sizeof(float) * (size_t)(t * half > 0 ? t * half : 1) * 2);
    if (!cs) return -3;
    float *sn = cs + t * half;
    rope_table(t, half, pos, m->inv_freq, 1.0f, cs, sn); /* the same angles in every layer */
    int rc = 0;
    for (int64_t li = 0; li < m->n_layers; li++) {
        const pd_layer *L = layers + li;
        pd_rmsnorm(h, L->attn_norm, x, t, H, m->eps, 0.0f);
        for (int64_t i = 0, off = 0; i < L->n_in; off += L->in[i]->n, i++)
            if ((rc = pd_qgemm_desc(path, L->in[i], x, T, (int)H, qkv + off, (int)stride))) goto done;
        if (L->qkv_bias)
            for (int64_t r = 0; r < t; r++)
                for (int64_t i = 0; i < stride; i++) qkv[r * stride + i] += L->qkv_bias[i];
        rope_apply(qkv, t, hq, d, m->rope_dim, stride, cs, sn, (int)m->neox);
        rope_apply(qkv + nq, t, hkv, d, m->rope_dim, stride, cs, sn, (int)m->neox);
        pd_kv_write(qkv + nq, qkv + nq + nk, t, hkv, d, stride, kptr, vptr, cap, slot, li);
        pd_attention(qkv, stride, attn, t, hq, hkv, d, kptr, vptr, cap, mask, mask_stride, nkeys, li, m->scale);
        if ((rc = pd_qgemm_desc(path, L->o, attn, T, (int)nq, proj, (int)H))) goto done;
        for (int64_t i = 0; i < t * H; i++) h[i] += proj[i];
        pd_rmsnorm(h, L->ffn_norm, x, t, H, m->eps, 0.0f);
        for (int64_t i = 0, off = 0; i < L->n_gu; off += L->gu[i]->n, i++)
            if ((rc = pd_qgemm_desc(path, L->gu[i], x, T, (int)H, gu + off, (int)(2 * F)))) goto done;
        pd_act_mul(gu, gu + F, act, t, F, 2 * F, 0);
        if ((rc = pd_qgemm_desc(path, L->down, act, T, (int)F, proj, (int)H))) goto done;
        for (int64_t i = 0; i < t * H; i++) h[i] += proj[i];
    }
done:
    free(cs);
    return rc;
}
