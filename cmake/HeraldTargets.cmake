# Helpers that make every target's dependencies explicit in one place.
#
#   herald_library(NAME common SRCS a.cc b.cc DEPS absl::status PUBLIC_DEPS ...)
#     defines herald_<NAME> with alias herald::<NAME>; headers are included as
#     "libs/<NAME>/x.h" (include root = repository root).
#   herald_test(NAME net_test SRCS x_test.cc DEPS herald::net)
#     a GoogleTest binary registered with ctest through gtest_discover_tests.
#   herald_binary(NAME herald SRCS main.cc DEPS ...)
#   herald_benchmark(NAME raft_bench SRCS ... DEPS ...)
#   herald_fuzzer(NAME mqtt_fuzz SRCS ... DEPS ...)   (only with HERALD_FUZZ=ON)

set(HERALD_WARNINGS -Wall -Wextra -Wno-unused-parameter)
if(HERALD_WERROR)
  list(APPEND HERALD_WARNINGS -Werror)
endif()

if(HERALD_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

if(HERALD_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "HERALD_FUZZ needs clang: configure with CC=clang CXX=clang++")
  endif()
  # Everything is instrumented for coverage; only fuzz targets link libFuzzer's main.
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

function(_herald_common target)
  target_compile_options(${target} PRIVATE ${HERALD_WARNINGS})
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
endfunction()

function(herald_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(herald_${ARG_NAME} STATIC ${ARG_SRCS})
  add_library(herald::${ARG_NAME} ALIAS herald_${ARG_NAME})
  _herald_common(herald_${ARG_NAME})
  target_link_libraries(herald_${ARG_NAME} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
endfunction()

function(herald_binary)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  _herald_common(${ARG_NAME})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} ${HERALD_MALLOC})
endfunction()

function(herald_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  _herald_common(${ARG_NAME})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 120)
  endif()
  gtest_discover_tests(${ARG_NAME}
    DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
endfunction()

function(herald_benchmark)
  if(NOT HERALD_BENCHMARKS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  _herald_common(${ARG_NAME})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} benchmark::benchmark benchmark::benchmark_main)
endfunction()

function(herald_fuzzer)
  if(NOT HERALD_FUZZ)
    return()
  endif()
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  _herald_common(${ARG_NAME})
  target_link_options(${ARG_NAME} PRIVATE -fsanitize=fuzzer)
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS})
endfunction()
