# Test helpers. Labels: unit (no root), host (root, loop devices, real filesystems),
# vm (device-mapper: runs inside the guest kernel via tests/vm/run), fuzz (short libFuzzer runs).
include(GoogleTest OPTIONAL)

# imaged_gtest(NAME LABEL <label> SOURCES ... LIBS ... [TIMEOUT s] [PREFIX p])
# One executable per test file group; each TEST is its own ctest case so a failure names itself.
# PREFIX goes before each case's name (so `ctest -R <prefix>` picks the executable's cases).
function(imaged_gtest name)
  cmake_parse_arguments(T "" "LABEL;TIMEOUT;PREFIX" "SOURCES;LIBS" ${ARGN})
  if(IMAGED_FUZZ)
    return()
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests/support ${PROJECT_SOURCE_DIR}/tests)
  gtest_discover_tests(${name}
    TEST_PREFIX "${T_PREFIX}"
    PROPERTIES LABELS ${T_LABEL} TIMEOUT ${T_TIMEOUT}
    DISCOVERY_TIMEOUT 60)
endfunction()

# imaged_fuzz_target(NAME SOURCES ... LIBS ... [CORPUS dir])
# Built only with -DIMAGED_FUZZ=ON (clang). ctest runs each for IMAGED_FUZZ_SECONDS.
set(IMAGED_FUZZ_SECONDS 20 CACHE STRING "Seconds each fuzz target runs under ctest")
function(imaged_fuzz_target name)
  cmake_parse_arguments(F "" "CORPUS" "SOURCES;LIBS" ${ARGN})
  if(NOT IMAGED_FUZZ)
    return()
  endif()
  add_executable(${name} ${F_SOURCES})
  target_link_libraries(${name} PRIVATE ${F_LIBS})
  target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  set(corpus_args "")
  if(F_CORPUS)
    # Copy the checked-in corpus so a run never writes into the source tree.
    set(work ${CMAKE_CURRENT_BINARY_DIR}/${name}-corpus)
    set(corpus_args ${work})
    add_test(NAME ${name}-corpus-setup
      COMMAND ${CMAKE_COMMAND} -E copy_directory ${F_CORPUS} ${work})
    set_tests_properties(${name}-corpus-setup PROPERTIES FIXTURES_SETUP ${name}-corpus LABELS fuzz)
  endif()
  add_test(NAME ${name}
    COMMAND ${name} -max_total_time=${IMAGED_FUZZ_SECONDS} -rss_limit_mb=1024 -timeout=10
            -print_final_stats=1 ${corpus_args})
  set_tests_properties(${name} PROPERTIES LABELS fuzz TIMEOUT 600)
  if(F_CORPUS)
    set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED ${name}-corpus)
  endif()
endfunction()
