// The harness library: every kernels/*.cu in one translation unit, each
// `extern "C" __global__` kernel registered by name, and a C entry point with
// cuLaunchKernel's calling convention. src/cuda/emulator.rs generates
// kernels_all.inc (the #includes) and registry.inc (one HR_KERNEL(name) per
// kernel, found by scanning the sources) and builds this with g++.
#include "cuda_harness.h"

#include "kernels_all.inc"

#define HR_KERNEL(k) {#k, &hr::thunk<&k>, hr::arg_sizes(&k)},
static const hr::Entry registry[] = {
#include "registry.inc"
    {nullptr, nullptr, {}},
};

static const hr::Entry* find(const char* name) {
    for (const hr::Entry* e = registry; e->name; ++e)
        if (std::strcmp(e->name, name) == 0) return e;
    return nullptr;
}

#define HR_EXPORT extern "C" __attribute__((visibility("default")))

// Run kernel `name`: args[i] points at the i-th argument's value. 0 on
// success; otherwise non-zero with a message in err.
HR_EXPORT int hr_launch(const char* name, unsigned grid[3], unsigned block[3], size_t smem, void** args, char* err,
                        size_t errlen) {
    const hr::Entry* e = find(name);
    if (!e) {
        snprintf(err, errlen, "no kernel named %s in the harness (is it `extern \"C\" __global__ void %s(` in kernels/?)",
                 name, name);
        return 2;
    }
    return e->run(name, grid, block, smem, args, err, errlen);
}

// The byte size of each parameter of kernel `name` (up to max of them);
// returns the parameter count, or -1 for an unknown kernel.
HR_EXPORT int hr_signature(const char* name, size_t* sizes, size_t max) {
    const hr::Entry* e = find(name);
    if (!e) return -1;
    for (size_t i = 0; i < e->sizes.size() && i < max; ++i) sizes[i] = e->sizes[i];
    return int(e->sizes.size());
}

// Run each round's threads (and the blocks) last to first on this OS thread.
HR_EXPORT void hr_set_reverse(int reverse) { hr::reverse_order = reverse != 0; }

// How many kernels are registered, and the i-th one's name.
HR_EXPORT int hr_kernel_count() { return int(sizeof registry / sizeof registry[0]) - 1; }
HR_EXPORT const char* hr_kernel_name(int i) { return i >= 0 && i < hr_kernel_count() ? registry[i].name : nullptr; }
