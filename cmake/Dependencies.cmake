# Every third-party dependency, found once. Versions are pinned by Debian 12's packages.
set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)
find_package(Boost 1.81 REQUIRED CONFIG COMPONENTS json)
find_package(spdlog REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(yaml-cpp REQUIRED)
# SHA-256 of token secrets and their random bytes (libssl-dev: libcrypto only).
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
# Functions' code travels as a tar.zst archive (libarchive-dev; Debian's is built with zstd).
find_package(LibArchive 3.3 REQUIRED)
# Instances' seccomp filters (libseccomp-dev); no CMake package, a plain library.
find_library(BLIXARD_SECCOMP NAMES seccomp REQUIRED)
# The scheduler's bitmaps (libroaring-dev, CRoaring 0.2.66). Found as a plain library, as seccomp
# is, so the installed package's link line needs no find_dependency of CRoaring's CMake file.
find_library(BLIXARD_ROARING NAMES roaring REQUIRED)
# The libvirt driver's C API (libvirt-dev, libvirt 9.0); a plain library as seccomp is.
find_library(BLIXARD_LIBVIRT NAMES virt REQUIRED)
if(BLIXARD_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(BLIXARD_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()
