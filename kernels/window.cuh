// Sliding-window geometry shared by pool.cu and conv.cu: one 3-d shape
// (1-d and 2-d windows are 3-d with size-1 dims), as src/cpu/pool.rs and
// src/cpu/conv.rs see it. Passed by value; layouts = Window and ConvTile in
// src/cuda/kernels.rs (sizes asserted on both sides).
#pragma once

struct Window {
    int c, o;      // channels of big / small (the convolutions; 0 for the pools)
    int big[3];    // spatial size of big: the regular conv's or the pool's input
    int small[3];  // spatial size of small: its output
    int k[3], stride[3], pad[3], dil[3];
};
static_assert(sizeof(Window) == 80, "Window must match its Rust twin");

// A tile of output positions p0 .. p0 + n of one sample, and the box of
// input coordinates it can touch ([lo, lo + len) per dim; col2im's domain).
struct ConvTile {
    int p0, n;
    int lo[3], len[3];
};
static_assert(sizeof(ConvTile) == 32, "ConvTile must match its Rust twin");

__device__ __forceinline__ int win_big_len(const Window& g) { return g.big[0] * g.big[1] * g.big[2]; }
__device__ __forceinline__ int win_small_len(const Window& g) { return g.small[0] * g.small[1] * g.small[2]; }
__device__ __forceinline__ int win_kvol(const Window& g) { return g.k[0] * g.k[1] * g.k[2]; }

// Flat index i within a [n0, n1, n2] volume as coordinates.
__device__ __forceinline__ void win_decode(int i, const int* n, int* out) {
    out[2] = i % n[2];
    i /= n[2];
    out[1] = i % n[1];
    out[0] = i / n[1];
}

// Input coordinate along dim d of output coordinate o and kernel offset a,
// or -1 in the padding.
__device__ __forceinline__ int win_src(const Window& g, int d, int o, int a) {
    int i = o * g.stride[d] + a * g.dil[d] - g.pad[d];
    return i >= 0 && i < g.big[d] ? i : -1;
}
