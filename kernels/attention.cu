// Fused attention, FlashAttention-2's tiling in plain FMA loops over f32
// shared-memory tiles (f32 compute for every storage type):
// - forward: one block per (query tile, b·h); it streams the key/value tiles
//   with the online softmax (running max m and sum l per row, accumulator
//   rescaled by exp(m_old − m_new)) and writes O and LSE = m + ln l;
// - row dots: D = rowsum(dO ∘ O), one thread per row;
// - backward, split so every gradient row has one writer (no atomics, fixed
//   summation order): dK and dV per key tile looping over the query tiles,
//   dQ per query tile looping over the key tiles. P = exp(S − LSE) is
//   recomputed tile by tile; dS = P ∘ (dP − D).
// Semantics are those of src/cpu/attention.rs: causal aligned top left
// (query i sees keys j ≤ i), key padding u8 [B, Tk] with 1 = padded, a row
// that sees no key gets O = 0 and LSE = +∞ (so its gradients are 0).
// Launch shapes: src/cuda/kernels.rs (Grid::Tiles over (row tiles, B·H)).
#include "common.cuh"

// Shapes, strides in elements (batch, head, row; the last stride is 1) and
// settings; g is the output gradient dO. Layout = AttnDims in
// src/cuda/kernels.rs.
struct AttnDims {
    long long q[3], k[3], v[3], o[3], g[3];
    int batch, heads, tq, tk, d, causal;
    float scale;
    int reserved;
};
static_assert(sizeof(AttnDims) == 152, "AttnDims must match its Rust twin");

// The harness compiles every kernel file into one translation unit: the
// helpers live in a namespace and the macros are undefined at the end.
namespace attn {

// 128 threads as 16 row groups × 8 column lanes. A thread owns rows
// ty·R .. ty·R + R − 1 of a tile and columns tx, tx + 8, ...: a warp then
// reads 4 rows (broadcast) and 8 consecutive columns of a tile, which the
// row padding below puts in distinct banks.
constexpr int THREADS = 128, TY = 16, TX = 8;

__device__ __forceinline__ float pos_inf() { return __int_as_float(0x7f800000); }

// Tile rows per head-dim bucket DM (the largest D the kernel takes): the
// biggest tiles whose f32 copies (rows padded to DM + 1 floats) keep each
// kernel's static shared memory under 48 KiB, the owned side (the rows a
// block accumulates) no smaller than the streamed side. Mirrored by the
// rows_per_block of the LAUNCH table (a test compares them).
template <int DM>
struct Tiles;
template <>
struct Tiles<32> {
    static constexpr int FWD_Q = 64, FWD_K = 64, DKV_Q = 32, DKV_K = 64, DQ_Q = 64, DQ_K = 32;
};
template <>
struct Tiles<64> {
    static constexpr int FWD_Q = 64, FWD_K = 32, DKV_Q = 32, DKV_K = 32, DQ_Q = 32, DQ_K = 32;
};
template <>
struct Tiles<128> {
    static constexpr int FWD_Q = 32, FWD_K = 16, DKV_Q = 16, DKV_K = 16, DQ_Q = 16, DQ_K = 16;
};

// Rows r0 .. r0 + ROWS − 1 of one (b, h) of a [B, H, T, D] operand (`src` at
// its row 0, `stride` between rows) times `mul`, as f32; rows from n on are 0.
template <int ROWS, int LD, class T>
__device__ __forceinline__ void load_rows(float (*dst)[LD], const T* src, long long stride, int r0, int n, int d,
                                          float mul) {
    for (int e = threadIdx.x; e < ROWS * d; e += THREADS) {
        int r = e / d, c = e - r * d;
        dst[r][c] = r < n ? to_f32(src[(r0 + r) * stride + c]) * mul : 0.0f;
    }
}

// Whether all n keys from p are padded (false without a mask). Every thread
// reads the same flags, so a block skips a tile as one.
__device__ __forceinline__ bool all_padded(const unsigned char* p, int n) {
    if (!p) return false;
    for (int c = 0; c < n; ++c)
        if (!p[c]) return false;
    return true;
}

// s[i][c] = Σ_x a[r0 + i][x] · b[tx + TX·c][x] over x < d: this thread's
// micro-tile of A Bᵀ.
template <int RM, int CN, int LD>
__device__ __forceinline__ void dot_tile(float (&s)[RM][CN], const float (*a)[LD], const float (*b)[LD], int r0,
                                         int tx, int d) {
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int c = 0; c < CN; ++c) s[i][c] = 0.0f;
    for (int x = 0; x < d; ++x) {
        float av[RM], bv[CN];
#pragma unroll
        for (int i = 0; i < RM; ++i) av[i] = a[r0 + i][x];
#pragma unroll
        for (int c = 0; c < CN; ++c) bv[c] = b[tx + TX * c][x];
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int c = 0; c < CN; ++c) s[i][c] += av[i] * bv[c];
    }
}

// Write this thread's rows r0 + i (< n) and columns tx + TX·c (< d) of an
// f32 accumulator, times `mul`, to rows `first + r0 + i` of `dst`.
template <int R, int DN, class T>
__device__ __forceinline__ void store_rows(T* dst, long long stride, int first, const float (&acc)[R][DN], int r0,
                                           int tx, int n, int d, float mul) {
#pragma unroll
    for (int i = 0; i < R; ++i) {
        if (r0 + i >= n) continue;
        T* row = dst + (first + r0 + i) * stride;
#pragma unroll
        for (int c = 0; c < DN; ++c)
            if (tx + TX * c < d) row[tx + TX * c] = from_f32<T>(acc[i][c] * mul);
    }
}

// ---- forward ----------------------------------------------------------------------
// Grid (query tiles, B·H). Per key tile: load K, V; S = (scale·Q) Kᵀ into
// ps; the online softmax turns ps into P, one thread per row; O = α·O + P V.
template <class T, int DM>
__device__ void forward(const T* q, const T* k, const T* v, const unsigned char* pad, T* o, float* lse,
                        const AttnDims& a) {
    constexpr int BR = Tiles<DM>::FWD_Q, BC = Tiles<DM>::FWD_K;
    constexpr int RM = BR / TY, CN = BC / TX, DN = DM / TX, LD = DM + 1;
    __shared__ float qs[BR][LD], ks[BC][LD], vs[BC][LD], ps[BR][BC + 1];
    __shared__ float row_m[BR], row_l[BR], row_a[BR];
    __shared__ int hidden[BC];  // key out of range or padded
    const int tid = threadIdx.x, ty = tid / TX, tx = tid % TX, d = a.d;
    const int bh = blockIdx.y, i0 = blockIdx.x * BR;
    if (bh >= a.batch * a.heads || i0 >= a.tq) return;  // the whole block, before any barrier
    const int b = bh / a.heads, h = bh % a.heads, nq = min(BR, a.tq - i0);
    const T* kb = k + b * a.k[0] + h * a.k[1];
    const T* vb = v + b * a.v[0] + h * a.v[1];
    const unsigned char* pb = pad ? pad + (long long)b * a.tk : nullptr;

    load_rows<BR>(qs, q + b * a.q[0] + h * a.q[1], a.q[2], i0, nq, d, a.scale);
    for (int r = tid; r < BR; r += THREADS) {
        row_m[r] = HR_NEG_INF;
        row_l[r] = 0.0f;
    }
    float acc[RM][DN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int c = 0; c < DN; ++c) acc[i][c] = 0.0f;
    __syncthreads();  // row_m, row_l set (read at the end even with no key tile)

    const int kend = a.causal ? min(a.tk, i0 + nq) : a.tk;
    for (int j0 = 0; j0 < kend; j0 += BC) {
        const int nk = min(BC, a.tk - j0);
        if (all_padded(pb ? pb + j0 : nullptr, nk)) continue;  // adds nothing
        __syncthreads();  // the previous tile's ks, vs, ps are read
        load_rows<BC>(ks, kb, a.k[2], j0, nk, d, 1.0f);
        load_rows<BC>(vs, vb, a.v[2], j0, nk, d, 1.0f);
        for (int c = tid; c < BC; c += THREADS) hidden[c] = c >= nk || (pb && pb[j0 + c]);
        __syncthreads();  // K, V, flags loaded

        float s[RM][CN];
        dot_tile(s, qs, ks, ty * RM, tx, d);
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int c = 0; c < CN; ++c) ps[ty * RM + i][tx + TX * c] = s[i][c];
        __syncthreads();  // the score tile is whole

        for (int r = tid; r < BR; r += THREADS) {
            const int last = a.causal ? i0 + r - j0 : BC;  // columns c ≤ last are causally visible
            float mx = HR_NEG_INF;
            for (int c = 0; c < BC; ++c)
                if (c <= last && !hidden[c]) mx = fmaxf(mx, ps[r][c]);
            const float m_old = row_m[r], m_new = fmaxf(m_old, mx);
            // A row past the end, or with nothing visible yet, keeps O = 0.
            const bool live = r < nq && m_new != HR_NEG_INF;
            const float alpha = live ? expf(m_old - m_new) : 1.0f;
            float sum = 0.0f;
            for (int c = 0; c < BC; ++c) {
                const float p = live && c <= last && !hidden[c] ? expf(ps[r][c] - m_new) : 0.0f;
                ps[r][c] = p;
                sum += p;
            }
            if (live) {
                row_l[r] = row_l[r] * alpha + sum;
                row_m[r] = m_new;
            }
            row_a[r] = alpha;
        }
        __syncthreads();  // P and α are ready

#pragma unroll
        for (int i = 0; i < RM; ++i) {
            const float al = row_a[ty * RM + i];
#pragma unroll
            for (int c = 0; c < DN; ++c) acc[i][c] *= al;
        }
        for (int j = 0; j < nk; ++j) {
            float pv[RM], vv[DN];
#pragma unroll
            for (int i = 0; i < RM; ++i) pv[i] = ps[ty * RM + i][j];
#pragma unroll
            for (int c = 0; c < DN; ++c) vv[c] = vs[j][tx + TX * c];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int c = 0; c < DN; ++c) acc[i][c] += pv[i] * vv[c];
        }
    }

    // row_m and row_l were last written before a barrier.
    for (int r = tid; r < nq; r += THREADS)
        lse[(long long)bh * a.tq + i0 + r] = row_l[r] > 0.0f ? row_m[r] + logf(row_l[r]) : pos_inf();
    T* ob = o + b * a.o[0] + h * a.o[1];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int r = ty * RM + i;
        if (r >= nq) continue;
        const float l = row_l[r], inv = l > 0.0f ? 1.0f / l : 0.0f;
        T* row = ob + (i0 + r) * a.o[2];
#pragma unroll
        for (int c = 0; c < DN; ++c)
            if (tx + TX * c < d) row[tx + TX * c] = from_f32<T>(acc[i][c] * inv);
    }
}

// ---- D = rowsum(dO ∘ O) ---------------------------------------------------------------
// Grid (ceil(Tq / 128), B·H), 128 threads: one thread per query row, summing
// in order. O(Tq·D) work next to the backward's O(Tq·Tk·D), so plain loads
// (each thread walks its own row; the lines stay in L1) and no shuffles.
constexpr int ROW_DOTS_ROWS = 128;

template <class T>
__device__ void row_dots(const T* o, const T* go, float* dvec, const AttnDims& a) {
    const int bh = blockIdx.y, i = blockIdx.x * ROW_DOTS_ROWS + threadIdx.x;
    if (bh >= a.batch * a.heads || i >= a.tq) return;
    const int b = bh / a.heads, h = bh % a.heads;
    const T* orow = o + b * a.o[0] + h * a.o[1] + i * a.o[2];
    const T* grow = go + b * a.g[0] + h * a.g[1] + i * a.g[2];
    float s = 0.0f;
    for (int c = 0; c < a.d; ++c) s += to_f32(orow[c]) * to_f32(grow[c]);
    dvec[(long long)bh * a.tq + i] = s;
}

// ---- backward: dK and dV ------------------------------------------------------------
// Grid (key tiles, B·H). The block keeps its K and V tiles and the dK, dV
// accumulators (rows ty·RJ + i, columns tx + TX·c) and walks the query
// tiles that can see them, in order: S = (scale·Q) Kᵀ and dP = dO Vᵀ per
// thread micro-tile, P and dS into shared memory, then dV += Pᵀ dO and
// dK += dSᵀ (scale·Q). dK and dV are dense [B, H, Tk, D]; either may be null.
template <class T, int DM>
__device__ void backward_dkdv(const T* q, const T* k, const T* v, const T* go, const unsigned char* pad,
                              const float* lse, const float* dvec, T* dk, T* dv, const AttnDims& a) {
    constexpr int BR = Tiles<DM>::DKV_Q, BC = Tiles<DM>::DKV_K;
    constexpr int RM = BR / TY, CN = BC / TX, RJ = BC / TY, DN = DM / TX, LD = DM + 1;
    __shared__ float qs[BR][LD], gs[BR][LD], ks[BC][LD], vs[BC][LD], ps[BR][BC + 1], dss[BR][BC + 1];
    __shared__ float row_lse[BR], row_dvec[BR];
    const int tid = threadIdx.x, ty = tid / TX, tx = tid % TX, d = a.d;
    const int bh = blockIdx.y, j0 = blockIdx.x * BC;
    if (bh >= a.batch * a.heads || j0 >= a.tk) return;  // the whole block, before any barrier
    const int b = bh / a.heads, h = bh % a.heads, nk = min(BC, a.tk - j0);
    const T* qb = q + b * a.q[0] + h * a.q[1];
    const T* gb = go + b * a.g[0] + h * a.g[1];
    const unsigned char* pb = pad ? pad + (long long)b * a.tk : nullptr;
    float dka[RJ][DN], dva[RJ][DN];
#pragma unroll
    for (int i = 0; i < RJ; ++i)
#pragma unroll
        for (int c = 0; c < DN; ++c) dka[i][c] = dva[i][c] = 0.0f;
    // This thread's score columns: key out of range or padded.
    bool hid[CN];
#pragma unroll
    for (int c = 0; c < CN; ++c) hid[c] = tx + TX * c >= nk || (pb && pb[j0 + tx + TX * c]);

    if (!all_padded(pb ? pb + j0 : nullptr, nk)) {  // else no query sees these keys: 0
        load_rows<BC>(ks, k + b * a.k[0] + h * a.k[1], a.k[2], j0, nk, d, 1.0f);
        load_rows<BC>(vs, v + b * a.v[0] + h * a.v[1], a.v[2], j0, nk, d, 1.0f);
        // Under a causal mask only queries i ≥ j0 see these keys.
        for (int i0 = a.causal ? j0 / BR * BR : 0; i0 < a.tq; i0 += BR) {
            const int nq = min(BR, a.tq - i0);
            __syncthreads();  // the previous tile's qs, gs, ps, dss are read
            load_rows<BR>(qs, qb, a.q[2], i0, nq, d, a.scale);
            load_rows<BR>(gs, gb, a.g[2], i0, nq, d, 1.0f);
            for (int r = tid; r < BR; r += THREADS) {
                row_lse[r] = r < nq ? lse[(long long)bh * a.tq + i0 + r] : pos_inf();
                row_dvec[r] = r < nq ? dvec[(long long)bh * a.tq + i0 + r] : 0.0f;
            }
            __syncthreads();  // Q, dO, LSE, D loaded (and K, V the first time)

            float s[RM][CN], dp[RM][CN];
            dot_tile(s, qs, ks, ty * RM, tx, d);
            dot_tile(dp, gs, vs, ty * RM, tx, d);
#pragma unroll
            for (int i = 0; i < RM; ++i) {
                const int r = ty * RM + i;
#pragma unroll
                for (int c = 0; c < CN; ++c) {
                    const int j = tx + TX * c;
                    const bool vis = r < nq && !hid[c] && (!a.causal || j0 + j <= i0 + r);
                    const float p = vis ? expf(s[i][c] - row_lse[r]) : 0.0f;
                    ps[r][j] = p;
                    dss[r][j] = p * (dp[i][c] - row_dvec[r]);
                }
            }
            __syncthreads();  // P and dS are whole

            for (int x = 0; x < nq; ++x) {
                float pv[RJ], dsv[RJ], gv[DN], qv[DN];
#pragma unroll
                for (int i = 0; i < RJ; ++i) {
                    pv[i] = ps[x][ty * RJ + i];
                    dsv[i] = dss[x][ty * RJ + i];
                }
#pragma unroll
                for (int c = 0; c < DN; ++c) {
                    gv[c] = gs[x][tx + TX * c];
                    qv[c] = qs[x][tx + TX * c];
                }
#pragma unroll
                for (int i = 0; i < RJ; ++i)
#pragma unroll
                    for (int c = 0; c < DN; ++c) {
                        dva[i][c] += pv[i] * gv[c];
                        dka[i][c] += dsv[i] * qv[c];
                    }
            }
        }
    }
    const long long first = (long long)bh * a.tk + j0;  // dense rows
    if (dk) store_rows(dk + first * d, d, 0, dka, ty * RJ, tx, nk, d, 1.0f);
    if (dv) store_rows(dv + first * d, d, 0, dva, ty * RJ, tx, nk, d, 1.0f);
}

// ---- backward: dQ ------------------------------------------------------------------
// Grid (query tiles, B·H). The block keeps its Q and dO tiles and the dQ
// accumulator and walks the visible key tiles in order: S and dP per
// micro-tile, dS into shared memory, dQ += dS K; written times scale.
// dQ is dense [B, H, Tq, D].
template <class T, int DM>
__device__ void backward_dq(const T* q, const T* k, const T* v, const T* go, const unsigned char* pad,
                            const float* lse, const float* dvec, T* dq, const AttnDims& a) {
    constexpr int BR = Tiles<DM>::DQ_Q, BC = Tiles<DM>::DQ_K;
    constexpr int RM = BR / TY, CN = BC / TX, DN = DM / TX, LD = DM + 1;
    __shared__ float qs[BR][LD], gs[BR][LD], ks[BC][LD], vs[BC][LD], dss[BR][BC + 1];
    __shared__ float row_lse[BR], row_dvec[BR];
    __shared__ int hidden[BC];  // key out of range or padded
    const int tid = threadIdx.x, ty = tid / TX, tx = tid % TX, d = a.d;
    const int bh = blockIdx.y, i0 = blockIdx.x * BR;
    if (bh >= a.batch * a.heads || i0 >= a.tq) return;  // the whole block, before any barrier
    const int b = bh / a.heads, h = bh % a.heads, nq = min(BR, a.tq - i0);
    const T* kb = k + b * a.k[0] + h * a.k[1];
    const T* vb = v + b * a.v[0] + h * a.v[1];
    const unsigned char* pb = pad ? pad + (long long)b * a.tk : nullptr;

    load_rows<BR>(qs, q + b * a.q[0] + h * a.q[1], a.q[2], i0, nq, d, a.scale);
    load_rows<BR>(gs, go + b * a.g[0] + h * a.g[1], a.g[2], i0, nq, d, 1.0f);
    for (int r = tid; r < BR; r += THREADS) {
        row_lse[r] = r < nq ? lse[(long long)bh * a.tq + i0 + r] : pos_inf();
        row_dvec[r] = r < nq ? dvec[(long long)bh * a.tq + i0 + r] : 0.0f;
    }
    float acc[RM][DN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int c = 0; c < DN; ++c) acc[i][c] = 0.0f;

    const int kend = a.causal ? min(a.tk, i0 + nq) : a.tk;
    for (int j0 = 0; j0 < kend; j0 += BC) {
        const int nk = min(BC, a.tk - j0);
        if (all_padded(pb ? pb + j0 : nullptr, nk)) continue;  // adds nothing
        __syncthreads();  // the previous tile's ks, dss are read
        load_rows<BC>(ks, kb, a.k[2], j0, nk, d, 1.0f);
        load_rows<BC>(vs, vb, a.v[2], j0, nk, d, 1.0f);
        for (int c = tid; c < BC; c += THREADS) hidden[c] = c >= nk || (pb && pb[j0 + c]);
        __syncthreads();  // K, V, flags loaded (and Q, dO, LSE, D the first time)

        float s[RM][CN], dp[RM][CN];
        dot_tile(s, qs, ks, ty * RM, tx, d);
        dot_tile(dp, gs, vs, ty * RM, tx, d);
#pragma unroll
        for (int i = 0; i < RM; ++i) {
            const int r = ty * RM + i;
#pragma unroll
            for (int c = 0; c < CN; ++c) {
                const int j = tx + TX * c;
                const bool vis = r < nq && !hidden[j] && (!a.causal || j0 + j <= i0 + r);
                const float p = vis ? expf(s[i][c] - row_lse[r]) : 0.0f;
                dss[r][j] = p * (dp[i][c] - row_dvec[r]);
            }
        }
        __syncthreads();  // dS is whole

        for (int j = 0; j < nk; ++j) {
            float dsv[RM], kv[DN];
#pragma unroll
            for (int i = 0; i < RM; ++i) dsv[i] = dss[ty * RM + i][j];
#pragma unroll
            for (int c = 0; c < DN; ++c) kv[c] = ks[j][tx + TX * c];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int c = 0; c < DN; ++c) acc[i][c] += dsv[i] * kv[c];
        }
    }
    store_rows(dq + (long long)bh * a.tq * d, d, i0, acc, ty * RM, tx, nq, d, a.scale);
}

}  // namespace attn

// ---- entry points: storage type × head-dim bucket (D ≤ 32, 64, 128) ---------------------
#define FWD_ARGS(T) const T *q, const T *k, const T *v, const unsigned char *pad, T *o, float *lse, AttnDims a
#define BWD_IN(T) \
    const T *q, const T *k, const T *v, const T *go, const unsigned char *pad, const float *lse, const float *dvec
#define DKV_ARGS(T) BWD_IN(T), T *dk, T *dv, AttnDims a
#define DQ_ARGS(T) BWD_IN(T), T *dq, AttnDims a

extern "C" __global__ void attention_fwd_d32_f32(FWD_ARGS(float)) {
    attn::forward<float, 32>(q, k, v, pad, o, lse, a);
}
extern "C" __global__ void attention_fwd_d64_f32(FWD_ARGS(float)) {
    attn::forward<float, 64>(q, k, v, pad, o, lse, a);
}
extern "C" __global__ void attention_fwd_d128_f32(FWD_ARGS(float)) {
    attn::forward<float, 128>(q, k, v, pad, o, lse, a);
}
extern "C" __global__ void attention_fwd_d32_f16(FWD_ARGS(f16)) {
    attn::forward<f16, 32>(q, k, v, pad, o, lse, a);
}
extern "C" __global__ void attention_fwd_d64_f16(FWD_ARGS(f16)) {
    attn::forward<f16, 64>(q, k, v, pad, o, lse, a);
}
extern "C" __global__ void attention_fwd_d128_f16(FWD_ARGS(f16)) {
    attn::forward<f16, 128>(q, k, v, pad, o, lse, a);
}
extern "C" __global__ void attention_fwd_d32_bf16(FWD_ARGS(bf16)) {
    attn::forward<bf16, 32>(q, k, v, pad, o, lse, a);
}
extern "C" __global__ void attention_fwd_d64_bf16(FWD_ARGS(bf16)) {
    attn::forward<bf16, 64>(q, k, v, pad, o, lse, a);
}
extern "C" __global__ void attention_fwd_d128_bf16(FWD_ARGS(bf16)) {
    attn::forward<bf16, 128>(q, k, v, pad, o, lse, a);
}

extern "C" __global__ void attention_row_dots_f32(const float* o, const float* go, float* dvec, AttnDims a) {
    attn::row_dots(o, go, dvec, a);
}
extern "C" __global__ void attention_row_dots_f16(const f16* o, const f16* go, float* dvec, AttnDims a) {
    attn::row_dots(o, go, dvec, a);
}
extern "C" __global__ void attention_row_dots_bf16(const bf16* o, const bf16* go, float* dvec, AttnDims a) {
    attn::row_dots(o, go, dvec, a);
}

extern "C" __global__ void attention_bwd_dkdv_d32_f32(DKV_ARGS(float)) {
    attn::backward_dkdv<float, 32>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}
extern "C" __global__ void attention_bwd_dkdv_d64_f32(DKV_ARGS(float)) {
    attn::backward_dkdv<float, 64>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}
extern "C" __global__ void attention_bwd_dkdv_d128_f32(DKV_ARGS(float)) {
    attn::backward_dkdv<float, 128>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}
extern "C" __global__ void attention_bwd_dkdv_d32_f16(DKV_ARGS(f16)) {
    attn::backward_dkdv<f16, 32>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}
extern "C" __global__ void attention_bwd_dkdv_d64_f16(DKV_ARGS(f16)) {
    attn::backward_dkdv<f16, 64>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}
extern "C" __global__ void attention_bwd_dkdv_d128_f16(DKV_ARGS(f16)) {
    attn::backward_dkdv<f16, 128>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}
extern "C" __global__ void attention_bwd_dkdv_d32_bf16(DKV_ARGS(bf16)) {
    attn::backward_dkdv<bf16, 32>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}
extern "C" __global__ void attention_bwd_dkdv_d64_bf16(DKV_ARGS(bf16)) {
    attn::backward_dkdv<bf16, 64>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}
extern "C" __global__ void attention_bwd_dkdv_d128_bf16(DKV_ARGS(bf16)) {
    attn::backward_dkdv<bf16, 128>(q, k, v, go, pad, lse, dvec, dk, dv, a);
}

extern "C" __global__ void attention_bwd_dq_d32_f32(DQ_ARGS(float)) {
    attn::backward_dq<float, 32>(q, k, v, go, pad, lse, dvec, dq, a);
}
extern "C" __global__ void attention_bwd_dq_d64_f32(DQ_ARGS(float)) {
    attn::backward_dq<float, 64>(q, k, v, go, pad, lse, dvec, dq, a);
}
extern "C" __global__ void attention_bwd_dq_d128_f32(DQ_ARGS(float)) {
    attn::backward_dq<float, 128>(q, k, v, go, pad, lse, dvec, dq, a);
}
extern "C" __global__ void attention_bwd_dq_d32_f16(DQ_ARGS(f16)) {
    attn::backward_dq<f16, 32>(q, k, v, go, pad, lse, dvec, dq, a);
}
extern "C" __global__ void attention_bwd_dq_d64_f16(DQ_ARGS(f16)) {
    attn::backward_dq<f16, 64>(q, k, v, go, pad, lse, dvec, dq, a);
}
extern "C" __global__ void attention_bwd_dq_d128_f16(DQ_ARGS(f16)) {
    attn::backward_dq<f16, 128>(q, k, v, go, pad, lse, dvec, dq, a);
}
extern "C" __global__ void attention_bwd_dq_d32_bf16(DQ_ARGS(bf16)) {
    attn::backward_dq<bf16, 32>(q, k, v, go, pad, lse, dvec, dq, a);
}
extern "C" __global__ void attention_bwd_dq_d64_bf16(DQ_ARGS(bf16)) {
    attn::backward_dq<bf16, 64>(q, k, v, go, pad, lse, dvec, dq, a);
}
extern "C" __global__ void attention_bwd_dq_d128_bf16(DQ_ARGS(bf16)) {
    attn::backward_dq<bf16, 128>(q, k, v, go, pad, lse, dvec, dq, a);
}

#undef FWD_ARGS
#undef DKV_ARGS
#undef DQ_ARGS
#undef BWD_IN
