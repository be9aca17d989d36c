// CTC loss forward and backward, as src/cpu/ctc.rs: log-space alpha/beta
// (f32) over log_probs [T, B, C] and padded i32 targets [B, S]. The extended
// label of sample b is l' = (blank, l1, blank, ..., blank), L = 2*S_b + 1
// states. One block per sample; its threads stride over the states, one
// time step per round, with __syncthreads between steps (step t reads step
// t-1's neighbours). Alpha and beta live in a global workspace the planner
// counts (cuda::kernels::ctc_workspace, the CPU op's sizes). Every output is
// written by one thread, in the CPU's order: deterministic, no atomics.
// Launch shapes: src/cuda/kernels.rs.
#include "common.cuh"

#define CTC_INF (-HR_NEG_INF)

// log(exp(a) + exp(b)), exact for -inf operands.
__device__ __forceinline__ float ctc_lse(float a, float b) {
    if (a == HR_NEG_INF) return b;
    if (b == HR_NEG_INF) return a;
    return fmaxf(a, b) + log1pf(expf(-fabsf(a - b)));
}

// One sample's view of the problem.
struct CtcSample {
    const int* tg;  // its targets (S_max columns, the first `sl` used)
    int tl, sl, len, blank;
    __device__ __forceinline__ int label(int s) const { return s % 2 == 0 ? blank : tg[s / 2]; }
    // May a path skip from state s - 2 to s (distinct non-blank labels)?
    __device__ __forceinline__ bool skip(int s) const { return s >= 2 && s % 2 == 1 && tg[s / 2] != tg[s / 2 - 1]; }
};

__device__ __forceinline__ CtcSample ctc_sample(const int* targets, const int* input_lengths,
                                                const int* target_lengths, int s_max, int blank) {
    int b = blockIdx.x;
    CtcSample p;
    p.tg = targets + (long long)b * s_max;
    p.tl = input_lengths[b];
    p.sl = target_lengths[b];
    p.len = 2 * p.sl + 1;
    p.blank = blank;
    return p;
}

// log_probs[t, b, c] as f32.
template <class T>
__device__ __forceinline__ float ctc_lp(const T* lp, int t, int batch, int classes, int c) {
    return to_f32(lp[((long long)t * batch + blockIdx.x) * classes + c]);
}

// alpha row 0: the path starts with blank or the first label.
template <class T>
__device__ void ctc_alpha_init(const T* lp, const CtcSample& p, int batch, int classes, float* row) {
    for (int s = threadIdx.x; s < p.len; s += blockDim.x)
        row[s] = s < 2 ? ctc_lp(lp, 0, batch, classes, p.label(s)) : HR_NEG_INF;
}

// alpha row t from row t-1 (the CPU's order: stay, step, skip).
template <class T>
__device__ void ctc_alpha_step(const T* lp, const CtcSample& p, int t, int batch, int classes, const float* prev,
                           float* cur) {
    for (int s = threadIdx.x; s < p.len; s += blockDim.x) {
        float a = prev[s];
        if (s >= 1) a = ctc_lse(a, prev[s - 1]);
        if (p.skip(s)) a = ctc_lse(a, prev[s - 2]);
        cur[s] = a + ctc_lp(lp, t, batch, classes, p.label(s));
    }
}

// Each sample's -log p (+inf when no alignment exists; 0 then with
// zero_infinity). ws: two alpha rows of 2*S_max + 1 per sample.
template <class T>
__device__ void ctc_forward(const T* lp, const int* targets, const int* input_lengths, const int* target_lengths,
                            int batch, int classes, int s_max, int blank, int zero_infinity, float* nll, float* ws) {
    CtcSample p = ctc_sample(targets, input_lengths, target_lengths, s_max, blank);
    int ext = 2 * s_max + 1;
    float n;
    if (p.tl == 0) {
        n = p.len == 1 ? 0.0f : CTC_INF;
    } else {
        float* prev = ws + (long long)blockIdx.x * 2 * ext;
        float* cur = prev + ext;
        ctc_alpha_init(lp, p, batch, classes, prev);
        __syncthreads();  // row 0 written
        for (int t = 1; t < p.tl; ++t) {
            ctc_alpha_step(lp, p, t, batch, classes, prev, cur);
            __syncthreads();  // row t written, row t-1 read: it may be overwritten next
            float* w = prev;
            prev = cur;
            cur = w;
        }
        n = -(p.len > 1 ? ctc_lse(prev[p.len - 1], prev[p.len - 2]) : prev[0]);
    }
    if (zero_infinity && (n == CTC_INF || n == HR_NEG_INF)) n = 0.0f;
    if (threadIdx.x == 0) nll[blockIdx.x] = n;
}

// loss = mean over the batch of nll[b] / max(S_b, 1) (PyTorch's 'mean').
// One block; a fixed-shape tree sum in f32.
template <class T>
__device__ void ctc_mean(const float* nll, const int* target_lengths, T* loss, int batch) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (int b = threadIdx.x; b < batch; b += blockDim.x) acc += nll[b] / (float)max(target_lengths[b], 1);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) loss[0] = from_f32<T>(acc / (float)batch);
}

// grad[t, b, c] = -scale * posterior_t(c) for t < T_b (0 elsewhere, and for
// a sample whose nll is not finite), scale = g / (B * max(S_b, 1)), g the
// loss's incoming gradient (a device scalar). ws: alpha and beta of every
// frame, 2 * T * (2*S_max + 1) f32 per sample; chain: 2 * max(S_max, 1) i32
// per sample (for each target position the next one with the same label,
// and whether it is the first of its label).
template <class T>
__device__ void ctc_backward(const T* lp, const int* targets, const int* input_lengths, const int* target_lengths,
                             int frames, int batch, int classes, int s_max, int blank, const float* nll, const T* gout,
                             T* grad, float* ws, int* chain) {
    CtcSample p = ctc_sample(targets, input_lengths, target_lengths, s_max, blank);
    int b = blockIdx.x, ext = 2 * s_max + 1;
    int* next = chain + (long long)b * 2 * max(s_max, 1);
    int* first = next + s_max;
    for (int j = threadIdx.x; j < p.sl; j += blockDim.x) {
        int nx = -1, fst = 1;
        for (int k = p.sl - 1; k > j; --k)
            if (p.tg[k] == p.tg[j]) nx = k;
        for (int k = 0; k < j; ++k)
            if (p.tg[k] == p.tg[j]) fst = 0;
        next[j] = nx;
        first[j] = fst;
    }
    // Zero this sample's rows; the posteriors below overwrite some entries.
    for (long long i = threadIdx.x; i < (long long)frames * classes; i += blockDim.x)
        grad[((i / classes) * batch + b) * classes + i % classes] = from_f32<T>(0.0f);
    float n = nll[b];
    if (p.tl == 0 || !(n - n == 0.0f)) return;  // the whole block: tl and n are the sample's
    __syncthreads();  // chain written, zeros written before the posteriors
    float* alpha = ws + (long long)b * 2 * frames * ext;
    float* beta = alpha + (long long)frames * ext;
    ctc_alpha_init(lp, p, batch, classes, alpha);
    __syncthreads();
    for (int t = 1; t < p.tl; ++t) {
        ctc_alpha_step(lp, p, t, batch, classes, alpha + (long long)(t - 1) * ext, alpha + (long long)t * ext);
        __syncthreads();
    }
    float* last = beta + (long long)(p.tl - 1) * ext;
    for (int s = threadIdx.x; s < p.len; s += blockDim.x)
        last[s] = s >= p.len - 2 ? ctc_lp(lp, p.tl - 1, batch, classes, p.label(s)) : HR_NEG_INF;
    __syncthreads();
    for (int t = p.tl - 2; t >= 0; --t) {
        const float* nx = beta + (long long)(t + 1) * ext;
        float* cur = beta + (long long)t * ext;
        for (int s = threadIdx.x; s < p.len; s += blockDim.x) {
            float v = nx[s];
            if (s + 1 < p.len) v = ctc_lse(v, nx[s + 1]);
            if (s + 2 < p.len && p.skip(s + 2)) v = ctc_lse(v, nx[s + 2]);
            cur[s] = v + ctc_lp(lp, t, batch, classes, p.label(s));
        }
        __syncthreads();
    }
    // Posteriors: one item per (frame, target position), plus one per frame
    // for blank; a label's states are summed by the first position holding
    // it, along the chain, in order of position (as the CPU).
    float scale = -to_f32(gout[0]) / ((float)batch * (float)max(p.sl, 1));
    int per = p.sl + 1;
    for (int item = threadIdx.x; item < p.tl * per; item += blockDim.x) {
        int t = item / per, j = item % per;
        const float* a = alpha + (long long)t * ext;
        const float* be = beta + (long long)t * ext;
        T* out = grad + ((long long)t * batch + b) * classes;
        if (j == p.sl) {
            float lpb = ctc_lp(lp, t, batch, classes, blank), acc = 0.0f;
            for (int k = 0; k <= p.sl; ++k) acc += expf(a[2 * k] + be[2 * k] - lpb + n);
            out[blank] = from_f32<T>(scale * acc);
        } else if (first[j]) {
            int c = p.tg[j];
            float lpc = ctc_lp(lp, t, batch, classes, c), acc = 0.0f;
            for (int k = j; k >= 0; k = next[k]) acc += expf(a[2 * k + 1] + be[2 * k + 1] - lpc + n);
            out[c] = from_f32<T>(scale * acc);
        }
    }
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void ctc_forward_f32(const float* lp, const int* targets, const int* input_lengths,
                                           const int* target_lengths, int batch, int classes, int s_max, int blank,
                                           int zero_infinity, float* nll, float* ws) {
    ctc_forward(lp, targets, input_lengths, target_lengths, batch, classes, s_max, blank, zero_infinity, nll, ws);
}
extern "C" __global__ void ctc_forward_f16(const f16* lp, const int* targets, const int* input_lengths,
                                           const int* target_lengths, int batch, int classes, int s_max, int blank,
                                           int zero_infinity, float* nll, float* ws) {
    ctc_forward(lp, targets, input_lengths, target_lengths, batch, classes, s_max, blank, zero_infinity, nll, ws);
}
extern "C" __global__ void ctc_forward_bf16(const bf16* lp, const int* targets, const int* input_lengths,
                                            const int* target_lengths, int batch, int classes, int s_max, int blank,
                                            int zero_infinity, float* nll, float* ws) {
    ctc_forward(lp, targets, input_lengths, target_lengths, batch, classes, s_max, blank, zero_infinity, nll, ws);
}

extern "C" __global__ void ctc_mean_f32(const float* nll, const int* target_lengths, float* loss, int batch) {
    ctc_mean(nll, target_lengths, loss, batch);
}
extern "C" __global__ void ctc_mean_f16(const float* nll, const int* target_lengths, f16* loss, int batch) {
    ctc_mean(nll, target_lengths, loss, batch);
}
extern "C" __global__ void ctc_mean_bf16(const float* nll, const int* target_lengths, bf16* loss, int batch) {
    ctc_mean(nll, target_lengths, loss, batch);
}

extern "C" __global__ void ctc_backward_f32(const float* lp, const int* targets, const int* input_lengths,
                                            const int* target_lengths, int frames, int batch, int classes, int s_max,
                                            int blank, const float* nll, const float* gout, float* grad, float* ws,
                                            int* chain) {
    ctc_backward(lp, targets, input_lengths, target_lengths, frames, batch, classes, s_max, blank, nll, gout, grad, ws,
                 chain);
}
extern "C" __global__ void ctc_backward_f16(const f16* lp, const int* targets, const int* input_lengths,
                                            const int* target_lengths, int frames, int batch, int classes, int s_max,
                                            int blank, const float* nll, const f16* gout, f16* grad, float* ws,
                                            int* chain) {
    ctc_backward(lp, targets, input_lengths, target_lengths, frames, batch, classes, s_max, blank, nll, gout, grad, ws,
                 chain);
}
extern "C" __global__ void ctc_backward_bf16(const bf16* lp, const int* targets, const int* input_lengths,
                                             const int* target_lengths, int frames, int batch, int classes, int s_max,
                                             int blank, const float* nll, const bf16* gout, bf16* grad, float* ws,
                                             int* chain) {
    ctc_backward(lp, targets, input_lengths, target_lengths, frames, batch, classes, s_max, blank, nll, gout, grad, ws,
                 chain);
}
