// The Python handler runtime (python/blixard/handler_runtime.py), embedded at build time by
// cmake/Embed.cmake so an agent needs no Python package beside it.
#pragma once

#include <string_view>

namespace blixard::detail {

std::string_view embedded_handler_runtime();

}  // namespace blixard::detail
