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
 * One work item is a (sequence, kv head) pair: its group of query heads shares every K and V row,
 * so each row is read from memory once. Two passes per item, with no per-token rescaling: the
 * scores of the whole context, a softmax over them, then the weighted sum of the V rows.
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

/* Floats per vector: one AVX-512 register; the compiler splits it on narrower machines.
 * Tokens are also taken LANES at a time, so that one vector holds LANES scores. */
#define LANES 16
/* Most query heads per kv head (Llama and Qwen models use up to 8). */
#define MAX_GROUP 16
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

/* Floats of scratch one work item needs: query and accumulator rows per query head, a tile of LANES
 * rows, then the scores. */
static size_t scratch_floats(int64_t group, int64_t head_dim, int64_t context_len) {
    const int64_t row_width = round_up(head_dim, LANES);
    return (size_t)((2 * group + LANES) * row_width + group * round_up(context_len, LANES));
}

/* Where one kv head's rows of a sequence live in a cache. */
typedef struct {
    const char *cache; /* k_cache or v_cache */
    const int32_t *table;
    int64_t block_size, block_bytes, token_stride, head_offset; /* bytes, but block_size in tokens */
} head_rows;

/* rows[i] = address of token first + i, for i < count. */
static inline void token_rows(const head_rows *h, int64_t first, int64_t count, const char **rows) {
    int64_t block = first / h->block_size, offset = first % h->block_size;
    for (int64_t i = 0; i < count; i++) {
        rows[i] = h->cache + h->table[block] * h->block_bytes + offset * h->token_stride + h->head_offset;
        if (++offset == h->block_size) block++, offset = 0;
    }
}

/* The float32 rows of tokens [first, first + count) of head h: pointers into the cache for float32 data,
 * into `tile` (LANES rows of row_width floats, zero-padded) for bfloat16. Also prefetches the next
 * LANES tokens' rows (below `end`): blocks sit at random places, where hardware prefetchers cannot follow.
 * Returns how many floats of each row to read. */
static inline __attribute__((always_inline)) int64_t load_rows(const head_rows *h, int64_t first, int64_t count,
                                                              int64_t end, int64_t head_dim, int dtype,
                                                              float *restrict tile, const float **out) {
    const char *rows[LANES];
    const int64_t chunks = round_up(head_dim, LANES) / LANES;
    const int64_t row_bytes = head_dim * (dtype == DTYPE_BF16 ? 2 : 4);
    const int64_t ahead = end - (first + count) < LANES ? end - (first + count) : LANES;
    token_rows(h, first + count, ahead, rows);
    for (int64_t i = 0; i < ahead; i++)
        for (int64_t line = 0; line < row_bytes; line += 64) __builtin_prefetch(rows[i] + line);
    token_rows(h, first, count, rows);
    if (dtype != DTYPE_BF16) {
        for (int64_t i = 0; i < count; i++) out[i] = (const float *)rows[i];
        return head_dim;
    }
    for (int64_t i = 0; i < count; i++) {
        for (int64_t c = 0; c < chunks; c++)
            store_f32(tile + i * chunks * LANES + c * LANES, load_chunk(rows[i], c * LANES, head_dim, DTYPE_BF16));
        out[i] = tile + i * chunks * LANES;
    }
    return chunks * LANES;
}

/* Attention of the query heads of kv head `kv_head` of sequence `seq`, written to out.
 * Tokens go LANES at a time: their K (then V) rows are widened to float32 once, then used by each
 * query head of the group in turn, whose query (or accumulator) row stays in registers.
 * Always inlined into callers that pass a constant head_dim, so the row loops unroll fully.
 */
static inline __attribute__((always_inline)) void attend(const decode_args *a, int64_t seq, int64_t kv_head,
                                                        const int64_t head_dim, float *restrict scratch) {
    const int dtype = a->dtype;
    const int64_t elem = dtype == DTYPE_BF16 ? 2 : 4;
    const int64_t group = a->num_heads / a->num_kv_heads;
    const int64_t context_len = a->context_lens[seq];
    const int64_t chunks = round_up(head_dim, LANES) / LANES;
    const int64_t row_width = chunks * LANES;
    const int64_t score_stride = round_up(context_len, LANES);
    float *restrict query = scratch;                  /* [group][row_width], times scale */
    float *restrict acc = query + group * row_width;  /* [group][row_width] */
    float *restrict tile = acc + group * row_width;   /* [LANES][row_width] */
    float *restrict scores = tile + LANES * row_width; /* [group][score_stride] */
    head_rows h = {a->k_cache, a->block_tables + seq * a->block_table_stride, a->block_size,
                   a->block_size * a->num_kv_heads * head_dim * elem, a->num_kv_heads * head_dim * elem,
                   kv_head * head_dim * elem};
    const float *rows[LANES];

    for (int64_t g = 0; g < group; g++) {
        int64_t head = kv_head * group + g;
        const char *src = (const char *)a->query + (seq * a->query_seq_stride + head * a->query_head_stride) * elem;
        for (int64_t c = 0; c < chunks; c++)
            store_f32(query + g * row_width + c * LANES, load_chunk(src, c * LANES, head_dim, dtype) * a->scale);
    }

    /* Pass 1: scores of every context token. Lanes past the context are written but never read. */
    for (int64_t first = 0; first < context_len; first += LANES) {
        const int64_t count = context_len - first < LANES ? context_len - first : LANES;
        const int64_t len = load_rows(&h, first, count, context_len, head_dim, dtype, tile, rows);
        for (int64_t g = 0; g < group; g++) {
            f32v q[MAX_CHUNKS], dots[LANES];
            for (int64_t c = 0; c < chunks; c++) q[c] = load_f32(query + g * row_width + c * LANES);
            for (int64_t i = 0; i < LANES; i++) {
                dots[i] = splat(0.0f);
                if (i < count)
                    for (int64_t c = 0; c < chunks; c++) dots[i] += q[c] * load_chunk(rows[i], c * LANES, len, DTYPE_F32);
            }
            store_f32(scores + g * score_stride + first, sum_each(dots));
        }
    }

    float inverse_sum[MAX_GROUP];
    for (int64_t g = 0; g < group; g++) inverse_sum[g] = 1.0f / softmax_numerators(scores + g * score_stride, context_len);

    /* Pass 2: the numerator-weighted sum of V rows; the softmax sums divide once at the end. */
    h.cache = a->v_cache;
    memset(acc, 0, (size_t)(group * row_width) * sizeof(float));
    for (int64_t first = 0; first < context_len; first += LANES) {
        const int64_t count = context_len - first < LANES ? context_len - first : LANES;
        const int64_t len = load_rows(&h, first, count, context_len, head_dim, dtype, tile, rows);
        for (int64_t g = 0; g < group; g++) {
            f32v sums[MAX_CHUNKS];
            for (int64_t c = 0; c < chunks; c++) sums[c] = load_f32(acc + g * row_width + c * LANES);
            for (int64_t i = 0; i < count; i++) {
                f32v weight = splat(scores[g * score_stride + first + i]);
                for (int64_t c = 0; c < chunks; c++) sums[c] += weight * load_chunk(rows[i], c * LANES, len, DTYPE_F32);
            }
            for (int64_t c = 0; c < chunks; c++) store_f32(acc + g * row_width + c * LANES, sums[c]);
        }
    }

    for (int64_t g = 0; g < group; g++) {
        const int64_t first = (seq * a->num_heads + kv_head * group + g) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) {
            float value = acc[g * row_width + d] * inverse_sum[g];
            if (dtype == DTYPE_BF16)
                ((uint16_t *)a->out)[first + d] = f32_to_bf16(value);
            else
                ((float *)a->out)[first + d] = value;
        }
    }
}

static void attend_any_head_dim(const decode_args *a, int64_t seq, int64_t kv_head, float *scratch) {
    switch (a->head_dim) {
    case 64: attend(a, seq, kv_head, 64, scratch); break;
    case 128: attend(a, seq, kv_head, 128, scratch); break;
    default: attend(a, seq, kv_head, a->head_dim, scratch); break;
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
    const int64_t group = num_heads / num_kv_heads;
    if (group > MAX_GROUP) return ERR_GROUP_TOO_LARGE;
    if (head_dim > MAX_CHUNKS * LANES) return ERR_HEAD_DIM_TOO_LARGE;
    int64_t longest = 0;
    for (int64_t seq = 0; seq < batch; seq++) {
        int err = check_sequence(&a, seq);
        if (err) return err;
        longest = context_lens[seq] > longest ? context_lens[seq] : longest;
    }
    const size_t scratch_bytes = scratch_floats(group, head_dim, longest) * sizeof(float);
    const int64_t items = batch * num_kv_heads;
    int failed = 0;
#pragma omp parallel num_threads(num_threads > 0 ? num_threads : 1)
    {
        float *scratch = malloc(scratch_bytes);
        if (!scratch) {
#pragma omp atomic write
            failed = 1;
        }
        /* Dynamic: items differ in length by up to 100x when fresh requests join old ones. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; item++)
            if (scratch) attend_any_head_dim(&a, item / num_kv_heads, item % num_kv_heads, scratch);
        free(scratch);
    }
    (void)num_threads;
    return failed ? ERR_NO_MEMORY : ERR_OK;
}
