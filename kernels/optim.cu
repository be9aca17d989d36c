// Optimizer kernels over many tensors in one launch: fused AdamW, and the
// sum of squares behind clip_grad_norm's global norm. The tensors come as a
// device array of structs (the layouts below = AdamTensor and NormTensor in
// src/cuda/kernels.rs). Tensor i is cut into chunks of `chunk` elements,
// one block each; its first chunk's block is `first_block`, so block b
// finds its tensor by binary search and its chunk as b − first_block.
#include "common.cuh"

// One parameter tensor of an AdamW launch (56 bytes). f32 param, m and v;
// grad in the kernel's storage type. step_size = lr / (1 − β1^t) and
// bias2_sqrt = sqrt(1 − β2^t) are per tensor: each parameter counts its
// own steps, as src/optim.rs does.
struct AdamTensor {
    float* param;
    const void* grad;
    float* m;
    float* v;
    long long numel;
    long long first_block;
    float step_size;
    float bias2_sqrt;
};
static_assert(sizeof(AdamTensor) == 56, "AdamTensor must match its Rust twin");

// One tensor of a sum-of-squares launch (24 bytes).
struct NormTensor {
    const void* data;
    long long numel;
    long long first_block;
};
static_assert(sizeof(NormTensor) == 24, "NormTensor must match its Rust twin");

// The last entry whose first_block <= b (entries without blocks drop out).
template <class E>
__device__ __forceinline__ int table_entry(const E* table, int count, long long b) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (table[mid].first_block <= b) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// AdamW exactly as src/cpu/optim.rs, operation by operation:
//   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g·g;
//   p = p·decay − step_size·m / (sqrt(v)/bias2_sqrt + eps).
// The _rn intrinsics keep the compiler from fusing a multiply and an add
// into an FMA, so a GPU step rounds like the CPU step: same bits.
template <class G>
__device__ void adamw(const AdamTensor* table, int count, long long chunk, float beta1, float omb1, float beta2,
                      float omb2, float eps, float decay) {
    const AdamTensor t = table[table_entry(table, count, blockIdx.x)];
    const G* g = static_cast<const G*>(t.grad);
    long long i0 = (blockIdx.x - t.first_block) * chunk, i1 = min(i0 + chunk, t.numel);
    for (long long i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        float gv = to_f32(g[i]);
        float m = __fadd_rn(__fmul_rn(beta1, t.m[i]), __fmul_rn(omb1, gv));
        float v = __fadd_rn(__fmul_rn(beta2, t.v[i]), __fmul_rn(__fmul_rn(omb2, gv), gv));
        float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), t.bias2_sqrt), eps);
        t.param[i] = __fsub_rn(__fmul_rn(t.param[i], decay), __fdiv_rn(__fmul_rn(t.step_size, m), den));
        t.m[i] = m;
        t.v[i] = v;
    }
}

// Pass 1: partial[b] = Σ x² over block b's chunk (f32 within the chunk).
template <class T>
__device__ void sum_squares_partial(const NormTensor* table, int count, long long chunk, float* partial) {
    __shared__ float scratch[32];
    const NormTensor t = table[table_entry(table, count, blockIdx.x)];
    const T* x = static_cast<const T*>(t.data);
    long long i0 = (blockIdx.x - t.first_block) * chunk, i1 = min(i0 + chunk, t.numel);
    float s = 0.0f;
    for (long long i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        float v = to_f32(x[i]);
        s += v * v;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// ---- entry points ---------------------------------------------------------------
// Kernels are named by the gradients' storage type.
extern "C" __global__ void adamw_f32(const AdamTensor* table, int count, long long chunk, float beta1, float omb1,
                                     float beta2, float omb2, float eps, float decay) {
    adamw<float>(table, count, chunk, beta1, omb1, beta2, omb2, eps, decay);
}
extern "C" __global__ void adamw_f16(const AdamTensor* table, int count, long long chunk, float beta1, float omb1,
                                     float beta2, float omb2, float eps, float decay) {
    adamw<f16>(table, count, chunk, beta1, omb1, beta2, omb2, eps, decay);
}
extern "C" __global__ void adamw_bf16(const AdamTensor* table, int count, long long chunk, float beta1, float omb1,
                                      float beta2, float omb2, float eps, float decay) {
    adamw<bf16>(table, count, chunk, beta1, omb1, beta2, omb2, eps, decay);
}

extern "C" __global__ void sum_squares_f32(const NormTensor* table, int count, long long chunk, float* partial) {
    sum_squares_partial<float>(table, count, chunk, partial);
}
extern "C" __global__ void sum_squares_f16(const NormTensor* table, int count, long long chunk, float* partial) {
    sum_squares_partial<f16>(table, count, chunk, partial);
}
extern "C" __global__ void sum_squares_bf16(const NormTensor* table, int count, long long chunk, float* partial) {
    sum_squares_partial<bf16>(table, count, chunk, partial);
}

// Pass 2, one block: norm[0] = sqrt(Σ partial) in f64, in a fixed order
// (every launch of pass 1 writes its own range of `partial` first).
extern "C" __global__ void grad_norm(const float* partial, long long blocks, double* norm) {
    __shared__ double scratch[32];
    double s = 0.0;
    for (long long b = threadIdx.x; b < blocks; b += blockDim.x) s += (double)partial[b];
    s = block_total(s, scratch);
    if (threadIdx.x == 0) norm[0] = sqrt(s);
}
