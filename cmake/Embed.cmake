# Turns a file into a C++ source defining blixard::detail::${NAME}() (its bytes as a string_view).
file(READ "${IN}" content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE "${OUT}" "// Generated from ${IN}; do not edit.\n#include <string_view>\nnamespace blixard::detail {\nstatic const unsigned char k_bytes[] = {${bytes}};\nstd::string_view ${NAME}() {\n  return {reinterpret_cast<const char*>(k_bytes), sizeof(k_bytes)};\n}\n}  // namespace blixard::detail\n")
