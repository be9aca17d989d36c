// Row reductions along the last axis: sum, softmax and log_softmax forward
// and backward. One block per row; each thread strides over the row, then
// warp shuffles and shared memory combine the block (f32 accumulation for
// every storage type). Launch shapes: src/cuda/kernels.rs.
#include "common.cuh"

// out[row] = scale * sum(x[row, :]).
template <class T>
__device__ void sum_last(const T* x, T* out, long long cols, float scale) {
    __shared__ float scratch[32];
    const T* row = x + (long long)blockIdx.x * cols;
    float acc = 0.0f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) acc += to_f32(row[j]);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = from_f32<T>(acc * scale);
}

// Softmax (LOG: log-softmax) of each row, as src/cpu/reduce.rs: subtract the
// row max (0 for an all -inf row), exponentiate, normalise. With `cache` the
// launch gave cols * 4 bytes of dynamic shared memory and the row is read
// from global memory once; each thread only touches its own columns there.
template <class T, bool LOG>
__device__ void softmax(const T* x, T* y, long long cols, int cache) {
    __shared__ float scratch[32];
    float* saved = reinterpret_cast<float*>(hr_smem);
    const T* xr = x + (long long)blockIdx.x * cols;
    T* yr = y + (long long)blockIdx.x * cols;
    float m = HR_NEG_INF;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = to_f32(xr[j]);
        if (cache) saved[j] = v;
        m = fmaxf(m, v);
    }
    m = block_max(m, scratch);
    if (m == HR_NEG_INF) m = 0.0f;
    float z = 0.0f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) z += expf((cache ? saved[j] : to_f32(xr[j])) - m);
    z = block_sum(z, scratch);
    float lz = logf(z) + m;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = cache ? saved[j] : to_f32(xr[j]);
        yr[j] = from_f32<T>(LOG ? v - lz : expf(v - m) / z);
    }
}

// From the forward output y: softmax dx = y * (dy - sum(dy * y));
// log-softmax dx = dy - exp(y) * sum(dy).
template <class T, bool LOG>
__device__ void softmax_grad(const T* y, const T* dy, T* dx, long long cols) {
    __shared__ float scratch[32];
    long long base = (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x)
        s += LOG ? to_f32(dy[base + j]) : to_f32(dy[base + j]) * to_f32(y[base + j]);
    s = block_sum(s, scratch);
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float yv = to_f32(y[base + j]), g = to_f32(dy[base + j]);
        dx[base + j] = from_f32<T>(LOG ? g - expf(yv) * s : yv * (g - s));
    }
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void sum_last_f32(const float* x, float* out, long long cols, float scale) {
    sum_last(x, out, cols, scale);
}
extern "C" __global__ void sum_last_f16(const f16* x, f16* out, long long cols, float scale) {
    sum_last(x, out, cols, scale);
}
extern "C" __global__ void sum_last_bf16(const bf16* x, bf16* out, long long cols, float scale) {
    sum_last(x, out, cols, scale);
}

extern "C" __global__ void softmax_f32(const float* x, float* y, long long cols, int cache) {
    softmax<float, false>(x, y, cols, cache);
}
extern "C" __global__ void softmax_f16(const f16* x, f16* y, long long cols, int cache) {
    softmax<f16, false>(x, y, cols, cache);
}
extern "C" __global__ void softmax_bf16(const bf16* x, bf16* y, long long cols, int cache) {
    softmax<bf16, false>(x, y, cols, cache);
}
extern "C" __global__ void log_softmax_f32(const float* x, float* y, long long cols, int cache) {
    softmax<float, true>(x, y, cols, cache);
}
extern "C" __global__ void log_softmax_f16(const f16* x, f16* y, long long cols, int cache) {
    softmax<f16, true>(x, y, cols, cache);
}
extern "C" __global__ void log_softmax_bf16(const bf16* x, bf16* y, long long cols, int cache) {
    softmax<bf16, true>(x, y, cols, cache);
}

extern "C" __global__ void softmax_grad_f32(const float* y, const float* dy, float* dx, long long cols) {
    softmax_grad<float, false>(y, dy, dx, cols);
}
extern "C" __global__ void softmax_grad_f16(const f16* y, const f16* dy, f16* dx, long long cols) {
    softmax_grad<f16, false>(y, dy, dx, cols);
}
extern "C" __global__ void softmax_grad_bf16(const bf16* y, const bf16* dy, bf16* dx, long long cols) {
    softmax_grad<bf16, false>(y, dy, dx, cols);
}
extern "C" __global__ void log_softmax_grad_f32(const float* y, const float* dy, float* dx, long long cols) {
    softmax_grad<float, true>(y, dy, dx, cols);
}
extern "C" __global__ void log_softmax_grad_f16(const f16* y, const f16* dy, f16* dx, long long cols) {
    softmax_grad<f16, true>(y, dy, dx, cols);
}
extern "C" __global__ void log_softmax_grad_bf16(const bf16* y, const bf16* dy, bf16* dx, long long cols) {
    softmax_grad<bf16, true>(y, dy, dx, cols);
}
