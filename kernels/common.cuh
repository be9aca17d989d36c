// Shared device helpers: f32 compute over f32/f16/bf16 storage, paired
// (vectorised) loads, warp and block reductions. Included by every kernel
// file; compiles under NVRTC and under the CPU harness (g++).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Dynamic shared memory, under one name in every file so the harness can
// provide it as one buffer.
extern __shared__ __align__(16) unsigned char hr_smem[];

typedef __half f16;
typedef __nv_bfloat16 bf16;

#define HR_NEG_INF __int_as_float(0xff800000)

// ---- storage <-> f32 -----------------------------------------------------------
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round to the storage type (to nearest even, as the CPU backend does).
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// ---- pairs: elements 2k and 2k+1 in one load or store ----------------------------
// Only on pointers aligned to two elements (check with aligned2).
template <class T>
__device__ __forceinline__ bool aligned2(const T* p) {
    return reinterpret_cast<unsigned long long>(p) % (2 * sizeof(T)) == 0;
}
__device__ __forceinline__ float2 load2(const float* p, long long k) { return reinterpret_cast<const float2*>(p)[k]; }
__device__ __forceinline__ float2 load2(const __half* p, long long k) {
    return __half22float2(reinterpret_cast<const __half2*>(p)[k]);
}
__device__ __forceinline__ float2 load2(const __nv_bfloat16* p, long long k) {
    return __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(p)[k]);
}
__device__ __forceinline__ void store2(float* p, long long k, float2 v) { reinterpret_cast<float2*>(p)[k] = v; }
__device__ __forceinline__ void store2(__half* p, long long k, float2 v) {
    reinterpret_cast<__half2*>(p)[k] = __floats2half2_rn(v.x, v.y);
}
__device__ __forceinline__ void store2(__nv_bfloat16* p, long long k, float2 v) {
    reinterpret_cast<__nv_bfloat162*>(p)[k] = __floats2bfloat162_rn(v.x, v.y);
}

// ---- grid-stride loops -------------------------------------------------------------
__device__ __forceinline__ long long global_thread() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long grid_threads() { return (long long)gridDim.x * blockDim.x; }

// y[i] = f(x[i]) for dense x and y (y may be x); pairs when all pointers allow.
template <class I, class O, class F>
__device__ __forceinline__ void map1(const I* x, O* y, long long n, F f) {
    long long t = global_thread(), step = grid_threads();
    if (aligned2(x) && aligned2(y)) {
        for (long long k = t; k < n / 2; k += step) {
            float2 v = load2(x, k);
            store2(y, k, make_float2(f(v.x), f(v.y)));
        }
        if (t == 0 && (n & 1)) y[n - 1] = from_f32<O>(f(to_f32(x[n - 1])));
    } else {
        for (long long i = t; i < n; i += step) y[i] = from_f32<O>(f(to_f32(x[i])));
    }
}

// y[i] = f(a[i], b[i]) for dense a, b and y.
template <class T, class F>
__device__ __forceinline__ void map2(const T* a, const T* b, T* y, long long n, F f) {
    long long t = global_thread(), step = grid_threads();
    if (aligned2(a) && aligned2(b) && aligned2(y)) {
        for (long long k = t; k < n / 2; k += step) {
            float2 u = load2(a, k), v = load2(b, k);
            store2(y, k, make_float2(f(u.x, v.x), f(u.y, v.y)));
        }
        if (t == 0 && (n & 1)) y[n - 1] = from_f32<T>(f(to_f32(a[n - 1]), to_f32(b[n - 1])));
    } else {
        for (long long i = t; i < n; i += step) y[i] = from_f32<T>(f(to_f32(a[i]), to_f32(b[i])));
    }
}

// ---- reductions ----------------------------------------------------------------------
// Over the full warp: every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Over the block (blockDim.x a multiple of 32, blockDim.y == blockDim.z == 1):
// every thread gets the result. `scratch` is 32 floats of shared memory,
// free again when this returns.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = MAX ? warp_max(v) : warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();  // partials written
    v = lane < warps ? scratch[lane] : (MAX ? HR_NEG_INF : 0.0f);
    v = MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();  // partials read: scratch may be reused
    return v;
}
__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce<false>(v, scratch); }
__device__ __forceinline__ float block_max(float v, float* scratch) { return block_reduce<true>(v, scratch); }

// Sum over the block of any shuffle-able type (double, int): every thread
// gets the result. `scratch` is 32 values of shared memory, free again when
// this returns. The tree is fixed, so the result is too.
template <class V>
__device__ __forceinline__ V block_total(V v, V* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();  // warp totals written
    v = lane < warps ? scratch[lane] : V(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();  // warp totals read
    return v;
}

