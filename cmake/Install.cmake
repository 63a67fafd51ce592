# Installs libblixard, its public headers (with the generated protobuf headers) and an exported
# CMake package, so consumers write find_package(blixard) and link blixard::blixard.
include(CMakePackageConfigHelpers)
install(TARGETS blixard EXPORT blixardTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
if(BLIXARD_BUILD_AGENT)
  install(TARGETS blixard-agent RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(DIRECTORY include/blixard DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${BLIXARD_PROTO_HDRS} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/blixard/v1)
set(BLIXARD_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/blixard)
install(EXPORT blixardTargets NAMESPACE blixard:: DESTINATION ${BLIXARD_CMAKE_DIR})
configure_package_config_file(cmake/blixardConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/blixardConfig.cmake INSTALL_DESTINATION ${BLIXARD_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/blixardConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/blixardConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/blixardConfigVersion.cmake DESTINATION ${BLIXARD_CMAKE_DIR})
# `pip install .` (scikit-build-core): the agent goes beside the `blixard` console script.
if(SKBUILD AND BLIXARD_BUILD_AGENT)
  install(TARGETS blixard-agent RUNTIME DESTINATION ${SKBUILD_SCRIPTS_DIR} COMPONENT python)
endif()
