/* Causal prefill attention on the CPU for bfloat16 caches, with AVX-512 BF16 dot products.
 *
 * Packed prefill chunks attend to their sequence's KV blocks (the chunk's own K/V already stored), as
 * paged_attention_prefill in reference.py defines. torch's CPU flash attention runs the same math at
 * about a third of the machine's bf16 matmul rate on short chunks; this kernel keeps both products on
 * vdpbf16ps, the instruction the matmuls use, and skips the key tiles the causal mask hides.
 *
 * Numerics follow flash attention for bf16: scores accumulate bf16 products in float32, the softmax is
 * online and in float32, and the probabilities are rounded to bf16 for the product with V (as torch's
 * kernel rounds them for its second matmul), accumulating again in float32; the output is rounded once.
 *
 * Work item: one sequence's kv head and a block of QUERY_BLOCK chunk tokens. It first copies the keys
 * that block can see into a pair-interleaved layout (scratch), so the inner loops read dense vectors:
 *   keys:   kp[d / 2][key], a 32-bit word holding dims d and d + 1 of one key;
 *   values: vp[key / 2][d], a 32-bit word holding dim d of keys 2k and 2k + 1.
 * Then ROWS query rows at a time (rows run token-major over the kv head's group of query heads) go over
 * the keys KEY_TILE at a time, holding scores and the output accumulators in registers.
 *
 * Built without AVX-512 BF16 (another CPU, another compiler), every entry but pdserve_prefill_supported
 * returns ERR_UNSUPPORTED and the caller keeps torch's kernel.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ERR_OK 0
#define ERR_NO_MEMORY 1
#define ERR_BAD_CONTEXT_LEN 2
#define ERR_BAD_BLOCK_ID 3
#define ERR_BAD_SHAPE 6
#define ERR_UNSUPPORTED 7
#define ERR_BAD_QUERY_OFFSETS 8

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define HAVE_BF16_DOT 1
#include <immintrin.h>
#endif

int pdserve_prefill_supported(void) {
#ifdef HAVE_BF16_DOT
    return 1;
#else
    return 0;
#endif
}

/* Chunk tokens per work item: enough rows to repay copying the keys, few enough to share out. */
#define QUERY_BLOCK 64
/* Keys per tile: four vectors of 16 scores per row. */
#define KEY_TILE 64
/* Query rows computed together, each with 4 score vectors and 4 output vectors in registers. */
#define ROWS 4
/* The output is accumulated DIM_STEP dims at a time; value rows and accumulators are padded to a multiple
 * of it with zeros. head_dim is a multiple of 16 (one vector) and at most MAX_HEAD_DIM. */
#define DIM_STEP 64
#define MAX_HEAD_DIM 256

typedef struct {
    uint16_t *out;
    const uint16_t *query, *k_cache, *v_cache;
    const int32_t *block_tables, *cu_seqlens_q, *context_lens;
    int64_t batch, num_heads, num_kv_heads, head_dim, block_size, num_blocks, max_blocks;
    int64_t query_token_stride, query_head_stride, block_table_stride;
    float scale;
} prefill_args;

typedef struct {
    int64_t seq, kv_head, first_token, end_token; /* chunk tokens [first_token, end_token) */
    int64_t cost;
} work_item;

static int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

/* The largest cost first, so the dynamic schedule does not end on one long item. */
static int by_cost_descending(const void *a, const void *b) {
    int64_t ca = ((const work_item *)a)->cost, cb = ((const work_item *)b)->cost;
    return (ca < cb) - (ca > cb);
}

static int check_sequences(const prefill_args *a) {
    if (a->cu_seqlens_q[0] != 0) return ERR_BAD_QUERY_OFFSETS;
    for (int64_t seq = 0; seq < a->batch; seq++) {
        int64_t q_len = a->cu_seqlens_q[seq + 1] - a->cu_seqlens_q[seq];
        int64_t context_len = a->context_lens[seq];
        if (q_len < 0) return ERR_BAD_QUERY_OFFSETS;
        if (q_len == 0) continue;
        if (context_len < q_len || context_len > a->max_blocks * a->block_size) return ERR_BAD_CONTEXT_LEN;
        const int32_t *table = a->block_tables + seq * a->block_table_stride;
        for (int64_t b = 0; b * a->block_size < context_len; b++)
            if (table[b] < 0 || table[b] >= a->num_blocks) return ERR_BAD_BLOCK_ID;
    }
    return ERR_OK;
}

#ifdef HAVE_BF16_DOT

/* The 32-bit word at element `index` of a bf16 row: two neighbouring values, the first in the low half. */
static inline uint32_t word_at(const uint16_t *row, int64_t index) {
    uint32_t word;
    memcpy(&word, row + index, sizeof word);
    return word;
}

static inline const uint16_t *kv_row(const prefill_args *a, const uint16_t *cache, const int32_t *table, int64_t kv_head,
                                     int64_t token) {
    int64_t slot = (int64_t)table[token / a->block_size] * a->block_size + token % a->block_size;
    return cache + (slot * a->num_kv_heads + kv_head) * a->head_dim;
}

/* Keys [0, count) of one kv head into kp [head_dim / 2][stride] and vp [stride / 2][padded_dim]; keys
 * count..stride-1 and dims past head_dim are zeros, so a padded lane multiplies a zero probability by a
 * zero value, never NaN. */
static void pack_keys(const prefill_args *a, const int32_t *table, int64_t kv_head, int64_t count, int64_t stride,
                      uint32_t *kp, uint32_t *vp) {
    const int64_t pairs = a->head_dim / 2, dims = a->head_dim, padded_dim = round_up(dims, DIM_STEP);
    for (int64_t key = 0; key < stride; key++) {
        if (key < count) {
            const uint16_t *row = kv_row(a, a->k_cache, table, kv_head, key);
            for (int64_t p = 0; p < pairs; p++) kp[p * stride + key] = word_at(row, 2 * p);
        } else {
            for (int64_t p = 0; p < pairs; p++) kp[p * stride + key] = 0;
        }
    }
    for (int64_t key = 0; key < stride; key += 2) {
        uint32_t *dst = vp + key / 2 * padded_dim;
        const uint16_t *even = key < count ? kv_row(a, a->v_cache, table, kv_head, key) : NULL;
        const uint16_t *odd = key + 1 < count ? kv_row(a, a->v_cache, table, kv_head, key + 1) : NULL;
        for (int64_t d = 0; d < dims; d++)
            dst[d] = (even ? even[d] : 0u) | (odd ? (uint32_t)odd[d] << 16 : 0u);
        for (int64_t d = dims; d < padded_dim; d++) dst[d] = 0;
    }
}

/* exp(x) for float32 lanes, x <= 0 or -inf: 2**(x log2 e) as 2**n times a degree-6 polynomial of the
 * fraction in [-0.5, 0.5] (relative error about 2e-7); below -100 the result is 0. */
static inline __m512 exp_nonpositive(__m512 x) {
    const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.0f)), _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.535336188e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    const __m512 result = _mm512_scalef_ps(p, n);
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-100.0f), _CMP_GT_OQ), result);
}

/* Query rows [row, row + ROWS) of an item (row r is token first_token + r / group, head r % group of the
 * kv head's group); rows past `rows` repeat the last one and are not written. */
static void attend_rows(const prefill_args *a, const work_item *it, int64_t row, int64_t rows, const uint32_t *kp,
                        const uint32_t *vp, int64_t stride, float *out_acc, uint16_t *probs) {
    const int64_t group = a->num_heads / a->num_kv_heads, dims = round_up(a->head_dim, DIM_STEP);
    const int64_t pairs = a->head_dim / 2;
    const int64_t seq = it->seq, q_len = a->cu_seqlens_q[seq + 1] - a->cu_seqlens_q[seq];
    const int64_t offset = a->context_lens[seq] - q_len; /* position of chunk token 0 */
    const uint16_t *query[ROWS];
    int64_t position[ROWS];
    for (int64_t r = 0; r < ROWS; r++) {
        const int64_t index = row + (r < rows - row ? r : rows - row - 1);
        const int64_t token = it->first_token + index / group, head = it->kv_head * group + index % group;
        query[r] = a->query + (a->cu_seqlens_q[seq] + token) * a->query_token_stride + head * a->query_head_stride;
        position[r] = offset + token;
    }
    int64_t last = position[0];
    for (int64_t r = 1; r < ROWS; r++) last = position[r] > last ? position[r] : last;
    float running_max[ROWS], running_sum[ROWS];
    for (int64_t r = 0; r < ROWS; r++) running_max[r] = -INFINITY, running_sum[r] = 0.0f;
    memset(out_acc, 0, (size_t)(ROWS * dims) * sizeof(float));
    const __m512 scale = _mm512_set1_ps(a->scale);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

    for (int64_t tile = 0; tile <= last; tile += KEY_TILE) {
        __m512 score[ROWS][4];
        for (int r = 0; r < ROWS; r++)
            for (int c = 0; c < 4; c++) score[r][c] = _mm512_setzero_ps();
        for (int64_t p = 0; p < pairs; p++) {
            const uint32_t *keys = kp + p * stride + tile;
            __m512bh k[4];
            for (int c = 0; c < 4; c++) k[c] = (__m512bh)_mm512_loadu_si512(keys + 16 * c);
            for (int r = 0; r < ROWS; r++) {
                const __m512bh q = (__m512bh)_mm512_set1_epi32((int)word_at(query[r], 2 * p));
                for (int c = 0; c < 4; c++) score[r][c] = _mm512_dpbf16_ps(score[r][c], k[c], q);
            }
        }
        float alpha[ROWS];
        for (int r = 0; r < ROWS; r++) {
            /* Keys past this row's position are masked: they are later tokens of the chunk, or padding. */
            __mmask16 visible[4];
            __m512 tile_max = _mm512_set1_ps(-INFINITY);
            for (int c = 0; c < 4; c++) {
                const __m512i key = _mm512_add_epi32(lane, _mm512_set1_epi32((int)(tile + 16 * c)));
                visible[c] = _mm512_cmple_epi32_mask(key, _mm512_set1_epi32((int)position[r]));
                score[r][c] = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), visible[c], score[r][c], scale);
                tile_max = _mm512_max_ps(tile_max, score[r][c]);
            }
            const float row_max = _mm512_reduce_max_ps(tile_max);
            const float new_max = row_max > running_max[r] ? row_max : running_max[r];
            /* exp(-inf) is 0: the first tile starts the sums from nothing. */
            alpha[r] = running_max[r] == -INFINITY ? 0.0f : expf(running_max[r] - new_max);
            running_max[r] = new_max;
            __m512 sum = _mm512_setzero_ps();
            for (int c = 0; c < 4; c += 2) {
                const __m512 lo = _mm512_maskz_mov_ps(
                    visible[c], exp_nonpositive(_mm512_sub_ps(score[r][c], _mm512_set1_ps(new_max))));
                const __m512 hi = _mm512_maskz_mov_ps(
                    visible[c + 1], exp_nonpositive(_mm512_sub_ps(score[r][c + 1], _mm512_set1_ps(new_max))));
                sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
                const __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo); /* keys tile + 16c .. + 31, in order */
                _mm512_storeu_si512(probs + r * KEY_TILE + 16 * c, (__m512i)packed);
            }
            running_sum[r] = running_sum[r] * alpha[r] + _mm512_reduce_add_ps(sum);
        }
        /* Key pairs this tile holds that some row can see. */
        const int64_t tile_pairs = ((last - tile + 1 < KEY_TILE ? last - tile + 1 : KEY_TILE) + 1) / 2;
        for (int64_t base = 0; base < dims; base += DIM_STEP) {
            __m512 acc[ROWS][4];
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < 4; c++)
                    acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(out_acc + r * dims + base + 16 * c), _mm512_set1_ps(alpha[r]));
            for (int64_t p = 0; p < tile_pairs; p++) {
                const uint32_t *values = vp + (tile / 2 + p) * dims + base;
                __m512bh v[4];
                for (int c = 0; c < 4; c++) v[c] = (__m512bh)_mm512_loadu_si512(values + 16 * c);
                for (int r = 0; r < ROWS; r++) {
                    const __m512bh weight = (__m512bh)_mm512_set1_epi32((int)word_at(probs + r * KEY_TILE, 2 * p));
                    for (int c = 0; c < 4; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], v[c], weight);
                }
            }
            for (int r = 0; r < ROWS; r++)
                for (int c = 0; c < 4; c++) _mm512_storeu_ps(out_acc + r * dims + base + 16 * c, acc[r][c]);
        }
    }

    for (int64_t r = 0; r < rows - row && r < ROWS; r++) {
        const int64_t index = row + r;
        const int64_t token = it->first_token + index / group, head = it->kv_head * group + index % group;
        uint16_t *dst = a->out + ((a->cu_seqlens_q[seq] + token) * a->num_heads + head) * a->head_dim;
        const __m512 inverse = _mm512_set1_ps(1.0f / running_sum[r]);
        for (int64_t d = 0; d < a->head_dim; d += 16) {
            const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(out_acc + r * dims + d), inverse));
            memcpy(dst + d, &rounded, sizeof rounded);
        }
    }
}

static void attend_item(const prefill_args *a, const work_item *it, uint32_t *kp, uint32_t *vp, float *out_acc,
                        uint16_t *probs) {
    const int64_t group = a->num_heads / a->num_kv_heads;
    const int64_t q_len = a->cu_seqlens_q[it->seq + 1] - a->cu_seqlens_q[it->seq];
    const int64_t keys = a->context_lens[it->seq] - q_len + it->end_token; /* the last token sees them all */
    const int64_t stride = round_up(keys, KEY_TILE);
    pack_keys(a, a->block_tables + it->seq * a->block_table_stride, it->kv_head, keys, stride, kp, vp);
    const int64_t rows = (it->end_token - it->first_token) * group;
    for (int64_t row = 0; row < rows; row += ROWS) attend_rows(a, it, row, rows, kp, vp, stride, out_acc, probs);
}

#endif /* HAVE_BF16_DOT */

/* out [T, num_heads, head_dim] (contiguous) for query rows at the given strides (elements); all bf16.
 * Returns ERR_OK or an ERR_* code, before reading any K or V when the metadata is bad. */
int pdserve_paged_prefill(void *out, const void *query, const void *k_cache, const void *v_cache,
                          const int32_t *block_tables, const int32_t *cu_seqlens_q, const int32_t *context_lens,
                          int64_t batch, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                          int64_t block_size, int64_t num_blocks, int64_t max_blocks, int64_t query_token_stride,
                          int64_t query_head_stride, int64_t block_table_stride, float scale, int num_threads) {
#ifndef HAVE_BF16_DOT
    (void)out, (void)query, (void)k_cache, (void)v_cache, (void)block_tables, (void)cu_seqlens_q;
    (void)context_lens, (void)batch, (void)num_heads, (void)num_kv_heads, (void)head_dim, (void)block_size;
    (void)num_blocks, (void)max_blocks, (void)query_token_stride, (void)query_head_stride;
    (void)block_table_stride, (void)scale, (void)num_threads;
    return ERR_UNSUPPORTED;
#else
    const prefill_args a = {out, query, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens,
                            batch, num_heads, num_kv_heads, head_dim, block_size, num_blocks, max_blocks,
                            query_token_stride, query_head_stride, block_table_stride, scale};
    if (batch < 0 || num_kv_heads < 1 || num_heads % num_kv_heads || block_size < 1) return ERR_BAD_SHAPE;
    if (head_dim < 16 || head_dim % 16 || head_dim > MAX_HEAD_DIM) return ERR_BAD_SHAPE;
    if (batch == 0) return ERR_OK;
    int err = check_sequences(&a);
    if (err) return err;

    int64_t num_items = 0, longest = 0;
    for (int64_t seq = 0; seq < batch; seq++) {
        const int64_t q_len = cu_seqlens_q[seq + 1] - cu_seqlens_q[seq];
        num_items += (q_len + QUERY_BLOCK - 1) / QUERY_BLOCK * num_kv_heads;
        longest = context_lens[seq] > longest ? context_lens[seq] : longest;
    }
    work_item *items = malloc((size_t)(num_items > 0 ? num_items : 1) * sizeof *items);
    if (!items) return ERR_NO_MEMORY;
    int64_t n = 0;
    for (int64_t seq = 0; seq < batch; seq++) {
        const int64_t q_len = cu_seqlens_q[seq + 1] - cu_seqlens_q[seq];
        for (int64_t first = 0; first < q_len; first += QUERY_BLOCK)
            for (int64_t kv_head = 0; kv_head < num_kv_heads; kv_head++) {
                const int64_t end = first + QUERY_BLOCK < q_len ? first + QUERY_BLOCK : q_len;
                const int64_t keys = context_lens[seq] - q_len + end;
                items[n++] = (work_item){seq, kv_head, first, end, (end - first) * keys};
            }
    }
    qsort(items, (size_t)num_items, sizeof *items, by_cost_descending);

    const int64_t stride = round_up(longest, KEY_TILE);
    const size_t pack_words = (size_t)(stride * round_up(head_dim, DIM_STEP) / 2);
    int failed = 0;
    num_threads = num_threads > 0 ? num_threads : 1;
#pragma omp parallel num_threads(num_threads)
    {
        uint32_t *kp = malloc(pack_words * sizeof(uint32_t));
        uint32_t *vp = malloc(pack_words * sizeof(uint32_t));
        float *out_acc = malloc((size_t)(ROWS * round_up(head_dim, DIM_STEP)) * sizeof(float));
        uint16_t *probs = malloc(ROWS * KEY_TILE * sizeof(uint16_t));
        const int ready = kp && vp && out_acc && probs;
        if (!ready) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < num_items; i++)
            if (ready) attend_item(&a, &items[i], kp, vp, out_acc, probs);
        free(kp), free(vp), free(out_acc), free(probs);
    }
    free(items);
    return failed ? ERR_NO_MEMORY : ERR_OK;
#endif
}
