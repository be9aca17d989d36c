// Harness stand-in for CUDA's cuda_fp16.h: under g++ (-I kernels/harness/include)
// `#include <cuda_fp16.h>` resolves here; under NVRTC to the real header.
#pragma once
#include "../cuda_harness.h"
