/* Fused CPU kernels of the VD and l0 weight terms, their sampling and their random numbers
 * (float32, contiguous).
 *
 * Why: on the CPU every PyTorch elementwise op is one pass over the weight tensor, and the VD
 * terms (sigma^2, the KL and their gradients) take about twenty of them; here each of forward
 * and backward is ONE pass that reads its inputs once and writes only its outputs. What backward
 * needs is whichever is cheaper: VD's forward keeps one slope per weight (so that backward has
 * no transcendental), l0's backward recomputes its gates from the kept uniform draws.
 *
 * The math is that of layers/variational_dropout.py and layers/l0.py (their docstrings give the
 * formulas and the gradients); tests check both backends against autograd of the formulas.
 * exp, log, sin and cos are written out (Cephes polynomials, ~1 ulp) so that the loops
 * vectorise with any C compiler, with no vector math library.
 *
 * Work is split in blocks of BLOCK elements that the calling threads take in turn from a shared
 * counter; a sum is written as one partial per block, so it does not depend on which thread or
 * how many threads ran the blocks.
 * Built by build.py with the system C compiler on first use; no Python headers needed.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The constants come from Python as -D defines (build.py's `constants()`): BLOCK and
 * PHILOX_LANES from build.py, VD_* from variational_dropout.py, L0_* from l0.py. */
#if !defined(BLOCK) || !defined(PHILOX_LANES) || !defined(VD_K1) || !defined(VD_K2) ||         \
    !defined(VD_K3) || !defined(VD_CLIP) || !defined(VD_EPS) || !defined(VD_LOG_GROUP) ||     \
    !defined(L0_BETA) || !defined(L0_INV_BETA) || !defined(L0_GAMMA) || !defined(L0_ZETA) ||  \
    !defined(L0_PENALTY_SHIFT)
#error "kernels.c is built by layers/backends/build.py, which defines its constants"
#endif
#define LOG_LANES 256 /* the KL's log chunk is VD_LOG_GROUP * LOG_LANES elements */
_Static_assert(BLOCK % (4 * PHILOX_LANES) == 0, "BLOCK: a whole number of Philox chunks");
_Static_assert(BLOCK % (VD_LOG_GROUP * LOG_LANES) == 0, "BLOCK: a whole number of log chunks");

static inline float bits_to_float(int32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline int32_t float_to_bits(float f) {
    int32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

/* exp(x), Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-7 polynomial. */
static inline float fast_exp(float x) {
    x = x > 88.0f ? 88.0f : x; /* 2^n stays finite */
    x = x < -87.3365447504019f ? -87.3365447504019f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * bits_to_float(((int32_t)n + 127) << 23);
}

/* log(x) for positive normal x, Cephes logf: x = m 2^e, m in [sqrt(1/2), sqrt(2)). */
static inline float fast_log(float x) {
    int32_t bits = float_to_bits(x);
    float e = (float)(((bits >> 23) & 0xff) - 126);
    float m = bits_to_float((bits & 0x007fffff) | 0x3f000000); /* [0.5, 1) */
    int small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    m = small ? m + m - 1.0f : m - 1.0f;
    float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    return m + y + 0.693359375f * e;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

/* The next block nobody has taken, or -1: threads take blocks until none is left, so a thread
 * that the OS runs late (or not at all) only does fewer blocks. */
static inline int64_t claim_block(int64_t *next_block, int64_t n) {
    int64_t block = __atomic_fetch_add(next_block, 1, __ATOMIC_RELAXED);
    return block * BLOCK < n ? block : -1;
}

/* Where built with OpenMP (build.py links the runtime PyTorch has loaded, so these regions run
 * on PyTorch's own threads, already awake after its last op), every thread of the region takes
 * blocks; elsewhere the caller and native.py's thread pool do. */
#define PARALLEL_OVER_BLOCKS _Pragma("omp parallel if (n > BLOCK)")

int kernels_use_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline int64_t block_end_index(int64_t block, int64_t n) {
    int64_t end = (block + 1) * BLOCK;
    return end < n ? end : n;
}

/* ---- random numbers ------------------------------------------------------------------------
 * Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3"),
 * the counter-based generator of cuRAND, JAX and TensorFlow: four 32-bit words per 64-bit counter
 * and key, with no state but the counter, so any block of any draw is computed independently.
 * A draw of n numbers at counter `base` lays out chunks of 4 PHILOX_LANES numbers: number
 * e = c (4 PHILOX_LANES) + w PHILOX_LANES + l is word w of counter base + c PHILOX_LANES + l.
 */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Ten rounds on the words c0..c3 (scalars, so that a loop over counters vectorises). */
#define PHILOX_ROUND(c0, c1, c2, c3, k0, k1)                                                    \
    do {                                                                                        \
        uint64_t p0 = (uint64_t)PHILOX_M0 * (c0);                                               \
        uint64_t p1 = (uint64_t)PHILOX_M1 * (c2);                                               \
        (c0) = (uint32_t)(p1 >> 32) ^ (c1) ^ (k0);                                              \
        (c1) = (uint32_t)p1;                                                                    \
        (c2) = (uint32_t)(p0 >> 32) ^ (c3) ^ (k1);                                              \
        (c3) = (uint32_t)p0;                                                                    \
        (k0) += PHILOX_W0;                                                                      \
        (k1) += PHILOX_W1;                                                                      \
    } while (0)
#define PHILOX_10(c0, c1, c2, c3, k0, k1)                                                       \
    do {                                                                                        \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
        PHILOX_ROUND(c0, c1, c2, c3, k0, k1);                                                   \
    } while (0)

/* The first counter of the chunk of a draw at `base` that starts at element `chunk_start`. */
static inline uint64_t chunk_counter(uint64_t base, int64_t chunk_start) {
    return base + (uint64_t)(chunk_start / (4 * PHILOX_LANES)) * PHILOX_LANES;
}

/* One Philox4x32-10 block, for known-answer tests. */
void philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    PHILOX_10(c0, c1, c2, c3, k0, k1);
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* out[e] = low + (high - low) f, f uniform on the 2^24 grid of [0, 1) (the top 24 bits of a
 * word), kept below high where rounding would reach it. */
void philox_uniform(float *out, int64_t n, uint32_t key0, uint32_t key1, uint64_t base,
                    float low, float high, int64_t *next_block) {
    const float scale = (high - low) * 0x1p-24f;
    const float below_high = nextafterf(high, low);
    PARALLEL_OVER_BLOCKS {
        float chunk_values[4 * PHILOX_LANES];
        for (int64_t b; (b = claim_block(next_block, n)) >= 0;) {
            int64_t block_end = block_end_index(b, n);
            for (int64_t chunk = b * BLOCK; chunk < block_end; chunk += 4 * PHILOX_LANES) {
                uint64_t first = chunk_counter(base, chunk);
#pragma omp simd
                for (int l = 0; l < PHILOX_LANES; ++l) {
                    uint64_t counter = first + (uint64_t)l;
                    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32);
                    uint32_t c2 = 0u, c3 = 0u, k0 = key0, k1 = key1;
                    PHILOX_10(c0, c1, c2, c3, k0, k1);
                    float v0 = low + (float)(c0 >> 8) * scale;
                    float v1 = low + (float)(c1 >> 8) * scale;
                    float v2 = low + (float)(c2 >> 8) * scale;
                    float v3 = low + (float)(c3 >> 8) * scale;
                    chunk_values[l] = v0 < high ? v0 : below_high;
                    chunk_values[PHILOX_LANES + l] = v1 < high ? v1 : below_high;
                    chunk_values[2 * PHILOX_LANES + l] = v2 < high ? v2 : below_high;
                    chunk_values[3 * PHILOX_LANES + l] = v3 < high ? v3 : below_high;
                }
                int64_t count = block_end - chunk;
                count = count < 4 * PHILOX_LANES ? count : 4 * PHILOX_LANES;
                memcpy(out + chunk, chunk_values, (size_t)count * sizeof(float));
            }
        }
    }
}

/* cos and sin of 2 pi `turns`, turns in [0, 1): quarter turns q = round(4 turns) and
 * a = (4 turns - q) pi / 2 in [-pi/4, pi/4], Cephes' sinf / cosf polynomials on a. */
static inline float quarter_angle(float turns, int *quadrant) {
    float q = floorf(turns * 4.0f + 0.5f);
    *quadrant = (int)q & 3;
    return (turns * 4.0f - q) * 1.57079632679489662f;
}

static inline float sin_small(float a) {
    float z = a * a;
    return a + a * z * (-1.6666654611e-1f + z * (8.3321608736e-3f + z * -1.9515295891e-4f));
}

static inline float cos_small(float a) {
    float z = a * a;
    return 1.0f - 0.5f * z +
           z * z * (4.166664568298827e-2f + z * (-1.388731625493765e-3f + z * 2.443315711809948e-5f));
}

/* Box-Muller: words x (-> u1 in (0, 1]) and y (-> turns in [0, 1)) give two N(0, 1) values. */
static inline void box_muller(uint32_t x, uint32_t y, float *first, float *second) {
    float u1 = (float)((x >> 8) + 1u) * 0x1p-24f;
    float radius = sqrtf(-2.0f * fast_log(u1));
    int quadrant;
    float a = quarter_angle((float)(y >> 8) * 0x1p-24f, &quadrant);
    float sa = sin_small(a), ca = cos_small(a);
    float c = quadrant == 0 ? ca : (quadrant == 1 ? -sa : (quadrant == 2 ? -ca : sa));
    float s = quadrant == 0 ? sa : (quadrant == 1 ? ca : (quadrant == 2 ? -sa : -ca));
    *first = radius * c;
    *second = radius * s;
}

/* The 4 PHILOX_LANES standard normals of the chunk whose first counter is `first`. */
static inline void philox_normal_chunk(uint32_t key0, uint32_t key1, uint64_t first,
                                       float *values) {
#pragma omp simd
    for (int l = 0; l < PHILOX_LANES; ++l) {
        uint64_t counter = first + (uint64_t)l;
        uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32);
        uint32_t c2 = 0u, c3 = 0u, k0 = key0, k1 = key1;
        PHILOX_10(c0, c1, c2, c3, k0, k1);
        float z0, z1, z2, z3;
        box_muller(c0, c1, &z0, &z1);
        box_muller(c2, c3, &z2, &z3);
        values[l] = z0;
        values[PHILOX_LANES + l] = z1;
        values[2 * PHILOX_LANES + l] = z2;
        values[3 * PHILOX_LANES + l] = z3;
    }
}

/* out[e] ~ N(0, 1), the same numbers vd_sample_philox draws for the same counters. */
void philox_normal(float *out, int64_t n, uint32_t key0, uint32_t key1, uint64_t base,
                   int64_t *next_block) {
    PARALLEL_OVER_BLOCKS {
        float values[4 * PHILOX_LANES];
        for (int64_t b; (b = claim_block(next_block, n)) >= 0;) {
            int64_t block_end = block_end_index(b, n);
            for (int64_t chunk = b * BLOCK; chunk < block_end; chunk += 4 * PHILOX_LANES) {
                philox_normal_chunk(key0, key1, chunk_counter(base, chunk), values);
                int64_t count = block_end - chunk;
                count = count < 4 * PHILOX_LANES ? count : 4 * PHILOX_LANES;
                memcpy(out + chunk, values, (size_t)count * sizeof(float));
            }
        }
    }
}

/* ---- variational dropout ------------------------------------------------------------------
 * t = theta^2 + eps, u = log_sigma2 - log t (unclipped log_alpha), la = clip(u, -8, 8),
 * alpha = exp(la), sigma2 = alpha t, s = sigmoid(K2 + K3 la),
 * KL = K1 - K1 s + 0.5 (log(1 + alpha) - la),
 * d KL / d la = -(K1 K3 s (1 - s) + 0.5 / (1 + alpha)) (< 0).
 * The KL's log(1 + alpha) is needed for its value only (its gradient is in the slope), so it is
 * summed as the log of products of VD_LOG_GROUP values: 1 + alpha <= 1 + e^8, and a product of 8
 * stays below 1e28, finite in float32. Forward writes sigma2 and `slope`: d KL / d la where
 * |u| < 8 (negative), +1 where the clip holds la (a flag: no gradient reaches log_alpha);
 * that is all backward needs beside theta, sigma2 and the incoming gradients.
 */

void vd_forward(const float *theta, const float *log_sigma2, float *sigma2, float *slope,
                int64_t n, int64_t *next_block, double *partials) {
    PARALLEL_OVER_BLOCKS {
        float one_plus_alpha[VD_LOG_GROUP * LOG_LANES];
        for (int64_t b; (b = claim_block(next_block, n)) >= 0;) {
            double kl = 0.0;
            int64_t block_end = block_end_index(b, n);
            for (int64_t chunk = b * BLOCK; chunk < block_end; chunk += VD_LOG_GROUP * LOG_LANES) {
                int64_t end = chunk + VD_LOG_GROUP * LOG_LANES;
                end = end < block_end ? end : block_end;
                float linear = 0.0f;
#pragma omp simd reduction(+ : linear)
                for (int64_t i = chunk; i < end; ++i) {
                    float th = theta[i];
                    float t = th * th + VD_EPS;
                    float u = log_sigma2[i] - fast_log(t);
                    float la = u > VD_CLIP ? VD_CLIP : u;
                    la = la < -VD_CLIP ? -VD_CLIP : la;
                    float alpha = fast_exp(la);
                    sigma2[i] = alpha * t;
                    float s = sigmoid(VD_K2 + VD_K3 * la);
                    float g = -(VD_K1 * VD_K3 * s * (1.0f - s) + 0.5f / (1.0f + alpha));
                    g = u > -VD_CLIP ? g : 1.0f;
                    slope[i] = u < VD_CLIP ? g : 1.0f;
                    one_plus_alpha[i - chunk] = 1.0f + alpha;
                    linear += VD_K1 - VD_K1 * s - 0.5f * la;
                }
                for (int64_t i = end - chunk; i < VD_LOG_GROUP * LOG_LANES; ++i) {
                    one_plus_alpha[i] = 1.0f; /* a short last chunk: log 1 = 0 */
                }
                float logs = 0.0f;
#pragma omp simd reduction(+ : logs)
                for (int l = 0; l < LOG_LANES; ++l) {
                    float product = one_plus_alpha[l];
                    for (int j = 1; j < VD_LOG_GROUP; ++j) {
                        product *= one_plus_alpha[j * LOG_LANES + l];
                    }
                    logs += fast_log(product);
                }
                kl += (double)linear + 0.5 * (double)logs;
            }
            partials[b] = kl;
        }
    }
}

/* g_la = [|u| < 8] (grad_sigma2 sigma2 + grad_kl slope); d / d log_sigma2 = g_la grad_scale,
 * d / d theta = (grad_sigma2 sigma2 - g_la) 2 theta / t (sigma2's direct dependence on theta
 * through t, less log_alpha's). */
void vd_backward(const float *theta, const float *sigma2, const float *slope,
                 const float *grad_sigma2, float grad_kl, float grad_scale, float *grad_theta,
                 float *grad_log_sigma2, int64_t n, int64_t *next_block) {
    PARALLEL_OVER_BLOCKS {
        for (int64_t b; (b = claim_block(next_block, n)) >= 0;) {
            int64_t end = block_end_index(b, n);
#pragma omp simd
            for (int64_t i = b * BLOCK; i < end; ++i) {
                float th = theta[i];
                float k = slope[i];
                float from_var = grad_sigma2[i] * sigma2[i];
                float g_la = k < 0.0f ? from_var + grad_kl * k : 0.0f;
                grad_log_sigma2[i] = g_la * grad_scale;
                grad_theta[i] = (from_var - g_la) * (2.0f * th / (th * th + VD_EPS));
            }
        }
    }
}

/* Local reparameterisation: mean += sqrt(variance + eps) noise, in place; noise becomes
 * d out / d variance = noise / (2 sqrt(variance + eps)), all backward needs. */
void vd_sample(float *mean, const float *variance, float *noise, int64_t n,
               int64_t *next_block) {
    PARALLEL_OVER_BLOCKS {
        for (int64_t b; (b = claim_block(next_block, n)) >= 0;) {
            int64_t end = block_end_index(b, n);
#pragma omp simd
            for (int64_t i = b * BLOCK; i < end; ++i) {
                float std = sqrtf(variance[i] + VD_EPS);
                float z = noise[i];
                mean[i] += std * z;
                noise[i] = 0.5f * z / std;
            }
        }
    }
}

/* vd_sample with the noise drawn here (philox_normal's numbers for these counters): mean +=
 * sqrt(variance + eps) z in place, and slope = z / (2 sqrt(variance + eps)) for backward. */
void vd_sample_philox(float *mean, const float *variance, float *slope, int64_t n,
                      uint32_t key0, uint32_t key1, uint64_t base, int64_t *next_block) {
    PARALLEL_OVER_BLOCKS {
        float values[4 * PHILOX_LANES];
        for (int64_t b; (b = claim_block(next_block, n)) >= 0;) {
            int64_t block_end = block_end_index(b, n);
            for (int64_t chunk = b * BLOCK; chunk < block_end; chunk += 4 * PHILOX_LANES) {
                philox_normal_chunk(key0, key1, chunk_counter(base, chunk), values);
                int64_t end = chunk + 4 * PHILOX_LANES;
                end = end < block_end ? end : block_end;
#pragma omp simd
                for (int64_t i = chunk; i < end; ++i) {
                    float std = sqrtf(variance[i] + VD_EPS);
                    float z = values[i - chunk];
                    mean[i] += std * z;
                    slope[i] = 0.5f * z / std;
                }
            }
        }
    }
}

/* ---- l0 hard concrete ---------------------------------------------------------------------
 * r = (1 - u) / u, s = 1 / (1 + r^(1/BETA) exp(-log_alpha / BETA)), r^(1/BETA) = r sqrt(r)
 * (l0.py asserts BETA = 2/3),
 * z = clip(s (ZETA - GAMMA) + GAMMA, 0, 1), weight = theta z,
 * penalty = sum sigmoid(log_alpha - PENALTY_SHIFT).
 */
static inline float l0_s(float log_alpha, float u) {
    float r = (1.0f - u) / u;
    return 1.0f / (1.0f + r * sqrtf(r) * fast_exp(-L0_INV_BETA * log_alpha));
}

static inline float l0_z(float s) {
    float z = s * (L0_ZETA - L0_GAMMA) + L0_GAMMA;
    z = z > 1.0f ? 1.0f : z;
    return z < 0.0f ? 0.0f : z;
}

void l0_forward(const float *theta, const float *log_alpha, const float *uniform, float *weight,
                int64_t n, int64_t *next_block, double *partials) {
    PARALLEL_OVER_BLOCKS {
        for (int64_t b; (b = claim_block(next_block, n)) >= 0;) {
            float penalty = 0.0f;
            int64_t end = block_end_index(b, n);
#pragma omp simd reduction(+ : penalty)
            for (int64_t i = b * BLOCK; i < end; ++i) {
                float la = log_alpha[i];
                weight[i] = theta[i] * l0_z(l0_s(la, uniform[i]));
                penalty += sigmoid(la - L0_PENALTY_SHIFT);
            }
            partials[b] = (double)penalty;
        }
    }
}

/* d weight / d theta = z; d weight / d log_alpha = theta (ZETA - GAMMA) / BETA s (1 - s)
 * [0 < z < 1]; d penalty / d log_alpha = p (1 - p). log_alpha's gradient is times grad_scale. */
void l0_backward(const float *theta, const float *log_alpha, const float *uniform,
                 const float *grad_weight, float grad_penalty, float grad_scale,
                 float *grad_theta, float *grad_log_alpha, int64_t n, int64_t *next_block) {
    const float stretch = (L0_ZETA - L0_GAMMA) / L0_BETA;
    PARALLEL_OVER_BLOCKS {
        for (int64_t b; (b = claim_block(next_block, n)) >= 0;) {
            int64_t end = block_end_index(b, n);
#pragma omp simd
            for (int64_t i = b * BLOCK; i < end; ++i) {
                float la = log_alpha[i];
                float th = theta[i];
                float s = l0_s(la, uniform[i]);
                float z = l0_z(s);
                float g = grad_weight[i];
                float p = sigmoid(la - L0_PENALTY_SHIFT);
                float g_gate = g * th * stretch * s * (1.0f - s);
                g_gate = z > 0.0f ? g_gate : 0.0f; /* two selects: one with && or & */
                g_gate = z < 1.0f ? g_gate : 0.0f; /* does not vectorise (gcc 12) */
                grad_theta[i] = g * z;
                grad_log_alpha[i] = (g_gate + grad_penalty * p * (1.0f - p)) * grad_scale;
            }
        }
    }
}
