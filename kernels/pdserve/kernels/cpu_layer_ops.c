/* The elementwise parts of a Llama-style decoder layer on the CPU, each one pass over memory:
 * RMSNorm (optionally after the residual add) and rotary embedding in place. (SiLU(gate) * up in C
 * measured slower than torch's Sleef-vectorized silu and mul, so it stays in torch.)
 *
 * Plain C with GCC/Clang vector extensions, built on first use like cpu_paged_attention.c (see
 * cpu_layer_ops.py). Tensors are float32 or bfloat16, all of one dtype; arithmetic is float32.
 * For bfloat16 every intermediate result that Hugging Face's torch code stores as a bfloat16 tensor
 * is rounded to bfloat16 here too, at the same point, so outputs match it to the last bit except
 * where a float32 sum adds in another order (the RMSNorm variance).
 *
 * Rows are `cols` dense values; a row's address is base + (row / inner) * outer_stride +
 * (row % inner) * inner_stride elements, which covers plain [rows, cols] tensors (inner = 1) and
 * the per-head rows of a packed q/k/v projection ([tokens, heads, head_dim] views).
 */

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define DTYPE_F32 0
#define DTYPE_BF16 1

#define LANES 16
/* Below this many elements (a decode step's rows) a call runs on one thread: it takes tens of microseconds,
 * and a barrier with a thread that another process has descheduled can cost a scheduler time slice. */
#define MIN_PARALLEL_ELEMENTS (1 << 18)

typedef float f32v __attribute__((vector_size(LANES * 4)));
typedef int32_t i32v __attribute__((vector_size(LANES * 4)));
typedef uint32_t u32v __attribute__((vector_size(LANES * 4)));
typedef uint16_t u16v __attribute__((vector_size(LANES * 2)));

typedef struct {
    int64_t inner, outer_stride, inner_stride; /* elements */
} row_layout;

static inline int64_t row_offset(const row_layout *l, int64_t row) {
    return row / l->inner * l->outer_stride + row % l->inner * l->inner_stride;
}

static inline f32v splat(float x) { return (f32v){0} + x; }

/* Rounds float32 lanes to the nearest bfloat16 (ties to even, NaN stays NaN), as float32 values. */
static inline f32v round_bf16(f32v x) {
    u32v bits = (u32v)x;
    u32v rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    i32v nan = (i32v)((bits & 0x7fffffffu) > 0x7f800000u);
    return (f32v)((rounded & ~(u32v)nan) | ((bits | 0x400000u) & (u32v)nan));
}

/* What storing to `dtype` and reading back gives: the rounding a torch op's bfloat16 output applies. */
static inline f32v as_stored(f32v x, int dtype) { return dtype == DTYPE_BF16 ? round_bf16(x) : x; }

/* Lanes [0, count) of a row from element `start`; the others are zero. count <= LANES. */
static inline f32v load(const void *row, int64_t start, int64_t count, int dtype) {
    if (count == LANES) { /* a fixed-size copy compiles to one vector load */
        if (dtype == DTYPE_BF16) {
            u16v v;
            memcpy(&v, (const uint16_t *)row + start, sizeof v);
            return (f32v)(__builtin_convertvector(v, u32v) << 16);
        }
        f32v v;
        memcpy(&v, (const float *)row + start, sizeof v);
        return v;
    }
    if (dtype == DTYPE_BF16) {
        uint16_t bits[LANES] = {0};
        memcpy(bits, (const uint16_t *)row + start, (size_t)count * 2);
        u16v v;
        memcpy(&v, bits, sizeof v);
        return (f32v)(__builtin_convertvector(v, u32v) << 16);
    }
    float values[LANES] = {0};
    memcpy(values, (const float *)row + start, (size_t)count * 4);
    f32v v;
    memcpy(&v, values, sizeof v);
    return v;
}

/* Writes lanes [0, count) to a row from element `start`, rounding to bfloat16 where the dtype is. */
static inline void store(void *row, int64_t start, int64_t count, f32v x, int dtype) {
    if (dtype == DTYPE_BF16) {
        u16v v = __builtin_convertvector((u32v)round_bf16(x) >> 16, u16v);
        if (count == LANES)
            memcpy((uint16_t *)row + start, &v, sizeof v);
        else
            memcpy((uint16_t *)row + start, &v, (size_t)count * 2);
    } else if (count == LANES) {
        memcpy((float *)row + start, &x, sizeof x);
    } else {
        memcpy((float *)row + start, &x, (size_t)count * 4);
    }
}

static inline int64_t lanes_left(int64_t start, int64_t cols) { return cols - start < LANES ? cols - start : LANES; }

static inline float sum_lanes(f32v x) {
    float sum = 0.0f;
    for (int lane = 0; lane < LANES; lane++) sum += x[lane];
    return sum;
}

/* out = weight * as_stored(x * rsqrt(mean(x^2) + eps)), the Llama/Qwen RMSNorm; out may be x. */
static void norm_row(void *out, const void *x, const void *weight, int64_t cols, float eps, int dtype) {
    f32v squares = splat(0.0f);
    for (int64_t c = 0; c < cols; c += LANES) {
        f32v v = load(x, c, lanes_left(c, cols), dtype);
        squares += v * v;
    }
    const float inverse_rms = 1.0f / sqrtf(sum_lanes(squares) / (float)cols + eps);
    for (int64_t c = 0; c < cols; c += LANES) {
        const int64_t n = lanes_left(c, cols);
        f32v normed = as_stored(load(x, c, n, dtype) * inverse_rms, dtype);
        store(out, c, n, load(weight, c, n, dtype) * normed, dtype);
    }
}

int pdserve_rms_norm(void *out, const void *x, const void *weight, int64_t rows, int64_t cols, int64_t inner,
                     int64_t outer_stride, int64_t inner_stride, float eps, int dtype, int num_threads) {
    const row_layout layout = {inner, outer_stride, inner_stride};
    const int64_t elem = dtype == DTYPE_BF16 ? 2 : 4;
#pragma omp parallel for num_threads(num_threads) if (rows * cols >= MIN_PARALLEL_ELEMENTS)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t offset = row_offset(&layout, row) * elem;
        norm_row((char *)out + offset, (const char *)x + offset, weight, cols, eps, dtype);
    }
    return 0;
}

/* Per dense [rows, cols] row: x = as_stored(x + residual) in place (the layer's new residual stream),
 * then out = RMSNorm(x). */
int pdserve_add_rms_norm(void *out, void *x, const void *residual, const void *weight, int64_t rows, int64_t cols,
                         float eps, int dtype, int num_threads) {
    const int64_t row_bytes = cols * (dtype == DTYPE_BF16 ? 2 : 4);
#pragma omp parallel for num_threads(num_threads) if (rows * cols >= MIN_PARALLEL_ELEMENTS)
    for (int64_t row = 0; row < rows; row++) {
        char *x_row = (char *)x + row * row_bytes;
        const char *residual_row = (const char *)residual + row * row_bytes;
        for (int64_t c = 0; c < cols; c += LANES) {
            const int64_t n = lanes_left(c, cols);
            store(x_row, c, n, load(x_row, c, n, dtype) + load(residual_row, c, n, dtype), dtype);
        }
        norm_row((char *)out + row * row_bytes, x_row, weight, cols, eps, dtype);
    }
    return 0;
}

/* Rotary embedding in place, the rotate_half form: with h = dim / 2,
 * x[i] <- x[i] * cos[i] - x[i + h] * sin[i] and x[i + h] <- x[i + h] * cos[i + h] + x[i] * sin[i + h],
 * each product and the sum rounded like the torch ops that compute them. Row r (inner = heads per
 * token) uses cos and sin row r / inner, dense [tokens, dim]. */
int pdserve_rotary_in_place(void *x, const void *cos, const void *sin, int64_t rows, int64_t dim, int64_t inner,
                            int64_t outer_stride, int64_t inner_stride, int dtype, int num_threads) {
    if (dim % 2) return 1;
    const row_layout layout = {inner, outer_stride, inner_stride};
    const int64_t elem = dtype == DTYPE_BF16 ? 2 : 4;
    const int64_t half = dim / 2;
#pragma omp parallel for num_threads(num_threads) if (rows * dim >= MIN_PARALLEL_ELEMENTS)
    for (int64_t row = 0; row < rows; row++) {
        char *r = (char *)x + row_offset(&layout, row) * elem;
        const char *c = (const char *)cos + row / inner * dim * elem;
        const char *s = (const char *)sin + row / inner * dim * elem;
        for (int64_t i = 0; i < half; i += LANES) {
            const int64_t n = lanes_left(i, half);
            f32v low = load(r, i, n, dtype), high = load(r, half + i, n, dtype);
            f32v new_low = as_stored(low * load(c, i, n, dtype), dtype) -
                           as_stored(high * load(s, i, n, dtype), dtype);
            f32v new_high = as_stored(high * load(c, half + i, n, dtype), dtype) +
                            as_stored(low * load(s, half + i, n, dtype), dtype);
            store(r, i, n, new_low, dtype);
            store(r, half + i, n, new_high, dtype);
        }
    }
    return 0;
}

/* Greedy sampling's argmax over bf16 logits, without the float32 copy torch would need: as torch.argmax
 * on the float values, out[r] is the first index of row r's maximum, NaN counting as above everything
 * and -0 equal to +0. Each bf16 becomes an integer key that orders like its value (negative values
 * flip their magnitude bits); the row is scanned in blocks keeping the first block with the largest
 * key, then that block for the first matching index. Rows are dense, row_stride elements apart. */
#define ARGMAX_BLOCK 256

static inline int32_t order_key(uint16_t bits) {
    const int32_t v = (int16_t)bits;
    const int32_t key = v ^ ((v >> 31) & 0x7fff);
    return key == -1 ? 0 : key; /* -0 (the only bits giving -1) orders as +0 */
}

static inline int is_nan_bf16(uint16_t bits) { return (bits & 0x7fffu) > 0x7f80u; }

int pdserve_argmax_bf16_rows(int64_t *out, const uint16_t *x, int64_t rows, int64_t cols, int64_t row_stride,
                             int num_threads) {
    if (cols < 1) return 1;
#pragma omp parallel for num_threads(num_threads) if (rows * cols >= MIN_PARALLEL_ELEMENTS)
    for (int64_t row = 0; row < rows; row++) {
        const uint16_t *values = x + row * row_stride;
        int32_t best = INT32_MIN;
        int64_t best_block = 0;
        int nan = 0;
        for (int64_t start = 0; start < cols; start += ARGMAX_BLOCK) {
            const int64_t end = start + ARGMAX_BLOCK < cols ? start + ARGMAX_BLOCK : cols;
            int32_t block_max = INT32_MIN;
            for (int64_t i = start; i < end; i++) { /* vectorized: integer max and or */
                const int32_t key = order_key(values[i]);
                block_max = key > block_max ? key : block_max;
                nan |= is_nan_bf16(values[i]);
            }
            if (block_max > best) best = block_max, best_block = start;
        }
        int64_t index = best_block;
        if (nan) { /* rare: a broken model; torch returns the first NaN */
            for (index = 0; !is_nan_bf16(values[index]); index++) {
            }
        } else {
            while (order_key(values[index]) != best) index++;
        }
        out[row] = index;
    }
    return 0;
}
