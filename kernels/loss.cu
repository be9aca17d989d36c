// Cross-entropy of logits [N, C] against i32 targets [N], log-softmax fused
// in, as src/cpu/loss.rs: the target distribution is (1 − ε)·onehot + ε/C,
// rows whose target is ignore_index add nothing, the loss is the mean over
// the other rows (0 if there are none). Three kernels: per-row losses and
// log-sum-exp (one block per row), their mean (one block, f64, fixed
// order), and the backward, which rebuilds softmax from logits and lse.
// Launch shapes and the workspace rule: src/cuda/kernels.rs.
#include "common.cuh"

__device__ __forceinline__ bool ce_ignored(int t, int ignore, int has_ignore) { return has_ignore && t == ignore; }

// lse[r] = log Σ exp(x[r, :]); row_loss[r] = lse − (1−ε)·x[r, t] − ε·mean(x[r, :])
// (0 for an ignored row). A target outside [0, C) that is not ignored gives
// a NaN loss and the smallest such row in *bad (when bad is not null; the
// caller sets it to INT_MAX first). With `cache` the row sits in dynamic
// shared memory (cols * 4 bytes), each thread reading only its own columns.
template <class T>
__device__ void ce_forward(const T* x, const int* targets, float* lse, float* row_loss, int* bad, long long cols,
                           int ignore, int has_ignore, float smoothing, int cache) {
    __shared__ float scratch[32];
    float* saved = reinterpret_cast<float*>(hr_smem);
    long long r = blockIdx.x;
    const T* xr = x + r * cols;
    float m = HR_NEG_INF;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = to_f32(xr[j]);
        if (cache) saved[j] = v;
        m = fmaxf(m, v);
    }
    m = block_max(m, scratch);
    float z = 0.0f, s = 0.0f;
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float v = cache ? saved[j] : to_f32(xr[j]);
        z += expf(v - m);
        s += v;
    }
    z = block_sum(z, scratch);
    if (smoothing != 0.0f) s = block_sum(s, scratch);  // a kernel argument: uniform
    if (threadIdx.x == 0) {
        float l = m + logf(z);
        int t = targets[r];
        float loss = 0.0f;
        if (!ce_ignored(t, ignore, has_ignore)) {
            if (t < 0 || t >= cols) {
                loss = __int_as_float(0x7fc00000);  // NaN: the mean shows it too
                if (bad) atomicMin(bad, (int)r);    // min: the same row whatever the order
            } else {
                float smooth = smoothing == 0.0f ? 0.0f : s / (float)cols;
                loss = l - (1.0f - smoothing) * to_f32(xr[t]) - smoothing * smooth;
            }
        }
        lse[r] = l;
        row_loss[r] = loss;
    }
}

// One block: out[0] = Σ row_loss / count over the rows not ignored (0 when
// count is 0), summed in f64 like the CPU; *count is kept for the backward.
template <class T>
__device__ void ce_mean(const int* targets, const float* row_loss, T* out, int* count, long long rows, int ignore,
                        int has_ignore) {
    __shared__ double dscratch[32];
    __shared__ int iscratch[32];
    double s = 0.0;
    int c = 0;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
        if (ce_ignored(targets[r], ignore, has_ignore)) continue;
        s += (double)row_loss[r];
        ++c;
    }
    s = block_total(s, dscratch);
    c = block_total(c, iscratch);
    if (threadIdx.x == 0) {
        out[0] = from_f32<T>(c == 0 ? 0.0f : (float)(s / (double)c));
        *count = c;
    }
}

// dx[r, j] = (dloss / count)·(exp(x[r, j] − lse[r]) − q_j), 0 on ignored rows;
// dloss (the loss's gradient, one value) and count are read on the device.
template <class T>
__device__ void ce_backward(const T* x, const int* targets, const float* lse, const T* dloss, const int* count, T* dx,
                            long long cols, int ignore, int has_ignore, float smoothing) {
    long long r = blockIdx.x;
    int t = targets[r], c = *count;
    bool ign = ce_ignored(t, ignore, has_ignore);
    float scale = c == 0 ? 0.0f : to_f32(dloss[0]) / (float)c, l = lse[r];
    for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
        float q = smoothing / (float)cols + (j == t ? 1.0f - smoothing : 0.0f);
        dx[r * cols + j] = from_f32<T>(ign ? 0.0f : scale * (expf(to_f32(x[r * cols + j]) - l) - q));
    }
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void cross_entropy_f32(const float* x, const int* targets, float* lse, float* row_loss, int* bad,
                                             long long cols, int ignore, int has_ignore, float smoothing, int cache) {
    ce_forward(x, targets, lse, row_loss, bad, cols, ignore, has_ignore, smoothing, cache);
}
extern "C" __global__ void cross_entropy_f16(const f16* x, const int* targets, float* lse, float* row_loss, int* bad,
                                             long long cols, int ignore, int has_ignore, float smoothing, int cache) {
    ce_forward(x, targets, lse, row_loss, bad, cols, ignore, has_ignore, smoothing, cache);
}
extern "C" __global__ void cross_entropy_bf16(const bf16* x, const int* targets, float* lse, float* row_loss, int* bad,
                                              long long cols, int ignore, int has_ignore, float smoothing, int cache) {
    ce_forward(x, targets, lse, row_loss, bad, cols, ignore, has_ignore, smoothing, cache);
}

extern "C" __global__ void cross_entropy_mean_f32(const int* targets, const float* row_loss, float* out, int* count,
                                                  long long rows, int ignore, int has_ignore) {
    ce_mean(targets, row_loss, out, count, rows, ignore, has_ignore);
}
extern "C" __global__ void cross_entropy_mean_f16(const int* targets, const float* row_loss, f16* out, int* count,
                                                  long long rows, int ignore, int has_ignore) {
    ce_mean(targets, row_loss, out, count, rows, ignore, has_ignore);
}
extern "C" __global__ void cross_entropy_mean_bf16(const int* targets, const float* row_loss, bf16* out, int* count,
                                                   long long rows, int ignore, int has_ignore) {
    ce_mean(targets, row_loss, out, count, rows, ignore, has_ignore);
}

extern "C" __global__ void cross_entropy_backward_f32(const float* x, const int* targets, const float* lse,
                                                      const float* dloss, const int* count, float* dx, long long cols,
                                                      int ignore, int has_ignore, float smoothing) {
    ce_backward(x, targets, lse, dloss, count, dx, cols, ignore, has_ignore, smoothing);
}
extern "C" __global__ void cross_entropy_backward_f16(const f16* x, const int* targets, const float* lse,
                                                      const f16* dloss, const int* count, f16* dx, long long cols,
                                                      int ignore, int has_ignore, float smoothing) {
    ce_backward(x, targets, lse, dloss, count, dx, cols, ignore, has_ignore, smoothing);
}
extern "C" __global__ void cross_entropy_backward_bf16(const bf16* x, const int* targets, const float* lse,
                                                       const bf16* dloss, const int* count, bf16* dx, long long cols,
                                                       int ignore, int has_ignore, float smoothing) {
    ce_backward(x, targets, lse, dloss, count, dx, cols, ignore, has_ignore, smoothing);
}
