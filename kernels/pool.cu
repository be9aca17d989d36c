// Max and average pooling over 1-3 spatial dims, forward and backward, as
// src/cpu/pool.rs: planes [B*C, D, H, W] (1-d and 2-d pools have size-1
// dims), dilation 1, -inf padding for max, zero padding counted in the
// average's divisor. One thread per output (forward) or per input
// (backward, a gather over the covering windows in order of output
// position), so every element is written once, in a fixed order: no
// atomics, deterministic. Launch shapes: src/cuda/kernels.rs.
#include "common.cuh"
#include "window.cuh"

// Outputs along dim d whose window covers input i: [lo, hi) (hi may be <= lo).
__device__ __forceinline__ void pool_covering(const Window& g, int d, int i, int* lo, int* hi) {
    int k = g.k[d], s = g.stride[d], p = g.pad[d];
    *lo = i + p + 1 > k ? (i + p + 1 - k + s - 1) / s : 0;
    *hi = min((i + p) / s + 1, g.small[d]);
}

// Window max; arg = flat plane index of the first maximum (a NaN wins and stays).
template <class T>
__device__ void max_pool(const T* x, T* out, int* arg, long long planes, Window g) {
    long long blen = win_big_len(g), slen = win_small_len(g);
    for (long long idx = global_thread(); idx < planes * slen; idx += grid_threads()) {
        const T* xp = x + idx / slen * blen;
        int o[3];
        win_decode((int)(idx % slen), g.small, o);
        float best = __int_as_float(0x7fc00000);  // NaN until the first element
        int at = -1;
        for (int a = 0; a < g.k[0]; ++a) {
            int id = win_src(g, 0, o[0], a);
            if (id < 0) continue;
            for (int b = 0; b < g.k[1]; ++b) {
                int ih = win_src(g, 1, o[1], b);
                if (ih < 0) continue;
                for (int c = 0; c < g.k[2]; ++c) {
                    int iw = win_src(g, 2, o[2], c);
                    if (iw < 0) continue;
                    int i = (id * g.big[1] + ih) * g.big[2] + iw;
                    float v = to_f32(xp[i]);
                    if (at < 0 || (best == best && (v > best || v != v))) {
                        best = v;
                        at = i;
                    }
                }
            }
        }
        out[idx] = from_f32<T>(best);
        arg[idx] = at;
    }
}

// Visit, in order of output position, the outputs whose window covers input
// i of a plane: f(flat output index).
template <class F>
__device__ __forceinline__ void pool_each_covering(const Window& g, int i, F f) {
    int c[3], lo[3], hi[3];
    win_decode(i, g.big, c);
    for (int d = 0; d < 3; ++d) pool_covering(g, d, c[d], &lo[d], &hi[d]);
    for (int od = lo[0]; od < hi[0]; ++od)
        for (int oh = lo[1]; oh < hi[1]; ++oh)
            for (int ow = lo[2]; ow < hi[2]; ++ow) f((od * g.small[1] + oh) * g.small[2] + ow);
}

// dx[i] = sum of dy[o] over the covering outputs whose maximum was i.
template <class T>
__device__ void max_pool_grad(const T* dy, const int* arg, T* dx, long long planes, Window g) {
    long long blen = win_big_len(g), slen = win_small_len(g);
    for (long long idx = global_thread(); idx < planes * blen; idx += grid_threads()) {
        long long base = idx / blen * slen;
        int i = (int)(idx % blen);
        float acc = 0.0f;
        pool_each_covering(g, i, [&](int o) {
            if (arg[base + o] == i) acc += to_f32(dy[base + o]);
        });
        dx[idx] = from_f32<T>(acc);
    }
}

// Window mean; the divisor is always the kernel volume.
template <class T>
__device__ void avg_pool(const T* x, T* out, long long planes, Window g) {
    long long blen = win_big_len(g), slen = win_small_len(g);
    float inv = 1.0f / (float)win_kvol(g);
    for (long long idx = global_thread(); idx < planes * slen; idx += grid_threads()) {
        const T* xp = x + idx / slen * blen;
        int o[3];
        win_decode((int)(idx % slen), g.small, o);
        float acc = 0.0f;
        for (int a = 0; a < g.k[0]; ++a) {
            int id = win_src(g, 0, o[0], a);
            if (id < 0) continue;
            for (int b = 0; b < g.k[1]; ++b) {
                int ih = win_src(g, 1, o[1], b);
                if (ih < 0) continue;
                for (int c = 0; c < g.k[2]; ++c) {
                    int iw = win_src(g, 2, o[2], c);
                    if (iw >= 0) acc += to_f32(xp[(id * g.big[1] + ih) * g.big[2] + iw]);
                }
            }
        }
        out[idx] = from_f32<T>(acc * inv);
    }
}

// dx[i] = sum of dy[o] over the covering outputs, over the kernel volume.
template <class T>
__device__ void avg_pool_grad(const T* dy, T* dx, long long planes, Window g) {
    long long blen = win_big_len(g), slen = win_small_len(g);
    float inv = 1.0f / (float)win_kvol(g);
    for (long long idx = global_thread(); idx < planes * blen; idx += grid_threads()) {
        long long base = idx / blen * slen;
        float acc = 0.0f;
        pool_each_covering(g, (int)(idx % blen), [&](int o) { acc += to_f32(dy[base + o]); });
        dx[idx] = from_f32<T>(acc * inv);
    }
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void max_pool_f32(const float* x, float* out, int* arg, long long planes, Window g) {
    max_pool(x, out, arg, planes, g);
}
extern "C" __global__ void max_pool_f16(const f16* x, f16* out, int* arg, long long planes, Window g) {
    max_pool(x, out, arg, planes, g);
}
extern "C" __global__ void max_pool_bf16(const bf16* x, bf16* out, int* arg, long long planes, Window g) {
    max_pool(x, out, arg, planes, g);
}

extern "C" __global__ void max_pool_grad_f32(const float* dy, const int* arg, float* dx, long long planes, Window g) {
    max_pool_grad(dy, arg, dx, planes, g);
}
extern "C" __global__ void max_pool_grad_f16(const f16* dy, const int* arg, f16* dx, long long planes, Window g) {
    max_pool_grad(dy, arg, dx, planes, g);
}
extern "C" __global__ void max_pool_grad_bf16(const bf16* dy, const int* arg, bf16* dx, long long planes, Window g) {
    max_pool_grad(dy, arg, dx, planes, g);
}

extern "C" __global__ void avg_pool_f32(const float* x, float* out, long long planes, Window g) {
    avg_pool(x, out, planes, g);
}
extern "C" __global__ void avg_pool_f16(const f16* x, f16* out, long long planes, Window g) {
    avg_pool(x, out, planes, g);
}
extern "C" __global__ void avg_pool_bf16(const bf16* x, bf16* out, long long planes, Window g) {
    avg_pool(x, out, planes, g);
}

extern "C" __global__ void avg_pool_grad_f32(const float* dy, float* dx, long long planes, Window g) {
    avg_pool_grad(dy, dx, planes, g);
}
extern "C" __global__ void avg_pool_grad_f16(const f16* dy, f16* dx, long long planes, Window g) {
    avg_pool_grad(dy, dx, planes, g);
}
extern "C" __global__ void avg_pool_grad_bf16(const bf16* dy, bf16* dx, long long planes, Window g) {
    avg_pool_grad(dy, dx, planes, g);
}
