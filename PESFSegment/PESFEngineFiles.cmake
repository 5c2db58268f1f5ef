#-----------------------------------------------------------------------------
# The files of the PESF engine (the `pesf` package at the top of the repository) that ship inside
# PESFSegment, so that a Slicer user needs nothing but the extension.
#
# Input:  PESF_ENGINE_SOURCE_DIR  the repository root (holds pesf/ and Resources/).
# Output, paths relative to PESF_ENGINE_SOURCE_DIR:
#   PESF_ENGINE_PYTHON_FILES  every pesf/**/*.py (subpackages included)
#   PESF_ENGINE_DATA_FILES    every other file inside pesf/ (package data such as pesf/data/organs.json),
#                             without byte code
#   PESF_BUNDLED_MODEL_FILES  Resources/Models/*.pt, the bundled models pesf.resources finds next to the
#                             package (<dir of pesf>/Resources/Models)
#
# The lists are globbed, not typed, so a file added to the engine ships without editing CMake. At build
# time the globs are re-checked (CONFIGURE_DEPENDS), so adding a file re-runs the configuration.
#
# Run as a script to print the lists (the structural test does this):
#   cmake -DPESF_ENGINE_SOURCE_DIR=/path/to/repo -P PESFSegment/PESFEngineFiles.cmake
#-----------------------------------------------------------------------------
if(NOT DEFINED PESF_ENGINE_SOURCE_DIR)
  message(FATAL_ERROR "PESF_ENGINE_SOURCE_DIR must be set to the repository root")
endif()

if(CMAKE_SCRIPT_MODE_FILE)
  set(_pesf_glob_options "")  # CONFIGURE_DEPENDS is only valid while configuring a project
else()
  set(_pesf_glob_options CONFIGURE_DEPENDS)
endif()

file(GLOB_RECURSE PESF_ENGINE_PYTHON_FILES ${_pesf_glob_options}
  RELATIVE ${PESF_ENGINE_SOURCE_DIR}
  ${PESF_ENGINE_SOURCE_DIR}/pesf/*.py
  )

file(GLOB_RECURSE _pesf_all_files ${_pesf_glob_options}
  RELATIVE ${PESF_ENGINE_SOURCE_DIR}
  ${PESF_ENGINE_SOURCE_DIR}/pesf/*
  )
set(PESF_ENGINE_DATA_FILES)
foreach(_pesf_file IN LISTS _pesf_all_files)
  if(NOT _pesf_file MATCHES "(\\.py|\\.pyc|\\.pyo)$" AND NOT _pesf_file MATCHES "(^|/)__pycache__/")
    list(APPEND PESF_ENGINE_DATA_FILES ${_pesf_file})
  endif()
endforeach()

file(GLOB PESF_BUNDLED_MODEL_FILES ${_pesf_glob_options}
  RELATIVE ${PESF_ENGINE_SOURCE_DIR}
  ${PESF_ENGINE_SOURCE_DIR}/Resources/Models/*.pt
  )

list(SORT PESF_ENGINE_PYTHON_FILES)
list(SORT PESF_ENGINE_DATA_FILES)
list(SORT PESF_BUNDLED_MODEL_FILES)

if(CMAKE_SCRIPT_MODE_FILE)
  foreach(_pesf_file IN LISTS PESF_ENGINE_PYTHON_FILES)
    message("python ${_pesf_file}")
  endforeach()
  foreach(_pesf_file IN LISTS PESF_ENGINE_DATA_FILES)
    message("data ${_pesf_file}")
  endforeach()
  foreach(_pesf_file IN LISTS PESF_BUNDLED_MODEL_FILES)
    message("model ${_pesf_file}")
  endforeach()
endif()
