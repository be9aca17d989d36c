// Embedding: rows of a [V, D] table picked by i32 ids, and the adjoint, a
// scatter-add of the output gradient into [V, D] that is deterministic and
// sums repeated ids in position order, as src/cpu/index.rs does.
//
// The backward sorts the positions by (id, position) with merge passes
// (each a plain parallel kernel: an element's place in the merged run is its
// place in its own run plus its rank in the other, found by binary search;
// keys are unique, so the result is the one sorted order), then one block
// per vocabulary row finds its bucket by binary search and adds the bucket's
// gradient rows in order. No atomics, no inter-block waiting. Launch shapes
// and the workspace rule: src/cuda/kernels.rs.
#include "common.cuh"

// out[k, :] = w[ids[k], :], one block per position k. An id outside [0, V)
// gives a row of zeros and the smallest such k in *bad (when bad is not
// null; the caller sets it to INT_MAX first).
template <class T>
__device__ void emb_forward(const T* w, const int* ids, T* out, int* bad, long long vocab, long long dim) {
    long long k = blockIdx.x;
    int id = ids[k];
    bool ok = id >= 0 && id < vocab;
    if (!ok && bad && threadIdx.x == 0) atomicMin(bad, (int)k);  // min: the same k whatever the order
    for (long long j = threadIdx.x; j < dim; j += blockDim.x)
        out[k * dim + j] = ok ? w[(long long)id * dim + j] : from_f32<T>(0.0f);
}

// Position a comes before b: by id, then by position.
__device__ __forceinline__ bool emb_before(const int* ids, int a, int b) {
    int ia = ids[a], ib = ids[b];
    return ia < ib || (ia == ib && a < b);
}

// The q-th key of the input (null input: the identity, runs of one).
__device__ __forceinline__ int emb_key(const int* in, long long q) { return in ? in[q] : (int)q; }

// How many keys of the sorted range in[lo, hi) come before `key`.
__device__ __forceinline__ long long emb_rank(const int* ids, const int* in, long long lo, long long hi, int key) {
    long long a = lo, b = hi;
    while (a < b) {
        long long mid = (a + b) / 2;
        if (emb_before(ids, emb_key(in, mid), key)) a = mid + 1;
        else b = mid;
    }
    return a - lo;
}

// One merge pass: `in` holds sorted runs of `run` keys (the last may be
// short); out gets sorted runs of 2·run. Every key moves exactly once.
extern "C" __global__ void embedding_sort_pass(const int* ids, const int* in, int* out, long long n, long long run) {
    for (long long i = global_thread(); i < n; i += grid_threads()) {
        int key = emb_key(in, i);
        long long start = i / (2 * run) * (2 * run);
        long long mid = min(start + run, n), end = min(start + 2 * run, n);
        long long at = i < mid ? (i - start) + emb_rank(ids, in, mid, end, key)
                               : (i - mid) + emb_rank(ids, in, start, mid, key);
        out[start + at] = key;
    }
}

// dw[j, :] = Σ dy[k, :] over the positions k with ids[k] == j, in increasing
// k, f32 accumulation; one block per vocabulary row j. `order` is the
// positions sorted by (id, position).
template <class T>
__device__ void emb_backward(const T* dy, const int* ids, const int* order, T* dw, long long n, long long dim) {
    int j = blockIdx.x;
    // Bucket j is [lo, hi): the first sorted position with id >= j, and >= j + 1.
    long long lo = 0, hi = n;
    while (lo < hi) {
        long long mid = (lo + hi) / 2;
        if (ids[order[mid]] < j) lo = mid + 1;
        else hi = mid;
    }
    long long end = lo;
    hi = n;
    while (end < hi) {
        long long mid = (end + hi) / 2;
        if (ids[order[mid]] <= j) end = mid + 1;
        else hi = mid;
    }
    for (long long c = threadIdx.x; c < dim; c += blockDim.x) {
        float acc = 0.0f;
        for (long long p = lo; p < end; ++p) acc += to_f32(dy[(long long)order[p] * dim + c]);
        dw[(long long)j * dim + c] = from_f32<T>(acc);
    }
}

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void embedding_f32(const float* w, const int* ids, float* out, int* bad, long long vocab,
                                         long long dim) {
    emb_forward(w, ids, out, bad, vocab, dim);
}
extern "C" __global__ void embedding_f16(const f16* w, const int* ids, f16* out, int* bad, long long vocab,
                                         long long dim) {
    emb_forward(w, ids, out, bad, vocab, dim);
}
extern "C" __global__ void embedding_bf16(const bf16* w, const int* ids, bf16* out, int* bad, long long vocab,
                                          long long dim) {
    emb_forward(w, ids, out, bad, vocab, dim);
}

extern "C" __global__ void embedding_backward_f32(const float* dy, const int* ids, const int* order, float* dw,
                                                  long long n, long long dim) {
    emb_backward(dy, ids, order, dw, n, dim);
}
extern "C" __global__ void embedding_backward_f16(const f16* dy, const int* ids, const int* order, f16* dw,
                                                  long long n, long long dim) {
    emb_backward(dy, ids, order, dw, n, dim);
}
extern "C" __global__ void embedding_backward_bf16(const bf16* dy, const int* ids, const int* order, bf16* dw,
                                                   long long n, long long dim) {
    emb_backward(dy, ids, order, dw, n, dim);
}
