// The LSTM cell's pointwise part, forward and backward, as src/cpu/lstm.rs
// (`forward`, `backward`): the matmuls x*W_ih^T and h*W_hh^T come from
// cuBLAS; these kernels add the biases, apply the gate nonlinearities
// (PyTorch's order i, f, g, o) and update the cell. One thread per (row, j)
// of [B, H] reads its four gates: [B, 4H] rows hold i, f, g, o blocks of H.
// Launch shapes: src/cuda/kernels.rs.
#include "common.cuh"

__device__ __forceinline__ float lstm_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// In: gates = x*W_ih^T, gh = h*W_hh^T (null: already added into gates),
// biases b_ih, b_hh [4H] (each may be null), c [B, H]. Out: gates holds the
// activated gates, h_out = o*tanh(c'), c_out = c' = f*c + i*g.
template <class T>
__device__ void lstm_cell(T* gates, const T* gh, const T* b_ih, const T* b_hh, const T* c, T* h_out, T* c_out,
                          long long batch, int hidden) {
    long long h4 = 4LL * hidden;
    for (long long k = global_thread(); k < batch * hidden; k += grid_threads()) {
        long long r = k / hidden;
        int j = (int)(k % hidden);
        T* gr = gates + r * h4;
        float v[4];
        for (int q = 0; q < 4; ++q) {
            int at = q * hidden + j;
            // The CPU's order: x part, h part, b_ih, b_hh (absent ones add 0).
            float pre = to_f32(gr[at]) + (gh ? to_f32(gh[r * h4 + at]) : 0.0f);
            pre = pre + (b_ih ? to_f32(b_ih[at]) : 0.0f) + (b_hh ? to_f32(b_hh[at]) : 0.0f);
            v[q] = q == 2 ? tanhf(pre) : lstm_sigmoid(pre);
        }
        float cn = v[1] * to_f32(c[k]) + v[0] * v[2];
        c_out[k] = from_f32<T>(cn);
        h_out[k] = from_f32<T>(v[3] * tanhf(cn));
        for (int q = 0; q < 4; ++q) gr[q * hidden + j] = from_f32<T>(v[q]);
    }
}

// From the activated gates, the previous cell state c and the output
// gradients dh, dc (null = 0): dgates [B, 4H] (pre-activation gradients) and
// dc_prev [B, H] (may be null). tanh(c') is recomputed from gates and c.
template <class T>
__device__ void lstm_cell_grad(const T* gates, const T* c, const T* dh, const T* dc, T* dgates, T* dc_prev,
                               long long batch, int hidden) {
    long long h4 = 4LL * hidden;
    for (long long k = global_thread(); k < batch * hidden; k += grid_threads()) {
        long long r = k / hidden;
        int j = (int)(k % hidden);
        const T* gr = gates + r * h4;
        float i = to_f32(gr[j]), f = to_f32(gr[hidden + j]), g = to_f32(gr[2 * hidden + j]),
              o = to_f32(gr[3 * hidden + j]);
        float cp = to_f32(c[k]);
        float tc = tanhf(f * cp + i * g);
        float dhv = dh ? to_f32(dh[k]) : 0.0f;
        float dct = dhv * o * (1.0f - tc * tc) + (dc ? to_f32(dc[k]) : 0.0f);
        T* dg = dgates + r * h4;
        dg[j] = from_f32<T>(dct * g * i * (1.0f - i));
        dg[hidden + j] = from_f32<T>(dct * cp * f * (1.0f - f));
        dg[2 * hidden + j] = from_f32<T>(dct * i * (1.0f - g * g));
        dg[3 * hidden + j] = from_f32<T>(dhv * tc * o * (1.0f - o));
        if (dc_prev) dc_prev[k] = from_f32<T>(dct * f);
    }
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void lstm_cell_f32(float* gates, const float* gh, const float* b_ih, const float* b_hh,
    const float* c, float* h_out, float* c_out, long long batch, int hidden) {
    lstm_cell(gates, gh, b_ih, b_hh, c, h_out, c_out, batch, hidden);
}
extern "C" __global__ void lstm_cell_f16(f16* gates, const f16* gh, const f16* b_ih, const f16* b_hh,
    const f16* c, f16* h_out, f16* c_out, long long batch, int hidden) {
    lstm_cell(gates, gh, b_ih, b_hh, c, h_out, c_out, batch, hidden);
}
extern "C" __global__ void lstm_cell_bf16(bf16* gates, const bf16* gh, const bf16* b_ih, const bf16* b_hh,
    const bf16* c, bf16* h_out, bf16* c_out, long long batch, int hidden) {
    lstm_cell(gates, gh, b_ih, b_hh, c, h_out, c_out, batch, hidden);
}
extern "C" __global__ void lstm_cell_grad_f32(const float* gates, const float* c, const float* dh, const float* dc,
    float* dgates, float* dc_prev, long long batch, int hidden) {
    lstm_cell_grad(gates, c, dh, dc, dgates, dc_prev, batch, hidden);
}
extern "C" __global__ void lstm_cell_grad_f16(const f16* gates, const f16* c, const f16* dh, const f16* dc,
    f16* dgates, f16* dc_prev, long long batch, int hidden) {
    lstm_cell_grad(gates, c, dh, dc, dgates, dc_prev, batch, hidden);
}
extern "C" __global__ void lstm_cell_grad_bf16(const bf16* gates, const bf16* c, const bf16* dh, const bf16* dc,
    bf16* dgates, bf16* dc_prev, long long batch, int hidden) {
    lstm_cell_grad(gates, c, dh, dc, dgates, dc_prev, batch, hidden);
}
