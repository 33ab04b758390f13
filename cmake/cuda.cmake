# The CUDA backend (src/engine/cuda/), compiled into clipdissect_core when CLIPDISSECT_CUDA is ON.
# Hopper (H100/H200) by default: one architecture keeps the build short; override with
# -DCMAKE_CUDA_ARCHITECTURES=80;90 and the like.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 90)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

# cuDNN ships no CMake package: look for its header and library next to the toolkit, or under CUDNN_ROOT.
find_path(CUDNN_INCLUDE_DIR cudnn.h
  HINTS ${CUDNN_ROOT} ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}
  PATH_SUFFIXES include)
find_library(CUDNN_LIBRARY cudnn
  HINTS ${CUDNN_ROOT} ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)
if(NOT CUDNN_INCLUDE_DIR OR NOT CUDNN_LIBRARY)
  message(FATAL_ERROR "CLIPDISSECT_CUDA=ON needs cuDNN 9 (cudnn.h and libcudnn.so), not found next to the "
                      "CUDA toolkit at ${CUDAToolkit_LIBRARY_ROOT}; set -DCUDNN_ROOT=<folder with include/ and lib/>")
endif()
message(STATUS "cuDNN: ${CUDNN_LIBRARY} (headers in ${CUDNN_INCLUDE_DIR})")

file(GLOB CUDA_BACKEND_SOURCES CONFIGURE_DEPENDS src/engine/cuda/*.cpp src/engine/cuda/*.cu)
target_sources(clipdissect_core PRIVATE ${CUDA_BACKEND_SOURCES})
# Set on the target: it exists before CUDA is enabled. CMake 3.25 knows no C++20 flag for nvcc; the .cu files
# need only C++17.
set_target_properties(clipdissect_core PROPERTIES CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}"
                                                  CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON)
target_include_directories(clipdissect_core PRIVATE ${CUDNN_INCLUDE_DIR})
target_compile_definitions(clipdissect_core PUBLIC CLIPDISSECT_WITH_CUDA)
target_compile_options(clipdissect_core PRIVATE
  "$<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wshadow;--expt-relaxed-constexpr>")
target_link_libraries(clipdissect_core PRIVATE CUDA::cudart CUDA::cublas ${CUDNN_LIBRARY})
