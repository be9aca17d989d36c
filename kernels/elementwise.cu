// Elementwise kernels: broadcast binary arithmetic over strided inputs, a
// dense fast path, unary activations forward and backward, dtype casts and
// in-place scaling. Compute in f32 for every storage type; the formulas are
// those of src/ops/elementwise.rs. Launch shapes: src/cuda/kernels.rs.
#include "common.cuh"

// Op codes: must match BinaryOp and UnaryOp in src/cuda/kernels.rs.
enum BinaryOp { ADD = 0, SUB = 1, MUL = 2, DIV = 3 };
enum UnaryOp { NEG = 0, EXP = 1, LOG = 2, SQRT = 3, RELU = 4, GELU = 5, SILU = 6, TANH = 7, SIGMOID = 8 };

// Output shape and each input's strides in elements (0 where broadcast),
// rank <= 6; passed by value. Layout = Broadcast in src/cuda/kernels.rs.
struct Broadcast {
    long long shape[6];
    long long a[6];
    long long b[6];
    int rank;
    int pad;
};
static_assert(sizeof(Broadcast) == 152, "Broadcast must match its Rust twin");

template <int OP>
struct Binary {
    __device__ __forceinline__ float operator()(float x, float y) const {
        if (OP == ADD) return x + y;
        if (OP == SUB) return x - y;
        if (OP == MUL) return x * y;
        return x / y;
    }
};

#define HR_INV_SQRT2 0.70710678118654752f
#define HR_INV_SQRT_2PI 0.39894228040143268f

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

template <int OP>
struct Unary {
    __device__ __forceinline__ float operator()(float x) const {
        switch (OP) {
            case NEG: return -x;
            case EXP: return expf(x);
            case LOG: return logf(x);
            case SQRT: return sqrtf(x);
            case RELU: return fmaxf(x, 0.0f);
            case GELU: return 0.5f * x * (1.0f + erff(x * HR_INV_SQRT2));
            case SILU: return x * sigmoidf(x);
            case TANH: return tanhf(x);
            default: return sigmoidf(x);
        }
    }
};

// dx = f'(v) * g, where v is the forward input for NEG, LOG, RELU, GELU, SILU
// and the forward output for EXP, SQRT, TANH, SIGMOID (what the op saves).
template <int OP>
struct UnaryGrad {
    __device__ __forceinline__ float operator()(float v, float g) const {
        switch (OP) {
            case NEG: return -g;
            case EXP: return v * g;
            case LOG: return (1.0f / v) * g;
            case SQRT: return (0.5f / v) * g;
            case RELU: return (v > 0.0f ? 1.0f : 0.0f) * g;
            case GELU:
                return (0.5f * (1.0f + erff(v * HR_INV_SQRT2)) + v * HR_INV_SQRT_2PI * expf(-0.5f * v * v)) * g;
            case SILU: {
                float s = sigmoidf(v);
                return s * (1.0f + v * (1.0f - s)) * g;
            }
            case TANH: return (1.0f - v * v) * g;
            default: return v * (1.0f - v) * g;
        }
    }
};

// out[i] = a[.] op b[.] for the i-th element of the output shape, one
// element per thread-iteration (strides rule out pairs).
template <class T, int OP>
__device__ void binary_strided(const T* a, const T* b, T* out, const Broadcast& bc, long long n) {
    Binary<OP> f;
    for (long long i = global_thread(); i < n; i += grid_threads()) {
        long long r = i, oa = 0, ob = 0;
        for (int d = bc.rank - 1; d >= 0; --d) {
            long long c = r % bc.shape[d];
            r /= bc.shape[d];
            oa += c * bc.a[d];
            ob += c * bc.b[d];
        }
        out[i] = from_f32<T>(f(to_f32(a[oa]), to_f32(b[ob])));
    }
}

template <class T>
__device__ void binary(const T* a, const T* b, T* out, const Broadcast& bc, long long n, int op) {
    switch (op) {
        case ADD: binary_strided<T, ADD>(a, b, out, bc, n); break;
        case SUB: binary_strided<T, SUB>(a, b, out, bc, n); break;
        case MUL: binary_strided<T, MUL>(a, b, out, bc, n); break;
        case DIV: binary_strided<T, DIV>(a, b, out, bc, n); break;
    }
}

template <class T>
__device__ void binary_dense(const T* a, const T* b, T* out, long long n, int op) {
    switch (op) {
        case ADD: map2(a, b, out, n, Binary<ADD>()); break;
        case SUB: map2(a, b, out, n, Binary<SUB>()); break;
        case MUL: map2(a, b, out, n, Binary<MUL>()); break;
        case DIV: map2(a, b, out, n, Binary<DIV>()); break;
    }
}

template <class T>
__device__ void unary(const T* x, T* y, long long n, int op) {
    switch (op) {
        case NEG: map1(x, y, n, Unary<NEG>()); break;
        case EXP: map1(x, y, n, Unary<EXP>()); break;
        case LOG: map1(x, y, n, Unary<LOG>()); break;
        case SQRT: map1(x, y, n, Unary<SQRT>()); break;
        case RELU: map1(x, y, n, Unary<RELU>()); break;
        case GELU: map1(x, y, n, Unary<GELU>()); break;
        case SILU: map1(x, y, n, Unary<SILU>()); break;
        case TANH: map1(x, y, n, Unary<TANH>()); break;
        case SIGMOID: map1(x, y, n, Unary<SIGMOID>()); break;
    }
}

template <class T>
__device__ void unary_grad(const T* v, const T* g, T* dx, long long n, int op) {
    switch (op) {
        case NEG: map2(v, g, dx, n, UnaryGrad<NEG>()); break;
        case EXP: map2(v, g, dx, n, UnaryGrad<EXP>()); break;
        case LOG: map2(v, g, dx, n, UnaryGrad<LOG>()); break;
        case SQRT: map2(v, g, dx, n, UnaryGrad<SQRT>()); break;
        case RELU: map2(v, g, dx, n, UnaryGrad<RELU>()); break;
        case GELU: map2(v, g, dx, n, UnaryGrad<GELU>()); break;
        case SILU: map2(v, g, dx, n, UnaryGrad<SILU>()); break;
        case TANH: map2(v, g, dx, n, UnaryGrad<TANH>()); break;
        case SIGMOID: map2(v, g, dx, n, UnaryGrad<SIGMOID>()); break;
    }
}

struct Identity {
    __device__ __forceinline__ float operator()(float x) const { return x; }
};
struct Scale {
    float s;
    __device__ __forceinline__ float operator()(float x) const { return x * s; }
};

// ---- entry points ---------------------------------------------------------------
extern "C" __global__ void binary_f32(const float* a, const float* b, float* out, Broadcast bc, long long n, int op) {
    binary(a, b, out, bc, n, op);
}
extern "C" __global__ void binary_f16(const f16* a, const f16* b, f16* out, Broadcast bc, long long n, int op) {
    binary(a, b, out, bc, n, op);
}
extern "C" __global__ void binary_bf16(const bf16* a, const bf16* b, bf16* out, Broadcast bc, long long n, int op) {
    binary(a, b, out, bc, n, op);
}

extern "C" __global__ void binary_dense_f32(const float* a, const float* b, float* out, long long n, int op) {
    binary_dense(a, b, out, n, op);
}
extern "C" __global__ void binary_dense_f16(const f16* a, const f16* b, f16* out, long long n, int op) {
    binary_dense(a, b, out, n, op);
}
extern "C" __global__ void binary_dense_bf16(const bf16* a, const bf16* b, bf16* out, long long n, int op) {
    binary_dense(a, b, out, n, op);
}

extern "C" __global__ void unary_f32(const float* x, float* y, long long n, int op) { unary(x, y, n, op); }
extern "C" __global__ void unary_f16(const f16* x, f16* y, long long n, int op) { unary(x, y, n, op); }
extern "C" __global__ void unary_bf16(const bf16* x, bf16* y, long long n, int op) { unary(x, y, n, op); }

extern "C" __global__ void unary_grad_f32(const float* v, const float* g, float* dx, long long n, int op) {
    unary_grad(v, g, dx, n, op);
}
extern "C" __global__ void unary_grad_f16(const f16* v, const f16* g, f16* dx, long long n, int op) {
    unary_grad(v, g, dx, n, op);
}
extern "C" __global__ void unary_grad_bf16(const bf16* v, const bf16* g, bf16* dx, long long n, int op) {
    unary_grad(v, g, dx, n, op);
}

extern "C" __global__ void cast_f32_f16(const float* x, f16* y, long long n) { map1(x, y, n, Identity()); }
extern "C" __global__ void cast_f32_bf16(const float* x, bf16* y, long long n) { map1(x, y, n, Identity()); }
extern "C" __global__ void cast_f16_f32(const f16* x, float* y, long long n) { map1(x, y, n, Identity()); }
extern "C" __global__ void cast_bf16_f32(const bf16* x, float* y, long long n) { map1(x, y, n, Identity()); }
extern "C" __global__ void cast_f16_bf16(const f16* x, bf16* y, long long n) { map1(x, y, n, Identity()); }
extern "C" __global__ void cast_bf16_f16(const bf16* x, f16* y, long long n) { map1(x, y, n, Identity()); }

// x *= s in place.
extern "C" __global__ void scale_f32(float* x, long long n, float s) { map1(x, x, n, Scale{s}); }
extern "C" __global__ void scale_f16(f16* x, long long n, float s) { map1(x, x, n, Scale{s}); }
extern "C" __global__ void scale_bf16(bf16* x, long long n, float s) { map1(x, x, n, Scale{s}); }

// ---- strided copy and affine maps --------------------------------------------------

// Element i of shape: out[offset with strides bc.b] = src[offset with
// strides bc.a] (bc.b dense for a plain gather; strided to write into a
// view), any element type of the same width (a copy moves bits, not values).
template <class T>
__device__ void copy_strided(const T* src, T* out, const Broadcast& bc, long long n) {
    for (long long i = global_thread(); i < n; i += grid_threads()) {
        long long r = i, o = 0, w = 0;
        for (int d = bc.rank - 1; d >= 0; --d) {
            long long q = r % bc.shape[d];
            o += q * bc.a[d];
            w += q * bc.b[d];
            r /= bc.shape[d];
        }
        out[w] = src[o];
    }
}
extern "C" __global__ void copy_strided_b1(const unsigned char* s, unsigned char* o, Broadcast bc, long long n) {
    copy_strided(s, o, bc, n);
}
extern "C" __global__ void copy_strided_b2(const unsigned short* s, unsigned short* o, Broadcast bc, long long n) {
    copy_strided(s, o, bc, n);
}
extern "C" __global__ void copy_strided_b4(const unsigned int* s, unsigned int* o, Broadcast bc, long long n) {
    copy_strided(s, o, bc, n);
}

// y = x * a + b (the scalar ops: mul_scalar, add_scalar).
struct Affine {
    float a, b;
    __device__ __forceinline__ float operator()(float x) const { return x * a + b; }
};
extern "C" __global__ void affine_f32(const float* x, float* y, long long n, float a, float b) {
    map1(x, y, n, Affine{a, b});
}
extern "C" __global__ void affine_f16(const f16* x, f16* y, long long n, float a, float b) {
    map1(x, y, n, Affine{a, b});
}
extern "C" __global__ void affine_bf16(const bf16* x, bf16* y, long long n, float a, float b) {
    map1(x, y, n, Affine{a, b});
}

// ---- select (masked_fill, where_cond) -----------------------------------------------

// out[i] = cond[i] ? a[i] : b[i] over a broadcast shape, out dense: a and b
// read through bc.a and bc.b, the u8 cond through bcc.a; a null side is the
// scalar va or vb.
template <class T>
__device__ void select(const unsigned char* cond, const T* a, const T* b, T* out, const Broadcast& bc,
                       const Broadcast& bcc, long long n, float va, float vb) {
    for (long long i = global_thread(); i < n; i += grid_threads()) {
        long long r = i, oa = 0, ob = 0;
        for (int d = bc.rank - 1; d >= 0; --d) {
            long long q = r % bc.shape[d];
            oa += q * bc.a[d];
            ob += q * bc.b[d];
            r /= bc.shape[d];
        }
        long long rc = i, oc = 0;
        for (int d = bcc.rank - 1; d >= 0; --d) {
            oc += (rc % bcc.shape[d]) * bcc.a[d];
            rc /= bcc.shape[d];
        }
        out[i] = cond[oc] ? (a ? a[oa] : from_f32<T>(va)) : (b ? b[ob] : from_f32<T>(vb));
    }
}
extern "C" __global__ void select_f32(const unsigned char* c, const float* a, const float* b, float* out, Broadcast bc,
    Broadcast bcc, long long n, float va, float vb) {
    select(c, a, b, out, bc, bcc, n, va, vb);
}
extern "C" __global__ void select_f16(const unsigned char* c, const f16* a, const f16* b, f16* out, Broadcast bc,
    Broadcast bcc, long long n, float va, float vb) {
    select(c, a, b, out, bc, bcc, n, va, vb);
}
extern "C" __global__ void select_bf16(const unsigned char* c, const bf16* a, const bf16* b, bf16* out, Broadcast bc,
    Broadcast bcc, long long n, float va, float vb) {
    select(c, a, b, out, bc, bcc, n, va, vb);
}
