# Turns a text file into a C++ source defining blixard::detail::embedded_handler_runtime().
file(READ "${IN}" content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE "${OUT}" "// Generated from ${IN}; do not edit.\n#include <string_view>\nnamespace blixard::detail {\nstatic const unsigned char k_runtime[] = {${bytes}};\nstd::string_view embedded_handler_runtime() {\n  return {reinterpret_cast<const char*>(k_runtime), sizeof(k_runtime)};\n}\n}  // namespace blixard::detail\n")
