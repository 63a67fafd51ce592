// Files embedded at build time by cmake/Embed.cmake so an agent needs nothing installed beside it:
// the Python handler runtime (python/blixard/handler_runtime.py) and the confinement library its
// zygote's children load (libblixard-confine.so, src/runtime/confine.hpp).
#pragma once

#include <string_view>

namespace blixard::detail {

std::string_view embedded_handler_runtime();
std::string_view embedded_confine_library();

}  // namespace blixard::detail
