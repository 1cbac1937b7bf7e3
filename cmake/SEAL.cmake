# Provides the imported target SEAL::seal.
#
# 1. A SEAL 4.1 the user installed (find_package) wins.
# 2. Otherwise the pinned SEAL 4.1.2 source is taken from the Pyfhel 3.5.0 source
#    distribution (it ships SEAL under Pyfhel/backend/SEAL), verified by sha256,
#    built static once and installed into a per-user cache keyed by compiler, so
#    reinstalling pie (or a fresh clone of it) does not rebuild SEAL.
find_package(SEAL 4.1 QUIET CONFIG)
if(SEAL_FOUND)
  message(STATUS "pie: using installed SEAL ${SEAL_VERSION} (${SEAL_DIR})")
  return()
endif()

set(_seal_version 4.1.2)
set(_pyfhel_sdist pyfhel-3.5.0.tar.gz)
set(_pyfhel_sha256 0375b83b5a83026924f59db25c4efa9f27e1e8a66d004658f4d24195986a04b6)

if(PIE_SEAL_CACHE_DIR)
  set(_cache "${PIE_SEAL_CACHE_DIR}")
elseif(DEFINED ENV{PIE_CACHE_DIR})
  set(_cache "$ENV{PIE_CACHE_DIR}")
elseif(DEFINED ENV{XDG_CACHE_HOME})
  set(_cache "$ENV{XDG_CACHE_HOME}/pie")
else()
  set(_cache "$ENV{HOME}/.cache/pie")
endif()

# Everything that changes the produced library goes into the cache key.
string(SHA256 _key "${_seal_version};${_pyfhel_sha256};${CMAKE_CXX_COMPILER};${CMAKE_CXX_COMPILER_ID};${CMAKE_CXX_COMPILER_VERSION};${CMAKE_SYSTEM_PROCESSOR};static;pic;release")
string(SUBSTRING "${_key}" 0 16 _key)
set(_prefix "${_cache}/seal-${_seal_version}-${_key}")

file(MAKE_DIRECTORY "${_cache}")
# Two concurrent installs must not build into the same prefix.
file(LOCK "${_cache}/seal-${_key}.lock" GUARD FILE TIMEOUT 3600 RESULT_VARIABLE _lock_result)
if(_lock_result)
  message(FATAL_ERROR "pie: cannot lock the SEAL cache ${_cache}: ${_lock_result}")
endif()

if(EXISTS "${_prefix}/.pie-complete")
  message(STATUS "pie: reusing cached SEAL ${_seal_version} build in ${_prefix}")
else()
  # --- obtain and verify the source ---------------------------------------
  if(PIE_SEAL_SOURCE)
    set(_archive "${PIE_SEAL_SOURCE}")
  else()
    set(_archive "${_cache}/downloads/${_pyfhel_sdist}")
    if(EXISTS "${_archive}")
      file(SHA256 "${_archive}" _have)
      if(NOT _have STREQUAL _pyfhel_sha256)
        file(REMOVE "${_archive}")
      endif()
    endif()
    if(NOT EXISTS "${_archive}")
      message(STATUS "pie: downloading the SEAL ${_seal_version} source (in the Pyfhel 3.5.0 sdist) with pip")
      execute_process(
        COMMAND "${Python_EXECUTABLE}" -m pip download --no-deps --no-binary pyfhel
                pyfhel==3.5.0 -d "${_cache}/downloads"
        RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
      if(NOT _rc EQUAL 0 OR NOT EXISTS "${_archive}")
        message(FATAL_ERROR
          "pie: could not download ${_pyfhel_sdist} with pip (exit ${_rc}).\n${_out}\n${_err}\n"
          "Install SEAL 4.1 yourself (CMake finds it), or pass -DPIE_SEAL_SOURCE=/path/to/${_pyfhel_sdist}.")
      endif()
    endif()
  endif()
  file(SHA256 "${_archive}" _have)
  if(NOT _have STREQUAL _pyfhel_sha256)
    message(FATAL_ERROR "pie: ${_archive} has sha256 ${_have}, expected ${_pyfhel_sha256}")
  endif()

  # --- build and install into a staging prefix, then publish atomically -----
  set(_work "${_cache}/work-${_key}")
  file(REMOVE_RECURSE "${_work}" "${_prefix}")
  file(ARCHIVE_EXTRACT INPUT "${_archive}" DESTINATION "${_work}/src"
       PATTERNS "pyfhel-3.5.0/Pyfhel/backend/SEAL/*")
  set(_seal_src "${_work}/src/pyfhel-3.5.0/Pyfhel/backend/SEAL")
  include(ProcessorCount)
  ProcessorCount(_jobs)
  if(_jobs EQUAL 0)
    set(_jobs 2)
  endif()
  message(STATUS "pie: building SEAL ${_seal_version} (static, once; cached in ${_prefix})")
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -S "${_seal_src}" -B "${_work}/build"
            -G "${CMAKE_GENERATOR}"
            "-DCMAKE_MAKE_PROGRAM=${CMAKE_MAKE_PROGRAM}"
            "-DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}"
            -DCMAKE_BUILD_TYPE=Release
            -DCMAKE_POSITION_INDEPENDENT_CODE=ON
            "-DCMAKE_INSTALL_PREFIX=${_work}/install"
            -DBUILD_SHARED_LIBS=OFF
            -DSEAL_BUILD_DEPS=OFF -DSEAL_USE_MSGSL=OFF -DSEAL_USE_ZLIB=OFF -DSEAL_USE_ZSTD=OFF
            -DSEAL_USE_INTEL_HEXL=OFF -DSEAL_BUILD_SEAL_C=OFF -DSEAL_BUILD_TESTS=OFF
            -DSEAL_BUILD_EXAMPLES=OFF -DSEAL_BUILD_BENCH=OFF
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "pie: configuring SEAL failed:\n${_out}\n${_err}")
  endif()
  execute_process(
    COMMAND "${CMAKE_COMMAND}" --build "${_work}/build" --parallel ${_jobs}
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "pie: building SEAL failed:\n${_out}\n${_err}")
  endif()
  execute_process(
    COMMAND "${CMAKE_COMMAND}" --install "${_work}/build"
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "pie: installing SEAL failed:\n${_out}\n${_err}")
  endif()
  file(RENAME "${_work}/install" "${_prefix}")
  file(TOUCH "${_prefix}/.pie-complete")
  file(REMOVE_RECURSE "${_work}")
endif()
file(LOCK "${_cache}/seal-${_key}.lock" RELEASE)

find_package(SEAL ${_seal_version} EXACT REQUIRED CONFIG PATHS "${_prefix}" NO_DEFAULT_PATH)
message(STATUS "pie: using SEAL ${SEAL_VERSION} from ${_prefix}")
