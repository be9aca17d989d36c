// Inverted dropout with no stored mask, bit for bit the CPU's
// (src/cpu/dropout.rs): element i of chunk c = i / CHUNK draws from
// Rng::new(seed).fork(c) (src/rng.rs, SplitMix64). SplitMix64's state only
// ever adds a constant, so the k-th draw of a stream is a pure function of
// (seed, c, k): no state is carried between elements and any thread can
// compute any element. The forward and the backward are the same kernel
// with the same seed. Launch shape: src/cuda/kernels.rs.
#include "common.cuh"

#define HR_GOLDEN 0x9E3779B97F4A7C15ull
#define HR_FORK 0xD1B54A32D192ED03ull

// SplitMix64's output for state s (Rng::next_u64 after the add).
__device__ __forceinline__ unsigned long long splitmix_out(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Rng::new(seed).fork(c), then k + 1 draws (fork draws once itself): the
// state after them is s0 + (k + 2)·GOLDEN, with s0 = seed ^ GOLDEN ^ c·FORK.
// uniform() is the top 24 bits over 2^24, exact in f32.
__device__ __forceinline__ float dropout_uniform(unsigned long long seed, unsigned long long c, unsigned long long k) {
    unsigned long long s0 = (seed ^ HR_GOLDEN) ^ (c * HR_FORK);
    unsigned long long z = splitmix_out(s0 + (k + 2) * HR_GOLDEN);
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// y[i] = x[i]·(1/(1 − p)) where the draw is >= p, else 0. One element per
// thread-iteration (the draw, not memory, is the cost).
template <class T>
__device__ void dropout(const T* x, T* y, long long n, unsigned long long seed, float p, long long chunk) {
    float scale = __fdiv_rn(1.0f, 1.0f - p);  // correctly rounded, as the CPU's
    for (long long i = global_thread(); i < n; i += grid_threads()) {
        float u = dropout_uniform(seed, (unsigned long long)(i / chunk), (unsigned long long)(i % chunk));
        y[i] = from_f32<T>(u >= p ? __fmul_rn(to_f32(x[i]), scale) : 0.0f);
    }
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void dropout_f32(const float* x, float* y, long long n, unsigned long long seed, float p,
                                       long long chunk) {
    dropout(x, y, n, seed, p, chunk);
}
extern "C" __global__ void dropout_f16(const f16* x, f16* y, long long n, unsigned long long seed, float p,
                                       long long chunk) {
    dropout(x, y, n, seed, p, chunk);
}
extern "C" __global__ void dropout_bf16(const bf16* x, bf16* y, long long n, unsigned long long seed, float p,
                                        long long chunk) {
    dropout(x, y, n, seed, p, chunk);
}
