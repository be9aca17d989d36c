// Layer norm over the last dimension, forward and backward, as
// src/cpu/norm.rs: biased variance in two passes, rstd = 1/sqrt(var + eps),
// each row's mean and rstd saved in f32. The backward writes dx row by row
// and per-block partial sums of dweight and dbias into a workspace; a
// second kernel adds the partials in block order, so the sums never depend
// on scheduling. Launch shapes and the workspace rule: src/cuda/kernels.rs.
#include "common.cuh"

// One block per row. w and b may be null. With `cache` the launch gave
// cols * 4 bytes of dynamic shared memory and x is read from global memory
// once; each thread only touches its own columns there.
template <class T>
__device__ void ln_forward(const T* x, const T* w, const T* b, T* y, float* mean, float* rstd, long long cols,
                           float eps, int cache) {
    __shared__ float scratch[32];
    float* saved = reinterpret_cast<float*>(hr_smem);
    long long base = (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = to_f32(x[base + j]);
        if (cache) saved[j] = v;
        s += v;
    }
    float m = block_sum(s, scratch) / (float)cols;
    float q = 0.0f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float d = (cache ? saved[j] : to_f32(x[base + j])) - m;
        q += d * d;
    }
    float var = block_sum(q, scratch) / (float)cols;
    float r = 1.0f / sqrtf(var + eps);  // not rsqrtf: the CPU rounds the same way
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = m;
        rstd[blockIdx.x] = r;
    }
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float o = ((cache ? saved[j] : to_f32(x[base + j])) - m) * r;
        if (w) o *= to_f32(w[j]);
        if (b) o += to_f32(b[j]);
        y[base + j] = from_f32<T>(o);
    }
}

// Block k takes rows [k·per, min((k+1)·per, rows)). With x̂ = (x − mean)·rstd
// and g = dy·w: dx = rstd·(g − mean(g) − x̂·mean(g·x̂)); the block adds
// dy·x̂ and dy of its rows into part[k][0][:] and part[k][1][:] (each thread
// owns its columns there, so no atomics). dx or part may be null (not wanted).
template <class T>
__device__ void ln_backward(const T* x, const T* dy, const T* w, const float* mean, const float* rstd, T* dx,
                            float* part, long long rows, long long cols, long long per) {
    __shared__ float scratch[32];
    long long r0 = (long long)blockIdx.x * per, r1 = min(r0 + per, rows);
    float* pw = part ? part + (long long)blockIdx.x * 2 * cols : nullptr;
    float* pb = pw ? pw + cols : nullptr;
    if (pw) {
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) pw[j] = pb[j] = 0.0f;
    }
    for (long long r = r0; r < r1; ++r) {
        const T* xr = x + r * cols;
        const T* gr = dy + r * cols;
        float m = mean[r], rs = rstd[r];
        float sg = 0.0f, sgx = 0.0f;
        if (dx) {  // uniform across the block: the barriers inside are safe
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
                float g = to_f32(gr[j]) * (w ? to_f32(w[j]) : 1.0f);
                sg += g;
                sgx += g * ((to_f32(xr[j]) - m) * rs);
            }
            sg = block_sum(sg, scratch) / (float)cols;
            sgx = block_sum(sgx, scratch) / (float)cols;
        }
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            float d = to_f32(gr[j]), xh = (to_f32(xr[j]) - m) * rs;
            if (dx) dx[r * cols + j] = from_f32<T>(rs * (d * (w ? to_f32(w[j]) : 1.0f) - sg - xh * sgx));
            if (pw) {
                pw[j] += d * xh;
                pb[j] += d;
            }
        }
    }
}

// dw[j] = Σ_k part[k][0][j], db[j] = Σ_k part[k][1][j], k in increasing
// order; one thread per column. dw or db may be null.
template <class T>
__device__ void ln_backward_sums(const float* part, T* dw, T* db, long long blocks, long long cols) {
    for (long long j = global_thread(); j < cols; j += grid_threads()) {
        float sw = 0.0f, sb = 0.0f;
        for (long long k = 0; k < blocks; ++k) {
            sw += part[2 * k * cols + j];
            sb += part[(2 * k + 1) * cols + j];
        }
        if (dw) dw[j] = from_f32<T>(sw);
        if (db) db[j] = from_f32<T>(sb);
    }
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void layer_norm_f32(const float* x, const float* w, const float* b, float* y, float* mean,
                                          float* rstd, long long cols, float eps, int cache) {
    ln_forward(x, w, b, y, mean, rstd, cols, eps, cache);
}
extern "C" __global__ void layer_norm_f16(const f16* x, const f16* w, const f16* b, f16* y, float* mean,
                                          float* rstd, long long cols, float eps, int cache) {
    ln_forward(x, w, b, y, mean, rstd, cols, eps, cache);
}
extern "C" __global__ void layer_norm_bf16(const bf16* x, const bf16* w, const bf16* b, bf16* y, float* mean,
                                           float* rstd, long long cols, float eps, int cache) {
    ln_forward(x, w, b, y, mean, rstd, cols, eps, cache);
}
extern "C" __global__ void layer_norm_backward_f32(const float* x, const float* dy, const float* w, const float* mean,
                                                   const float* rstd, float* dx, float* part, long long rows,
                                                   long long cols, long long per) {
    ln_backward(x, dy, w, mean, rstd, dx, part, rows, cols, per);
}
extern "C" __global__ void layer_norm_backward_f16(const f16* x, const f16* dy, const f16* w, const float* mean,
                                                   const float* rstd, f16* dx, float* part, long long rows,
                                                   long long cols, long long per) {
    ln_backward(x, dy, w, mean, rstd, dx, part, rows, cols, per);
}
extern "C" __global__ void layer_norm_backward_bf16(const bf16* x, const bf16* dy, const bf16* w, const float* mean,
                                                    const float* rstd, bf16* dx, float* part, long long rows,
                                                    long long cols, long long per) {
    ln_backward(x, dy, w, mean, rstd, dx, part, rows, cols, per);
}
extern "C" __global__ void layer_norm_backward_sums_f32(const float* part, float* dw, float* db, long long blocks,
                                                        long long cols) {
    ln_backward_sums(part, dw, db, blocks, cols);
}
extern "C" __global__ void layer_norm_backward_sums_f16(const float* part, f16* dw, f16* db, long long blocks,
                                                        long long cols) {
    ln_backward_sums(part, dw, db, blocks, cols);
}
extern "C" __global__ void layer_norm_backward_sums_bf16(const float* part, bf16* dw, bf16* db, long long blocks,
                                                         long long cols) {
    ln_backward_sums(part, dw, db, blocks, cols);
}
