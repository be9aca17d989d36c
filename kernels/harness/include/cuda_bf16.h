// Harness stand-in for CUDA's cuda_bf16.h (see cuda_fp16.h beside it).
#pragma once
#include "../cuda_harness.h"
