// The CPU execution harness: lets g++ compile kernels/*.cu unchanged and run
// them on the CPU, so kernel logic is tested on machines with no GPU.
//
// Model. Blocks run one at a time. A block's threads are fibers
// (makecontext/swapcontext, one stack each, reused across blocks) run one at
// a time in a fixed order: a thread runs until it reaches __syncthreads, a
// warp primitive or its end, then the next thread runs. When every live
// thread waits, the scheduler releases complete barriers and warp groups and
// starts the next round. So a missing __syncthreads gives a wrong result
// every time, not now and then; running each round in reverse order too
// catches the races that forward order happens to hide. When nothing can be
// released, the launch fails with a report of who waits where: never a hang.
//
// __shared__ is thread_local: one copy per OS thread, shared by the fibers of
// the block running on it, so launches from several test threads do not mix.
// Not modelled: memory ordering weaker than x86's (fences), inter-block
// spinning, inline PTX, tensor cores. Blocks never run concurrently.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <sys/mman.h>
#include <tuple>
#include <type_traits>
#include <ucontext.h>
#include <utility>
#include <vector>

// ---- CUDA keywords ---------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __constant__ static const
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

// Per emulated thread: the scheduler sets them before it resumes a fiber.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

// Dynamic shared memory: the .cu files declare
// `extern __shared__ __align__(16) unsigned char hr_smem[];`; this is it.
constexpr size_t HR_SMEM_MAX = 227 * 1024;  // sm_90's per-block opt-in limit
thread_local __align__(16) unsigned char hr_smem[HR_SMEM_MAX];

namespace hr {

enum class Wait { Run, Barrier, Warp, Done };
enum class WarpOp { ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, Sync };

inline const char* warp_op_name(WarpOp op) {
    static const char* names[] = {"__shfl_sync",   "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                  "__ballot_sync", "__any_sync",     "__all_sync",       "__syncwarp"};
    return names[int(op)];
}

struct Fiber {
    ucontext_t ctx;
    Wait wait = Wait::Run;
    // Where it waits (for the deadlock report) and, at a warp primitive,
    // what it brought and what it gets back.
    const char* file = "";
    int line = 0;
    WarpOp op = WarpOp::Sync;
    unsigned mask = 0;
    uint64_t value = 0, result = 0;
    int param = 0, width = 32;
};

// One OS thread's running launch.
struct Launch {
    const char* kernel = "";
    std::vector<Fiber> fibers;
    ucontext_t sched;
    int current = 0;
    std::string error;  // set: abandon the launch
    void (*body)(void*) = nullptr;
    void* closure = nullptr;
};

inline thread_local Launch* cur = nullptr;
inline thread_local bool reverse_order = false;

// Fiber stacks, reused across blocks and launches on this OS thread. Each has
// a PROT_NONE guard page below it, so an overflow faults instead of
// corrupting the neighbour.
constexpr size_t STACK_BYTES = 256 * 1024, GUARD = 4096;
struct StackPool {
    std::vector<char*> stacks;
    ~StackPool() {
        for (char* s : stacks) munmap(s - GUARD, STACK_BYTES + GUARD);
    }
    bool ensure(size_t n) {
        while (stacks.size() < n) {
            void* p = mmap(nullptr, STACK_BYTES + GUARD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) return false;
            mprotect(p, GUARD, PROT_NONE);
            stacks.push_back(static_cast<char*>(p) + GUARD);
        }
        return true;
    }
};
inline thread_local StackPool stack_pool;

inline const char* base_name(const char* path) {
    const char* s = std::strrchr(path, '/');
    return s ? s + 1 : path;
}

inline Fiber& me() { return cur->fibers[cur->current]; }

// Back to the scheduler; returns when this thread is released.
inline void yield(Wait why, const char* file, int line) {
    Fiber& f = me();
    f.wait = why;
    f.file = file;
    f.line = line;
    swapcontext(&f.ctx, &cur->sched);
}

inline void fiber_entry() {
    Launch* L = cur;
    L->body(L->closure);
    L->fibers[L->current].wait = Wait::Done;
    swapcontext(&L->fibers[L->current].ctx, &L->sched);
}

inline uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width, const char* file, int line) {
    Fiber& f = me();
    f.op = op;
    f.mask = mask;
    f.value = value;
    f.param = param;
    f.width = width;
    yield(Wait::Warp, file, line);
    return me().result;
}

// Which lane `lane` reads in a shuffle, per the CUDA programming guide.
inline int shfl_source(const Fiber& f, int lane) {
    int w = f.width, seg = lane & ~(w - 1);
    switch (f.op) {
        case WarpOp::ShflIdx: return seg | (f.param & (w - 1));
        case WarpOp::ShflUp: return (lane - seg) < f.param ? lane : lane - f.param;
        case WarpOp::ShflDown: return (lane - seg) + f.param >= w ? lane : lane + f.param;
        case WarpOp::ShflXor: {
            int src = lane ^ f.param;
            return src >= seg + w ? lane : src;  // later groups: own value
        }
        default: return lane;
    }
}

// Release every warp group whose lanes have all arrived. Returns whether any
// was released; sets cur->error on a misuse.
inline bool release_warps(Launch& L) {
    bool released = false;
    int n = int(L.fibers.size());
    char msg[512];
    for (int t = 0; t < n; ++t) {
        Fiber& f = L.fibers[t];
        if (f.wait != Wait::Warp) continue;
        int warp = t / 32, lane = t % 32;
        if (!(f.mask >> lane & 1u)) {
            snprintf(msg, sizeof msg, "%s at %s:%d: thread %d is not in its own mask 0x%08x", warp_op_name(f.op),
                     base_name(f.file), f.line, t, f.mask);
            L.error = msg;
            return false;
        }
        if (f.width < 1 || f.width > 32 || (f.width & (f.width - 1))) {
            snprintf(msg, sizeof msg, "%s at %s:%d: width %d is not a power of two <= 32", warp_op_name(f.op),
                     base_name(f.file), f.line, f.width);
            L.error = msg;
            return false;
        }
        bool ready = true;
        for (int l = 0; l < 32; ++l) {
            if (!(f.mask >> l & 1u)) continue;
            int u = warp * 32 + l;
            const Fiber* g = u < n ? &L.fibers[u] : nullptr;
            if (!g || g->wait == Wait::Done) {
                snprintf(msg, sizeof msg, "%s at %s:%d: mask 0x%08x names lane %d of warp %d, which %s",
                         warp_op_name(f.op), base_name(f.file), f.line, f.mask, l, warp,
                         g ? "has exited" : "is beyond the block");
                L.error = msg;
                return false;
            }
            if (g->wait != Wait::Warp) {
                ready = false;  // still on its way (or stuck at a barrier)
                continue;
            }
            if (g->op != f.op || g->mask != f.mask) {
                snprintf(msg, sizeof msg,
                         "warp %d: lane %d waits at %s mask 0x%08x (%s:%d) but lane %d at %s mask 0x%08x (%s:%d)", warp,
                         lane, warp_op_name(f.op), f.mask, base_name(f.file), f.line, l, warp_op_name(g->op), g->mask,
                         base_name(g->file), g->line);
                L.error = msg;
                return false;
            }
        }
        if (!ready) continue;
        // Every lane of the mask is here: compute each lane's result before
        // any of them runs on (and overwrites its slot).
        uint64_t ballot = 0;
        for (int l = 0; l < 32; ++l)
            if (f.mask >> l & 1u) ballot |= uint64_t(L.fibers[warp * 32 + l].value != 0) << l;
        for (int l = 0; l < 32; ++l) {
            if (!(f.mask >> l & 1u)) continue;
            Fiber& g = L.fibers[warp * 32 + l];
            switch (f.op) {
                case WarpOp::Ballot: g.result = ballot; break;
                case WarpOp::Any: g.result = ballot != 0; break;
                case WarpOp::All: g.result = ballot == f.mask; break;
                case WarpOp::Sync: g.result = 0; break;
                default: {
                    int src = shfl_source(g, l);
                    if (!(f.mask >> src & 1u)) {
                        snprintf(msg, sizeof msg, "%s at %s:%d: lane %d reads lane %d, which is not in mask 0x%08x",
                                 warp_op_name(f.op), base_name(f.file), f.line, l, src, f.mask);
                        L.error = msg;
                        return false;
                    }
                    g.result = L.fibers[warp * 32 + src].value;
                }
            }
        }
        for (int l = 0; l < 32; ++l)
            if (f.mask >> l & 1u) L.fibers[warp * 32 + l].wait = Wait::Run;
        released = true;
    }
    return released;
}

// "threads 0-31 wait at __syncthreads (reduce.cu:40); ..."
inline std::string deadlock_report(const Launch& L) {
    std::string out;
    int n = int(L.fibers.size());
    auto describe = [&](const Fiber& f) {
        char buf[160];
        if (f.wait == Wait::Done) return std::string("exited");
        if (f.wait == Wait::Barrier)
            snprintf(buf, sizeof buf, "wait at __syncthreads (%s:%d)", base_name(f.file), f.line);
        else
            snprintf(buf, sizeof buf, "wait at %s mask 0x%08x (%s:%d)", warp_op_name(f.op), f.mask, base_name(f.file),
                     f.line);
        return std::string(buf);
    };
    for (int t = 0; t < n;) {
        std::string d = describe(L.fibers[t]);
        int u = t;
        while (u + 1 < n && describe(L.fibers[u + 1]) == d) ++u;
        char head[48];
        snprintf(head, sizeof head, u > t ? "threads %d-%d " : "thread %d ", t, u);
        out += (out.empty() ? "" : "; ") + std::string(head) + d;
        t = u + 1;
    }
    return out;
}

// Run one block to completion; false with L.error set on a failure.
inline bool run_block(Launch& L) {
    int n = int(L.fibers.size());
    unsigned bx = blockDim.x, by = blockDim.y;
    for (int t = 0; t < n; ++t) {
        Fiber& f = L.fibers[t];
        f = Fiber{};
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stack_pool.stacks[t];
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = &L.sched;
        makecontext(&f.ctx, fiber_entry, 0);
    }
    for (;;) {
        for (int k = 0; k < n; ++k) {
            int t = reverse_order ? n - 1 - k : k;
            if (L.fibers[t].wait != Wait::Run) continue;
            L.current = t;
            threadIdx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
            swapcontext(&L.sched, &L.fibers[t].ctx);
            if (!L.error.empty()) return false;
        }
        int live = 0, at_barrier = 0;
        for (const Fiber& f : L.fibers) {
            live += f.wait != Wait::Done;
            at_barrier += f.wait == Wait::Barrier;
        }
        if (live == 0) return true;
        bool released = release_warps(L);
        if (!L.error.empty()) return false;
        // __syncthreads counts the threads that have not exited (sm_70+).
        if (!released && at_barrier == live) {
            for (Fiber& f : L.fibers)
                if (f.wait == Wait::Barrier) f.wait = Wait::Run;
            released = true;
        }
        if (!released) {
            L.error = "deadlock: " + deadlock_report(L);
            return false;
        }
    }
}

// Run the whole grid, one block at a time. 0 on success, else 1 with `err`.
inline int run_grid(const char* kernel, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* closure,
                    char* err, size_t errlen) {
    auto bad = [&](const std::string& m) {
        snprintf(err, errlen, "%s", m.c_str());
        return 1;
    };
    char msg[256];
    unsigned long long threads = 1ull * block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64) {
        snprintf(msg, sizeof msg, "block (%u,%u,%u) has %llu threads; CUDA allows 1..1024 (z <= 64)", block.x,
                 block.y, block.z, threads);
        return bad(msg);
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
        snprintf(msg, sizeof msg, "grid (%u,%u,%u) is empty or over CUDA's limits", grid.x, grid.y, grid.z);
        return bad(msg);
    }
    if (smem > HR_SMEM_MAX) {
        snprintf(msg, sizeof msg, "%zu bytes of dynamic shared memory; the most a block can have is %zu", smem,
                 HR_SMEM_MAX);
        return bad(msg);
    }
    if (cur) return bad("a kernel launched another kernel; the harness has no dynamic parallelism");
    if (!stack_pool.ensure(threads)) return bad("could not map fiber stacks");
    Launch L;
    L.kernel = kernel;
    L.fibers.resize(threads);
    L.body = body;
    L.closure = closure;
    cur = &L;
    gridDim = grid;
    blockDim = block;
    unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
    for (unsigned long long k = 0; k < blocks; ++k) {
        unsigned long long b = reverse_order ? blocks - 1 - k : k;
        blockIdx = uint3{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (1ull * grid.x * grid.y))};
        // Poison dynamic shared memory (0xFF bytes: NaN in f32) so reads of
        // what no thread wrote show up.
        std::memset(hr_smem, 0xFF, smem);
        if (!run_block(L)) {
            cur = nullptr;
            snprintf(msg, sizeof msg, "kernel %s, block (%u,%u,%u): ", kernel, blockIdx.x, blockIdx.y, blockIdx.z);
            return bad(msg + L.error);
        }
    }
    cur = nullptr;
    return 0;
}

// Unpack cuLaunchKernel-style arguments (an array of pointers to each value)
// into the kernel's typed parameters and run it.
template <class... A, size_t... I>
std::tuple<A...> unpack(void** args, std::index_sequence<I...>) {
    std::tuple<A...> t;
    ((std::memcpy(&std::get<I>(t), args[I], sizeof(A))), ...);  // memcpy: args may be unaligned
    return t;
}

template <class... A>
int launch(const char* name, void (*fn)(A...), const unsigned* g, const unsigned* b, size_t smem, void** args,
           char* err, size_t errlen) {
    auto vals = unpack<std::decay_t<A>...>(args, std::index_sequence_for<A...>{});
    auto call = [&]() { std::apply(fn, vals); };
    using Call = decltype(call);
    return run_grid(name, dim3(g[0], g[1], g[2]), dim3(b[0], b[1], b[2]), smem,
                    [](void* c) { (*static_cast<Call*>(c))(); }, &call, err, errlen);
}

template <class... A>
std::vector<size_t> arg_sizes(void (*)(A...)) {
    return {sizeof(A)...};
}

using Thunk = int (*)(const char*, const unsigned*, const unsigned*, size_t, void**, char*, size_t);

template <auto Fn>
int thunk(const char* name, const unsigned* g, const unsigned* b, size_t smem, void** args, char* err, size_t errlen) {
    return launch(name, Fn, g, b, smem, args, err, errlen);
}

struct Entry {
    const char* name;
    Thunk run;
    std::vector<size_t> sizes;
};

}  // namespace hr

// ---- Synchronisation and warp primitives -----------------------------------
// The defaulted file/line arguments name the caller's line in reports.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    hr::yield(hr::Wait::Barrier, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    hr::warp_op(hr::WarpOp::Sync, mask, 0, 0, 32, file, line);
}

template <class T>
uint64_t hr_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move at most 8 bytes");
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T>
T hr_from_bits(uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
}

#define HR_SHFL(NAME, OP, PARAM_T)                                                                              \
    template <class T>                                                                                          \
    T NAME(unsigned mask, T var, PARAM_T p, int width = 32, const char* file = __builtin_FILE(),                \
           int line = __builtin_LINE()) {                                                                       \
        return hr_from_bits<T>(hr::warp_op(hr::WarpOp::OP, mask, hr_bits(var), int(p), width, file, line));  \
    }
HR_SHFL(__shfl_sync, ShflIdx, int)
HR_SHFL(__shfl_up_sync, ShflUp, unsigned)
HR_SHFL(__shfl_down_sync, ShflDown, unsigned)
HR_SHFL(__shfl_xor_sync, ShflXor, int)
#undef HR_SHFL

inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return unsigned(hr::warp_op(hr::WarpOp::Ballot, mask, pred != 0, 0, 32, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return int(hr::warp_op(hr::WarpOp::Any, mask, pred != 0, 0, 32, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return int(hr::warp_op(hr::WarpOp::All, mask, pred != 0, 0, 32, file, line));
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- Atomics: trivially atomic with one fiber at a time, written as atomics
// anyway so that the intent reads the same as on the GPU.
template <class T>
T atomicAdd(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
T atomicSub(T* p, T v) {
    return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <class T>
T atomicExch(T* p, T v) {
    return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
T atomicCAS(T* p, T expected, T desired) {
    std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
    return expected;  // the old value either way
}
template <class T>
T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <class T>
T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old > v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}

// ---- Math intrinsics ---------------------------------------------------------
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
// Round-to-nearest arithmetic that the GPU never fuses into an FMA: exactly
// what x86 SSE does for plain operators.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
inline unsigned __float_as_uint(float f) { return unsigned(__float_as_int(f)); }
inline float __uint_as_float(unsigned u) { return __int_as_float(int(u)); }
template <class T>
T __ldg(const T* p) {
    return *p;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// ---- Half precision: 2-byte storage, f32 arithmetic ---------------------------
struct __half {
    _Float16 v;  // IEEE binary16; conversions round to nearest even
};
struct alignas(4) __half2 {
    __half x, y;
};
struct __nv_bfloat16 {
    uint16_t x;  // the top half of an f32
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4 && sizeof(__nv_bfloat16) == 2 && sizeof(__nv_bfloat162) == 4);

inline __half __float2half(float f) { return __half{static_cast<_Float16>(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half(a), __float2half(b)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline __half __hadd(__half a, __half b) { return __float2half(__half2float(a) + __half2float(b)); }
inline __half __hmul(__half a, __half b) { return __float2half(__half2float(a) * __half2float(b)); }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }

inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = uint32_t(h.x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return __nv_bfloat16{uint16_t(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__float2bfloat16(a), __float2bfloat16(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2{__bfloat162float(h.x), __bfloat162float(h.y)}; }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
