# Included right after llama.cpp's project() (CMAKE_PROJECT_llama.cpp_INCLUDE, scripts/setup.sh) when
# llama-cpp-python compiles it: hubtool uses the model loader, the quantizer and eval from libllama,
# never llama.cpp's `common` library (chat parsers, downloads, JSON schema; llama-cpp-python forces it
# on as a cache variable, which this normal variable shadows). The multimodal `mtmd` library is off
# through llama-cpp-python's own LLAVA_BUILD option. Together they were 64 % of the compile's CPU time.
set(LLAMA_BUILD_COMMON OFF)
