/* Paged decode attention on the CPU: one query token per sequence over its KV blocks, read in place.
 *
 * Plain C with GCC/Clang vector extensions (no torch headers, no intrinsics) so that it compiles in
 * about a second on first use, for whatever SIMD width the machine has; cpu_paged_attention.py
 * builds it, checks the tensors and calls pdserve_paged_decode.
 *
 * Layout: k_cache and v_cache are contiguous [num_blocks, block_size, num_kv_heads, head_dim];
 * query is [batch, num_heads, head_dim] with a dense last dimension and the given strides (elements);
 * out is contiguous [batch, num_heads, head_dim]. Query head h reads kv head h / group.
 * Query, caches and out share one dtype, float32 or bfloat16; all arithmetic is float32.
 *
 * A work item is one sequence's kv heads (or some of them when there are fewer sequences than
 * threads): each K and V row is read from memory once, for the whole group of query heads sharing it.
 * Two passes per item, with no per-token rescaling: the scores of the whole context, a softmax over
 * them, then the weighted sum of the V rows (ops/bench_kernels.py has the numbers behind the choices).
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DTYPE_F32 0
#define DTYPE_BF16 1

#define ERR_OK 0
#define ERR_NO_MEMORY 1
#define ERR_BAD_CONTEXT_LEN 2
#define ERR_BAD_BLOCK_ID 3
#define ERR_GROUP_TOO_LARGE 4
#define ERR_HEAD_DIM_TOO_LARGE 5
#define ERR_BAD_SHAPE 6

/* Floats per vector: one AVX-512 register; the compiler splits it on narrower machines.
 * Tokens are also taken LANES at a time, so that one vector holds LANES scores. */
#define LANES 16
/* Most query heads per kv head (Llama and Qwen models use up to 8). */
#define MAX_GROUP 16
/* Most kv heads one work item covers (bounds a stack array; more heads make more items). */
#define MAX_KV_HEADS_PER_ITEM 8
/* Work items per thread below which sequences are split by kv heads. */
#define ITEMS_PER_THREAD 4
/* Longest head_dim, in vectors (256 floats): rows of K and V stay in registers. */
#define MAX_CHUNKS 16

typedef float f32v __attribute__((vector_size(LANES * 4)));
typedef int32_t i32v __attribute__((vector_size(LANES * 4)));
typedef uint32_t u32v __attribute__((vector_size(LANES * 4)));
typedef uint16_t u16v __attribute__((vector_size(LANES * 2)));

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

static inline int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

static inline f32v splat(float x) { return (f32v){0} + x; }

static inline f32v blend(i32v mask, f32v yes, f32v no) { return (f32v)(((i32v)yes & mask) | ((i32v)no & ~mask)); }

static inline f32v vmax(f32v a, f32v b) { return blend(a > b, a, b); }

/* Lanes at index >= count become zero. */
static inline f32v keep_first(f32v x, int64_t count) {
    const i32v lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return blend(lane < (int32_t)count, x, splat(0.0f));
}

#if defined(__clang__) || __GNUC__ >= 12
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (i32v){__VA_ARGS__})
#endif

/* Lane i of the result is the sum of the lanes of x[i]: 16 horizontal sums as one transposing tree
 * (15 shuffle pairs instead of 16 separate reductions). Each sum adds in the same fixed order. */
static inline f32v sum_each(const f32v x[LANES]) {
    f32v eights[8], fours[4], twos[2];
    for (int j = 0; j < 8; j++) /* lanes 0-7: x[2j] folded in half; lanes 8-15: x[2j+1] */
        eights[j] = SHUFFLE(x[2 * j], x[2 * j + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                    SHUFFLE(x[2 * j], x[2 * j + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int j = 0; j < 4; j++) /* four lanes each for x[4j] .. x[4j+3] */
        fours[j] = SHUFFLE(eights[2 * j], eights[2 * j + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                   SHUFFLE(eights[2 * j], eights[2 * j + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int j = 0; j < 2; j++) /* two lanes each for x[8j] .. x[8j+7] */
        twos[j] = SHUFFLE(fours[2 * j], fours[2 * j + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
                  SHUFFLE(fours[2 * j], fours[2 * j + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return SHUFFLE(twos[0], twos[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           SHUFFLE(twos[0], twos[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

static inline float sum_lanes(f32v x) {
    float sum = 0.0f;
    for (int lane = 0; lane < LANES; lane++) sum += x[lane];
    return sum;
}

static inline float max_lanes(f32v x) {
    float max = x[0];
    for (int lane = 1; lane < LANES; lane++) max = x[lane] > max ? x[lane] : max;
    return max;
}

static inline f32v load_f32(const float *src) {
    f32v v;
    memcpy(&v, src, sizeof v);
    return v;
}

static inline void store_f32(float *dst, f32v v) { memcpy(dst, &v, sizeof v); }

/* bfloat16 is the top half of a float32: widening is a shift. */
static inline f32v load_bf16(const uint16_t *src) {
    u16v bits;
    memcpy(&bits, src, sizeof bits);
    return (f32v)(__builtin_convertvector(bits, u32v) << 16);
}

/* LANES values of a float32/bfloat16 row from element `start` on; lanes past `count` are zero. */
static inline f32v load_chunk(const void *row, int64_t start, int64_t count, int dtype) {
    if (start + LANES <= count)
        return dtype == DTYPE_BF16 ? load_bf16((const uint16_t *)row + start) : load_f32((const float *)row + start);
    /* A row's ragged end (head_dim not a multiple of LANES): copy it next to zeros first. */
    union {
        float f32[LANES];
        uint16_t bf16[LANES];
    } tail = {{0}};
    size_t elem = dtype == DTYPE_BF16 ? 2 : 4;
    memcpy(&tail, (const char *)row + start * elem, (size_t)(count - start) * elem);
    return dtype == DTYPE_BF16 ? load_bf16(tail.bf16) : load_f32(tail.f32);
}

static inline uint16_t f32_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); /* NaN stays NaN */
    /* Round to nearest, ties to even, like torch's float -> bfloat16 conversion. */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* exp(x) for x <= 0, to about 2 float32 ulp (Cephes' expf); libm's expf is scalar and 10x slower here.
 * Inputs below -87.3 give about 1e-38 instead of 0, which a softmax sum of at least 1 cannot see. */
static inline f32v exp_nonpositive(f32v x) {
    x = vmax(x, splat(-87.3f));
    /* round(x / ln 2): truncation toward zero of a non-positive value minus one half. */
    i32v n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, i32v);
    f32v nf = __builtin_convertvector(n, f32v);
    f32v r = x - nf * 0.693359375f + nf * 2.12194440e-4f; /* ln 2 in two parts keeps r exact */
    f32v p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * (f32v)((n + 127) << 23); /* times 2**n, built in the exponent bits */
}

/* scores[0:count] = exp(scores - max(scores)) in place; returns their sum.
 * scores has room for round_up(count, LANES) floats; the ones past count are scratch. */
static float softmax_numerators(float *scores, int64_t count) {
    const int64_t padded = round_up(count, LANES);
    for (int64_t t = count; t < padded; t++) scores[t] = -INFINITY;
    f32v max = splat(-INFINITY);
    for (int64_t t = 0; t < padded; t += LANES) max = vmax(max, load_f32(scores + t));
    const float row_max = max_lanes(max);
    f32v sum = splat(0.0f);
    for (int64_t t = 0; t < padded; t += LANES) {
        f32v numerators = exp_nonpositive(load_f32(scores + t) - row_max);
        store_f32(scores + t, numerators);
        sum += keep_first(numerators, count - t);
    }
    return sum_lanes(sum);
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

/* Floats of scratch a work item of `heads` query heads needs: a query and an accumulator row per head,
 * then its scores. */
static size_t scratch_floats(int64_t heads, int64_t head_dim, int64_t context_len) {
    return (size_t)(heads * (2 * round_up(head_dim, LANES) + round_up(context_len, LANES)));
}

/* Where a sequence's token rows live in one cache. */
typedef struct {
    const char *cache; /* k_cache or v_cache */
    const int32_t *table;
    int64_t block_size;                               /* tokens */
    int64_t block_bytes, token_stride, head_offset;   /* bytes */
} token_rows_of;

/* rows[i] = address of token first + i (at head_offset in its row), for i < count. */
static inline void token_rows(const token_rows_of *r, int64_t first, int64_t count, const char **rows) {
    int64_t block = first / r->block_size, offset = first % r->block_size;
    for (int64_t i = 0; i < count; i++) {
        rows[i] = r->cache + r->table[block] * r->block_bytes + offset * r->token_stride + r->head_offset;
        if (++offset == r->block_size) block++, offset = 0;
    }
}

static inline void prefetch_row(const char *row, int64_t bytes) {
    for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(row + line);
}

/* Prefetches `bytes` from each of tokens [first, min(first + count, end)), count <= LANES. */
static inline void prefetch_tokens(const token_rows_of *r, int64_t first, int64_t count, int64_t end, int64_t bytes) {
    const char *rows[LANES];
    count = end - first < count ? end - first : count;
    token_rows(r, first, count, rows);
    for (int64_t i = 0; i < count; i++) prefetch_row(rows[i], bytes);
}

/* rows[i] = address of token first + i for i < count; ahead[i] = that of token first + LANES + i for the
 * ones below end, whose number it returns. */
static inline int64_t rows_and_ahead(const token_rows_of *r, int64_t first, int64_t count, int64_t end,
                                     const char **rows, const char **ahead) {
    token_rows(r, first, count, rows);
    int64_t later = end - (first + LANES);
    later = later < 0 ? 0 : later < LANES ? later : LANES;
    token_rows(r, first + LANES, later, ahead);
    return later;
}

/* Attention of query heads [kv_first * group, (kv_first + kv_count) * group) of sequence `seq`.
 * Tokens go LANES at a time, one kv head after the other, so each block is read while it is hot; the
 * rows LANES tokens ahead are prefetched (blocks sit at random places, where hardware prefetchers
 * cannot follow). A K or V row is widened to float32 once and used by every query head of its group.
 * Always inlined into callers that pass a constant head_dim, so the row loops unroll fully.
 */
static inline __attribute__((always_inline)) void attend(const decode_args *a, int64_t seq, int64_t kv_first,
                                                        int64_t kv_count, int dtype, const int64_t head_dim,
                                                        float *restrict scratch) {
    const int64_t elem = dtype == DTYPE_BF16 ? 2 : 4;
    const int64_t group = a->num_heads / a->num_kv_heads;
    const int64_t heads = kv_count * group;
    const int64_t context_len = a->context_lens[seq];
    const int64_t chunks = round_up(head_dim, LANES) / LANES;
    const int64_t row_width = chunks * LANES;
    const int64_t score_stride = round_up(context_len, LANES);
    const int64_t head_bytes = head_dim * elem;
    float *restrict query = scratch;                  /* [heads][row_width], times scale */
    float *restrict acc = query + heads * row_width;  /* [heads][row_width] */
    float *restrict scores = acc + heads * row_width; /* [heads][score_stride] */
    token_rows_of r = {a->k_cache, a->block_tables + seq * a->block_table_stride, a->block_size,
                       a->block_size * a->num_kv_heads * head_bytes, a->num_kv_heads * head_bytes,
                       kv_first * head_bytes};
    const char *rows[LANES], *ahead[LANES];

    for (int64_t h = 0; h < heads; h++) {
        const int64_t head = kv_first * group + h;
        const char *src = (const char *)a->query + (seq * a->query_seq_stride + head * a->query_head_stride) * elem;
        for (int64_t c = 0; c < chunks; c++)
            store_f32(query + h * row_width + c * LANES, load_chunk(src, c * LANES, head_dim, dtype) * a->scale);
    }

    /* Pass 1: scores of every context token. Lanes past the context are written but never read. */
    prefetch_tokens(&r, 0, LANES, context_len, kv_count * head_bytes);
    for (int64_t first = 0; first < context_len; first += LANES) {
        const int64_t count = context_len - first < LANES ? context_len - first : LANES;
        const int64_t later = rows_and_ahead(&r, first, count, context_len, rows, ahead);
        for (int64_t k = 0; k < kv_count; k++) {
            f32v dots[MAX_GROUP][LANES];
            for (int64_t i = 0; i < LANES; i++) {
                /* One row ahead per row used: prefetches issued in bursts measured slower. */
                if (i < later) prefetch_row(ahead[i] + k * head_bytes, head_bytes);
                f32v key[MAX_CHUNKS];
                for (int64_t c = 0; c < chunks; c++)
                    key[c] = i < count ? load_chunk(rows[i] + k * head_bytes, c * LANES, head_dim, dtype) : splat(0.0f);
                for (int64_t g = 0; g < group; g++) {
                    f32v dot = splat(0.0f);
                    for (int64_t c = 0; c < chunks; c++)
                        dot += load_f32(query + (k * group + g) * row_width + c * LANES) * key[c];
                    dots[g][i] = dot;
                }
            }
            for (int64_t g = 0; g < group; g++)
                store_f32(scores + (k * group + g) * score_stride + first, sum_each(dots[g]));
        }
    }

    r.cache = a->v_cache;
    prefetch_tokens(&r, 0, LANES, context_len, kv_count * head_bytes);
    float inverse_sum[MAX_GROUP * MAX_KV_HEADS_PER_ITEM];
    for (int64_t h = 0; h < heads; h++) inverse_sum[h] = 1.0f / softmax_numerators(scores + h * score_stride, context_len);

    /* Pass 2: the numerator-weighted sum of V rows; the softmax sums divide once at the end. */
    memset(acc, 0, (size_t)(heads * row_width) * sizeof(float));
    for (int64_t first = 0; first < context_len; first += LANES) {
        const int64_t count = context_len - first < LANES ? context_len - first : LANES;
        const int64_t later = rows_and_ahead(&r, first, count, context_len, rows, ahead);
        for (int64_t k = 0; k < kv_count; k++)
            for (int64_t i = 0; i < count; i++) {
                if (i < later) prefetch_row(ahead[i] + k * head_bytes, head_bytes);
                f32v value[MAX_CHUNKS];
                for (int64_t c = 0; c < chunks; c++) value[c] = load_chunk(rows[i] + k * head_bytes, c * LANES, head_dim, dtype);
                for (int64_t g = 0; g < group; g++) {
                    const int64_t h = k * group + g;
                    const f32v weight = splat(scores[h * score_stride + first + i]);
                    float *sums = acc + h * row_width;
                    for (int64_t c = 0; c < chunks; c++)
                        store_f32(sums + c * LANES, load_f32(sums + c * LANES) + weight * value[c]);
                }
            }
    }

    for (int64_t h = 0; h < heads; h++) {
        const int64_t first = (seq * a->num_heads + kv_first * group + h) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) {
            const float value = acc[h * row_width + d] * inverse_sum[h];
            if (dtype == DTYPE_BF16)
                ((uint16_t *)a->out)[first + d] = f32_to_bf16(value);
            else
                ((float *)a->out)[first + d] = value;
        }
    }
}

/* attend with head_dim as a constant for the common sizes, so the compiler unrolls its row loops.
 * (dtype stays a run-time value: specialising it too doubled the compile time and measured no faster.) */
static void attend_any(const decode_args *a, int64_t seq, int64_t kv_first, int64_t kv_count, float *scratch) {
    switch (a->head_dim) {
    case 64: attend(a, seq, kv_first, kv_count, a->dtype, 64, scratch); break;
    case 128: attend(a, seq, kv_first, kv_count, a->dtype, 128, scratch); break;
    default: attend(a, seq, kv_first, kv_count, a->dtype, a->head_dim, scratch); break;
    }
}

/* The entry point: returns ERR_OK, or an ERR_* code before anything is read past the metadata.
 * Work items are spread over num_threads OpenMP threads (one when built without OpenMP). */
int pdserve_paged_decode(void *out, const void *query, const void *k_cache, const void *v_cache,
                         const int32_t *block_tables, const int32_t *context_lens, int64_t batch, int64_t num_heads,
                         int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int64_t num_blocks,
                         int64_t max_blocks, int64_t query_seq_stride, int64_t query_head_stride,
                         int64_t block_table_stride, float scale, int dtype, int num_threads) {
    const decode_args a = {out, query, k_cache, v_cache, block_tables, context_lens,
                           batch, num_heads, num_kv_heads, head_dim, block_size, num_blocks, max_blocks,
                           query_seq_stride, query_head_stride, block_table_stride, scale, dtype};
    if (batch < 0 || num_kv_heads < 1 || num_heads % num_kv_heads || head_dim < 1 || block_size < 1) return ERR_BAD_SHAPE;
    if (batch == 0) return ERR_OK;
    const int64_t group = num_heads / num_kv_heads;
    if (group > MAX_GROUP) return ERR_GROUP_TOO_LARGE;
    if (head_dim > MAX_CHUNKS * LANES) return ERR_HEAD_DIM_TOO_LARGE;
    int64_t longest = 0;
    for (int64_t seq = 0; seq < batch; seq++) {
        int err = check_sequence(&a, seq);
        if (err) return err;
        longest = context_lens[seq] > longest ? context_lens[seq] : longest;
    }
    num_threads = num_threads > 0 ? num_threads : 1;
    /* A work item is a sequence's kv heads, split into parts only when there are too few sequences
     * to keep every thread busy. */
    int64_t parts = (ITEMS_PER_THREAD * num_threads + batch - 1) / batch;
    int64_t heads_per_item = num_kv_heads < MAX_KV_HEADS_PER_ITEM ? num_kv_heads : MAX_KV_HEADS_PER_ITEM;
    if (parts > 1) heads_per_item = (heads_per_item + parts - 1) / parts;
    parts = (num_kv_heads + heads_per_item - 1) / heads_per_item;
    const size_t scratch_bytes = scratch_floats(heads_per_item * group, head_dim, longest) * sizeof(float);
    const int64_t items = batch * parts;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
        float *scratch = malloc(scratch_bytes);
        if (!scratch) {
#pragma omp atomic write
            failed = 1;
        }
        /* Dynamic: items differ in length by up to 100x when fresh requests join old ones. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; item++) {
            const int64_t kv_first = item % parts * heads_per_item;
            const int64_t kv_count = num_kv_heads - kv_first < heads_per_item ? num_kv_heads - kv_first : heads_per_item;
            if (scratch) attend_any(&a, item / parts, kv_first, kv_count, scratch);
        }
        free(scratch);
    }
    return failed ? ERR_NO_MEMORY : ERR_OK;
}
