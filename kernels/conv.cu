// The non-GEMM parts of a tiled im2col convolution, as src/cpu/conv.rs: a GPU
// conv pass is these kernels and cuBLAS GEMMs on the CPU's tiles, in the
// CPU's workspace (cpu::conv::workspace, same layout). Per sample and tile
// of n output positions p0 .. p0 + n, with K = C*kd*kh*kw:
//   forward: im2col -> col [K, n] f32; GEMM W*col -> [O, n] f32 (for f32
//            storage straight into small); conv_tile_out adds the bias and
//            rounds into small[b, :, p0 ..].
//   adjoint: conv_tile_in widens the small tile (half storage); GEMM
//            W^T*s -> dcol [K, n]; col2im adds dcol into acc [C, big] f32;
//            after the last tile conv_tile_out (+ bias) writes big.
//   weight:  im2col; conv_tile_in; one GEMM per 64-position chunk into dW.
// For half storage the weight is widened once (conv_tile_in) into the
// workspace. Plus the bias gradient. 1-d and 2-d convs are 3-d with size-1
// dims. Launch shapes: src/cuda/kernels.rs.
#include "common.cuh"
#include "window.cuh"

// col[k, j] = x[c, in(p0 + j, k)] (0 in the padding) for one sample x [C, big].
template <class T>
__device__ void im2col(const T* x, float* col, Window g, ConvTile t) {
    int kvol = win_kvol(g);
    long long blen = win_big_len(g), total = (long long)g.c * kvol * t.n;
    for (long long idx = global_thread(); idx < total; idx += grid_threads()) {
        int k = (int)(idx / t.n), j = (int)(idx % t.n);
        int kk[3], o[3];
        win_decode(k % kvol, g.k, kk);
        win_decode(t.p0 + j, g.small, o);
        int id = win_src(g, 0, o[0], kk[0]), ih = win_src(g, 1, o[1], kk[1]), iw = win_src(g, 2, o[2], kk[2]);
        float v = 0.0f;
        if (id >= 0 && ih >= 0 && iw >= 0) v = to_f32(x[k / kvol * blen + (id * g.big[1] + ih) * g.big[2] + iw]);
        col[idx] = v;
    }
}

// The first output coordinate along dim d that kernel offset a maps to input
// i, or -1. Offsets taken from k-1 down to 0 give output coordinates in
// increasing order.
__device__ __forceinline__ int conv_out_coord(const Window& g, int d, int i, int a) {
    int v = i + g.pad[d] - a * g.dil[d];
    if (v < 0 || v % g.stride[d]) return -1;
    v /= g.stride[d];
    return v < g.small[d] ? v : -1;
}

// The adjoint of im2col: acc[c, i] += col[(c, r), p - p0] for every output
// position p of the tile whose kernel offset r reaches input i. One thread
// per input element of the tile's box gathers its terms in increasing p
// (each p reaches i through at most one r): the order in which the CPU's
// col2im scatters them, so the f32 sums are the CPU's, bit for bit.
__device__ void col2im(const float* col, float* acc, Window g, ConvTile t) {
    int kvol = win_kvol(g);
    long long blen = win_big_len(g), box = (long long)t.len[0] * t.len[1] * t.len[2];
    for (long long idx = global_thread(); idx < g.c * box; idx += grid_threads()) {
        int c = (int)(idx / box), b[3];
        win_decode((int)(idx % box), t.len, b);
        int id = t.lo[0] + b[0], ih = t.lo[1] + b[1], iw = t.lo[2] + b[2];
        float* a = acc + c * blen + (id * g.big[1] + ih) * g.big[2] + iw;
        const float* rows = col + (long long)c * kvol * t.n;
        float v = *a;
        for (int ka = g.k[0] - 1; ka >= 0; --ka) {
            int od = conv_out_coord(g, 0, id, ka);
            if (od < 0) continue;
            for (int kb = g.k[1] - 1; kb >= 0; --kb) {
                int oh = conv_out_coord(g, 1, ih, kb);
                if (oh < 0) continue;
                for (int ke = g.k[2] - 1; ke >= 0; --ke) {
                    int ow = conv_out_coord(g, 2, iw, ke);
                    if (ow < 0) continue;
                    int j = (od * g.small[1] + oh) * g.small[2] + ow - t.p0;
                    if (j >= 0 && j < t.n) v += rows[(long long)((ka * g.k[1] + kb) * g.k[2] + ke) * t.n + j];
                }
            }
        }
        *a = v;
    }
}

// dst[r, j] = src[r, j] widened to f32, for a [rows, n] tile; row strides
// lds, ldd in elements.
template <class T>
__device__ void conv_tile_in(const T* src, long long lds, float* dst, long long ldd, long long rows, long long n) {
    for (long long i = global_thread(); i < rows * n; i += grid_threads()) {
        long long r = i / n, j = i % n;
        dst[r * ldd + j] = to_f32(src[r * lds + j]);
    }
}

// dst[r, j] = src[r, j] + bias[r] (bias may be null), rounded to the storage
// type. src may be dst (f32 storage, in place).
template <class T>
__device__ void conv_tile_out(const float* src, long long lds, T* dst, long long ldd, long long rows, long long n,
                              const T* bias) {
    for (long long i = global_thread(); i < rows * n; i += grid_threads()) {
        long long r = i / n, j = i % n;
        float v = src[r * lds + j];
        if (bias) v += to_f32(bias[r]);
        dst[r * ldd + j] = from_f32<T>(v);
    }
}

// out[c] = sum over b and s of dy[b, c, s]: one block per channel, f32 tree sum.
template <class T>
__device__ void conv_bias_grad(const T* dy, T* out, long long batch, long long channels, long long spatial) {
    __shared__ float scratch[32];
    long long c = blockIdx.x;
    float acc = 0.0f;
    for (long long i = threadIdx.x; i < batch * spatial; i += blockDim.x)
        acc += to_f32(dy[(i / spatial * channels + c) * spatial + i % spatial]);
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) out[c] = from_f32<T>(acc);
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void im2col_f32(const float* x, float* col, Window g, ConvTile t) { im2col(x, col, g, t); }
extern "C" __global__ void im2col_f16(const f16* x, float* col, Window g, ConvTile t) { im2col(x, col, g, t); }
extern "C" __global__ void im2col_bf16(const bf16* x, float* col, Window g, ConvTile t) { im2col(x, col, g, t); }

// f32 only: the column tile and the accumulator are f32 for every storage type.
extern "C" __global__ void col2im_f32(const float* col, float* acc, Window g, ConvTile t) { col2im(col, acc, g, t); }

extern "C" __global__ void conv_tile_in_f32(const float* src, long long lds, float* dst, long long ldd, long long rows,
                                            long long n) {
    conv_tile_in(src, lds, dst, ldd, rows, n);
}
extern "C" __global__ void conv_tile_in_f16(const f16* src, long long lds, float* dst, long long ldd, long long rows,
                                            long long n) {
    conv_tile_in(src, lds, dst, ldd, rows, n);
}
extern "C" __global__ void conv_tile_in_bf16(const bf16* src, long long lds, float* dst, long long ldd, long long rows,
                                             long long n) {
    conv_tile_in(src, lds, dst, ldd, rows, n);
}

extern "C" __global__ void conv_tile_out_f32(const float* src, long long lds, float* dst, long long ldd, long long rows,
                                             long long n, const float* bias) {
    conv_tile_out(src, lds, dst, ldd, rows, n, bias);
}
extern "C" __global__ void conv_tile_out_f16(const float* src, long long lds, f16* dst, long long ldd, long long rows,
                                             long long n, const f16* bias) {
    conv_tile_out(src, lds, dst, ldd, rows, n, bias);
}
extern "C" __global__ void conv_tile_out_bf16(const float* src, long long lds, bf16* dst, long long ldd,
                                              long long rows, long long n, const bf16* bias) {
    conv_tile_out(src, lds, dst, ldd, rows, n, bias);
}

extern "C" __global__ void conv_bias_grad_f32(const float* dy, float* out, long long batch, long long channels,
                                              long long spatial) {
    conv_bias_grad(dy, out, batch, channels, spatial);
}
extern "C" __global__ void conv_bias_grad_f16(const f16* dy, f16* out, long long batch, long long channels,
                                              long long spatial) {
    conv_bias_grad(dy, out, batch, channels, spatial);
}
extern "C" __global__ void conv_bias_grad_bf16(const bf16* dy, bf16* out, long long batch, long long channels,
                                               long long spatial) {
    conv_bias_grad(dy, out, batch, channels, spatial);
}
