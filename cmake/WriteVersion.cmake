# Run at every build (cmake -P): writes version.h from version.h.in with the current git
# revision; configure_file leaves the file untouched when nothing changed, so nothing rebuilds.
execute_process(
  COMMAND git describe --always --dirty --abbrev=12
  WORKING_DIRECTORY ${SOURCE_DIR}
  OUTPUT_VARIABLE HERALD_GIT_REVISION OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT HERALD_GIT_REVISION)
  set(HERALD_GIT_REVISION unknown)
endif()
configure_file(${INPUT} ${OUTPUT} @ONLY)
