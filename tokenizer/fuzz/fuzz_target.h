// The libFuzzer entry point every fuzz target defines, and the seeds the plain driver mutates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

// Starting inputs for the mutation driver.
std::vector<std::string> fuzz_seeds();
