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
 * contraction into fma (build flags): vector code rounds exactly as the scalar source. */
#pragma GCC target("avx2")

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

/* Rotary in place on x [rows, heads, dim] (row r at x + r * stride) at positions pos[rows]. inv_freq [rot/2] (the
 * scaling already folded in), attn_scale multiplies cos and sin (1 unless the scaling says).
 * neox = 1: pairs (i, i + rot/2) (rotate-half); neox = 0: adjacent pairs (2i, 2i + 1). */
void pd_rope(float *x, int64_t rows, int64_t heads, int64_t dim, int64_t rot, int64_t stride, const int64_t *pos,
             const float *inv_freq, float attn_scale, int neox) {
    int64_t half = rot / 2;
    float cs[512], sn[512];
    if (half > 512) return;
    for (int64_t r = 0; r < rows; r++) {
        float p = (float)pos[r];
        for (int64_t i = 0; i < half; i++) {
            float a = p * inv_freq[i];
            cs[i] = cosf(a) * attn_scale;
            sn[i] = sinf(a) * attn_scale;
        }
        for (int64_t h = 0; h < heads; h++) {
            float *v = x + r * stride + h * dim;
            for (int64_t i = 0; i < half; i++) {
                int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
                float x0 = v[i0], x1 = v[i1];
                v[i0] = x0 * cs[i] - x1 * sn[i];
                v[i1] = x1 * cs[i] + x0 * sn[i];
            }
        }
    }
}

/* out[r, i] = silu(gate[r, i]) * up[r, i], rows x n; gate and up rows are `stride` apart
 * (2n when they sit side by side in one [rows, 2n] product). gelu = 1: the tanh GELU instead
 * of SiLU (Gemma). */
void pd_act_mul(const float *gate, const float *up, float *out, int64_t rows, int64_t n, int64_t stride, int gelu) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate + r * stride, *u = up + r * stride;
        float *o = out + r * n;
        for (int64_t i = 0; i < n; i++) {
            float a = g[i], act;
            if (gelu) act = 0.5f * a * (1.0f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a)));
            else act = a / (1.0f + expf(-a));
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
 * order (two passes: the scores and their maximum, then exp-weighted values). Grouped heads:
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

static void attend_one(const attn_job *j, int64_t r, int64_t h, float *scores) {
    int64_t dim = j->dim, kvh = j->kvh, g = h / (j->heads / kvh);
    const float *K = (const float *)(intptr_t)j->kptr[r], *V = (const float *)(intptr_t)j->vptr[r];
    const float *Kg = K + (j->layer * kvh + g) * j->cap[r] * dim;
    const float *Vg = V + (j->layer * kvh + g) * j->cap[r] * dim;
    const float *qh = j->q + r * j->qstride + h * dim;
    const uint8_t *m = j->mask + r * j->mask_stride;
    float *o = j->out + (r * j->heads + h) * dim;
    int64_t n = j->nkeys[r];
    float mx = -INFINITY;
    for (int64_t s = 0; s < n; s++) {
        if (!m[s]) continue;
        float sc = dot_fixed(qh, Kg + s * dim, dim) * j->scale;
        scores[s] = sc;
        if (sc > mx) mx = sc;
    }
    for (int64_t i = 0; i < dim; i++) o[i] = 0.0f;
    if (mx == -INFINITY) return; /* no allowed key: zeros (the decode loop never asks this) */
    float total = 0.0f;
    for (int64_t s = 0; s < n; s++) {
        if (!m[s]) continue;
        float p = expf(scores[s] - mx);
        total += p;
        const float *vs = Vg + s * dim;
        for (int64_t i = 0; i < dim; i++) o[i] += p * vs[i];
    }
    float inv = 1.0f / total;
    for (int64_t i = 0; i < dim; i++) o[i] *= inv;
}

static void attn_task(void *arg, int tid, int nth) {
    const attn_job *j = (const attn_job *)arg;
    int64_t items = j->rows * j->heads;
    int64_t lo = items * tid / nth, hi = items * (tid + 1) / nth;
    if (lo >= hi) return;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(j->max_keys > 0 ? j->max_keys : 1));
    if (!scores) return; /* out of memory: the caller sees zeros in these rows */
    for (int64_t it = lo; it < hi; it++) attend_one(j, it / j->heads, it % j->heads, scores);
    free(scores);
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
    for (int64_t li = 0; li < m->n_layers; li++) {
        const pd_layer *L = layers + li;
        int rc = 0;
        pd_rmsnorm(h, L->attn_norm, x, t, H, m->eps, 0.0f);
        for (int64_t i = 0, off = 0; i < L->n_in; off += L->in[i]->n, i++)
            if ((rc = pd_qgemm_desc(path, L->in[i], x, T, (int)H, qkv + off, (int)stride))) return rc;
        if (L->qkv_bias)
            for (int64_t r = 0; r < t; r++)
                for (int64_t i = 0; i < stride; i++) qkv[r * stride + i] += L->qkv_bias[i];
        pd_rope(qkv, t, hq, d, m->rope_dim, stride, pos, m->inv_freq, 1.0f, (int)m->neox);
        pd_rope(qkv + nq, t, hkv, d, m->rope_dim, stride, pos, m->inv_freq, 1.0f, (int)m->neox);
        pd_kv_write(qkv + nq, qkv + nq + nk, t, hkv, d, stride, kptr, vptr, cap, slot, li);
        pd_attention(qkv, stride, attn, t, hq, hkv, d, kptr, vptr, cap, mask, mask_stride, nkeys, li, m->scale);
        if ((rc = pd_qgemm_desc(path, L->o, attn, T, (int)nq, proj, (int)H))) return rc;
        for (int64_t i = 0; i < t * H; i++) h[i] += proj[i];
        pd_rmsnorm(h, L->ffn_norm, x, t, H, m->eps, 0.0f);
        for (int64_t i = 0, off = 0; i < L->n_gu; off += L->gu[i]->n, i++)
            if ((rc = pd_qgemm_desc(path, L->gu[i], x, T, (int)H, gu + off, (int)(2 * F)))) return rc;
        pd_act_mul(gu, gu + F, act, t, F, 2 * F, 0);
        if ((rc = pd_qgemm_desc(path, L->down, act, T, (int)F, proj, (int)H))) return rc;
        for (int64_t i = 0; i < t * H; i++) h[i] += proj[i];
    }
    return 0;
}
