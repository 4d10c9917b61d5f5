# Every third-party dependency, all from Debian packages (see tools/dev setup).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_package(RocksDB CONFIG REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(GTest CONFIG REQUIRED)
if(HERALD_BENCHMARKS)
  find_package(benchmark CONFIG REQUIRED)
endif()
find_package(PkgConfig REQUIRED)
pkg_check_modules(LIBUV REQUIRED IMPORTED_TARGET libuv)

# jemalloc replaces glibc's malloc in Herald's programs (docs/core.md, Performance: the broker's hot
# paths allocate from several threads, gRPC and RocksDB included, and glibc's arenas spend a
# tenth of the CPU there). Not with the sanitizers, which bring their own allocator.
option(HERALD_JEMALLOC "Link Herald's programs with jemalloc" ON)
if(HERALD_JEMALLOC AND NOT HERALD_SANITIZE AND NOT HERALD_FUZZ)
  pkg_check_modules(JEMALLOC REQUIRED IMPORTED_TARGET jemalloc)
  set(HERALD_MALLOC PkgConfig::JEMALLOC)
else()
  set(HERALD_MALLOC "")
endif()

# http-parser ships neither a CMake config nor a pkg-config file.
find_path(HTTP_PARSER_INCLUDE_DIR http_parser.h REQUIRED)
find_library(HTTP_PARSER_LIBRARY http_parser REQUIRED)
add_library(herald_http_parser INTERFACE)
target_include_directories(herald_http_parser SYSTEM INTERFACE ${HTTP_PARSER_INCLUDE_DIR})
target_link_libraries(herald_http_parser INTERFACE ${HTTP_PARSER_LIBRARY})
add_library(httpparser::httpparser ALIAS herald_http_parser)

include(GoogleTest)
