/* Paged decode attention on the CPU: one query token per sequence over its KV blocks, read in place.
 *
 * Plain C (no torch headers) so that it compiles in about a second on first use; see
 * cpu_paged_attention.py for the build, the Python-side checks and the dispatch.
 *
 * Layout: k_cache and v_cache are contiguous [num_blocks, block_size, num_kv_heads, head_dim];
 * query [batch, num_heads, head_dim] with a dense last dimension and the given strides (elements);
 * out is contiguous [batch, num_heads, head_dim]. Query head h reads kv head h / group.
 * Data is float32 or bfloat16 (query, caches and out alike); everything accumulates in float32.
 *
 * One work item is a (sequence, kv head) pair: its group of query heads shares every K and V row,
 * so each row is read from memory once. Two passes per item: all scores of the context, then
 * softmax, then the weighted sum of V. Without -ffast-math the compiler keeps this file's order of
 * float operations, so the loops are written in the order that vectorises: dot products keep
 * LANES partial sums, and exp is a polynomial that the compiler can vectorise (libm's expf is scalar).
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define DTYPE_F32 0
#define DTYPE_BF16 1

#define ERR_OK 0
#define ERR_NO_MEMORY 1
#define ERR_BAD_CONTEXT_LEN 2
#define ERR_BAD_BLOCK_ID 3
#define ERR_GROUP_TOO_LARGE 4

/* Partial sums per dot product: one AVX-512 register, or two AVX2 ones. */
#define LANES 16
/* Largest group of query heads per kv head kept on the stack (Llama/Qwen models use up to 8). */
#define MAX_GROUP 16

typedef struct {
    void *out;
    const void *query;
    const void *k_cache;
    const void *v_cache;
    const int32_t *block_tables;
    const int32_t *context_lens;
    int64_t batch, num_heads, num_kv_heads, head_dim, block_size, num_blocks, max_blocks;
    int64_t query_seq_stride, query_head_stride, block_table_stride;
    float scale;
    int dtype;
} decode_args;

static inline float bf16_to_f32(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

static inline uint16_t f32_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((bits >> 16) | 0x40); /* NaN stays a (quiet) NaN */
    }
    /* Round to nearest, ties to even, like torch's float -> bfloat16 conversion. */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* dst[0:n] = row n of float32 or bfloat16 values starting at src, as float32. */
static inline void load_row(float *restrict dst, const void *src, int64_t n, int dtype) {
    if (dtype == DTYPE_BF16) {
        const uint16_t *bits = (const uint16_t *)src;
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(bits[i]);
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
    }
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    const int64_t body = n - n % LANES;
    float partial[LANES] = {0};
    for (int64_t d = 0; d < body; d += LANES)
        for (int lane = 0; lane < LANES; lane++) partial[lane] += a[d + lane] * b[d + lane];
    float sum = 0.0f;
    for (int64_t d = body; d < n; d++) sum += a[d] * b[d];
    for (int lane = 0; lane < LANES; lane++) sum += partial[lane];
    return sum;
}

/* exp(x) for x <= 0 within 2 ulp (Cephes' expf polynomial); flushes below -87.3 to about 1e-38. */
static inline float exp_nonpositive(float x) {
    x = x < -87.3f ? -87.3f : x;
    float n = (float)(int32_t)(x * 1.44269504088896341f - 0.5f); /* round(x / ln 2), x <= 0 */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* 2**n, n >= -126 after the clamp */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

static inline float row_max(const float *x, int64_t n) {
    const int64_t body = n - n % LANES;
    float partial[LANES];
    for (int lane = 0; lane < LANES; lane++) partial[lane] = x[0];
    for (int64_t t = 0; t < body; t += LANES)
        for (int lane = 0; lane < LANES; lane++) partial[lane] = x[t + lane] > partial[lane] ? x[t + lane] : partial[lane];
    float max = x[0];
    for (int64_t t = body; t < n; t++) max = x[t] > max ? x[t] : max;
    for (int lane = 0; lane < LANES; lane++) max = partial[lane] > max ? partial[lane] : max;
    return max;
}

/* x[t] = exp(x[t] - max(x)) in place; returns their sum. */
static inline float exp_and_sum(float *x, int64_t n) {
    const float max = row_max(x, n);
    const int64_t body = n - n % LANES;
    float partial[LANES] = {0};
    for (int64_t t = 0; t < body; t += LANES)
        for (int lane = 0; lane < LANES; lane++) {
            x[t + lane] = exp_nonpositive(x[t + lane] - max);
            partial[lane] += x[t + lane];
        }
    float sum = 0.0f;
    for (int64_t t = body; t < n; t++) {
        x[t] = exp_nonpositive(x[t] - max);
        sum += x[t];
    }
    for (int lane = 0; lane < LANES; lane++) sum += partial[lane];
    return sum;
}

static inline const char *cache_row(const decode_args *a, const void *cache, int64_t block_id, int64_t offset,
                                    int64_t kv_head) {
    size_t elem = a->dtype == DTYPE_BF16 ? 2 : 4;
    int64_t row = (block_id * a->block_size + offset) * a->num_kv_heads + kv_head;
    return (const char *)cache + (size_t)row * (size_t)a->head_dim * elem;
}

/* Checks one sequence's length and the block ids it reads, so bad metadata fails instead of crashing. */
static int check_sequence(const decode_args *a, int64_t seq) {
    int64_t context_len = a->context_lens[seq];
    if (context_len < 1 || context_len > a->max_blocks * a->block_size) return ERR_BAD_CONTEXT_LEN;
    const int32_t *table = a->block_tables + seq * a->block_table_stride;
    for (int64_t b = 0; b * a->block_size < context_len; b++)
        if (table[b] < 0 || table[b] >= a->num_blocks) return ERR_BAD_BLOCK_ID;
    return ERR_OK;
}

/* Attention of the query heads of kv head `kv_head` of sequence `seq`.
 * scratch holds group * context_len scores, then group * head_dim accumulators, then two rows.
 * head_dim is a parameter of an always-inlined function so that callers passing a constant get
 * fully unrolled row loops.
 */
static inline __attribute__((always_inline)) void attend(const decode_args *a, int64_t seq, int64_t kv_head,
                                                        int64_t head_dim, float *restrict scratch) {
    const int64_t group = a->num_heads / a->num_kv_heads;
    const int64_t context_len = a->context_lens[seq];
    const int32_t *table = a->block_tables + seq * a->block_table_stride;
    const size_t elem = a->dtype == DTYPE_BF16 ? 2 : 4;
    float *restrict scores = scratch;              /* [group][context_len] */
    float *restrict acc = scores + group * context_len; /* [group][head_dim] */
    float *restrict query = acc + group * head_dim;     /* [group][head_dim] */
    float *restrict row = query + group * head_dim;     /* [head_dim] */

    for (int64_t g = 0; g < group; g++) {
        int64_t head = kv_head * group + g;
        const char *src = (const char *)a->query + (size_t)(seq * a->query_seq_stride + head * a->query_head_stride) * elem;
        load_row(query + g * head_dim, src, head_dim, a->dtype);
        for (int64_t d = 0; d < head_dim; d++) query[g * head_dim + d] *= a->scale;
    }

    /* Pass 1: scores of every context token, block by block. */
    for (int64_t t = 0; t < context_len; t++) {
        const char *src = cache_row(a, a->k_cache, table[t / a->block_size], t % a->block_size, kv_head);
        const float *key = (const float *)src;
        if (a->dtype == DTYPE_BF16) {
            load_row(row, src, head_dim, DTYPE_BF16);
            key = row;
        }
        for (int64_t g = 0; g < group; g++) scores[g * context_len + t] = dot(query + g * head_dim, key, head_dim);
    }

    /* Softmax numerators in place; the sums are applied once at the end. */
    float inverse_sum[MAX_GROUP];
    for (int64_t g = 0; g < group; g++) inverse_sum[g] = 1.0f / exp_and_sum(scores + g * context_len, context_len);

    /* Pass 2: weighted sum of V rows. */
    memset(acc, 0, (size_t)(group * head_dim) * sizeof(float));
    for (int64_t t = 0; t < context_len; t++) {
        const char *src = cache_row(a, a->v_cache, table[t / a->block_size], t % a->block_size, kv_head);
        const float *value = (const float *)src;
        if (a->dtype == DTYPE_BF16) {
            load_row(row, src, head_dim, DTYPE_BF16);
            value = row;
        }
        for (int64_t g = 0; g < group; g++) {
            float p = scores[g * context_len + t];
            float *restrict out = acc + g * head_dim;
            for (int64_t d = 0; d < head_dim; d++) out[d] += p * value[d];
        }
    }

    for (int64_t g = 0; g < group; g++) {
        int64_t head = kv_head * group + g;
        size_t offset = (size_t)((seq * a->num_heads + head) * head_dim);
        for (int64_t d = 0; d < head_dim; d++) {
            float value = acc[g * head_dim + d] * inverse_sum[g];
            if (a->dtype == DTYPE_BF16)
                ((uint16_t *)a->out)[offset + d] = f32_to_bf16(value);
            else
                ((float *)a->out)[offset + d] = value;
        }
    }
}

static void attend_any(const decode_args *a, int64_t seq, int64_t kv_head, float *scratch) {
    switch (a->head_dim) {
    case 64: attend(a, seq, kv_head, 64, scratch); break;
    case 128: attend(a, seq, kv_head, 128, scratch); break;
    default: attend(a, seq, kv_head, a->head_dim, scratch); break;
    }
}

/* The exported entry point; returns 0, or an ERR_* code (nothing useful is written then). */
int pdserve_paged_decode(void *out, const void *query, const void *k_cache, const void *v_cache,
                         const int32_t *block_tables, const int32_t *context_lens, int64_t batch, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int64_t num_blocks,
                         int64_t max_blocks, int64_t query_seq_stride, int64_t query_head_stride,
                         int64_t block_table_stride, float scale, int dtype, int num_threads) {
    decode_args a = {out, query, k_cache, v_cache, block_tables, context_lens,
                     batch, num_heads, num_kv_heads, head_dim, block_size, num_blocks, max_blocks,
                     query_seq_stride, query_head_stride, block_table_stride, scale, dtype};
    const int64_t group = num_heads / num_kv_heads;
    if (group > MAX_GROUP) return ERR_GROUP_TOO_LARGE;
    int64_t longest = 0;
    for (int64_t seq = 0; seq < batch; seq++) {
        int err = check_sequence(&a, seq);
        if (err) return err;
        longest = context_lens[seq] > longest ? context_lens[seq] : longest;
    }
    const size_t scratch_floats = (size_t)(group * longest + 2 * group * head_dim + head_dim);
    const int64_t items = batch * num_kv_heads;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(num_threads > 0 ? num_threads : 1)
#endif
    {
        float *scratch = malloc(scratch_floats * sizeof(float));
        if (!scratch) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t item = 0; item < items; item++)
            if (scratch) attend_any(&a, item / num_kv_heads, item % num_kv_heads, scratch);
        free(scratch);
    }
    (void)num_threads;
    return failed ? ERR_NO_MEMORY : ERR_OK;
}
