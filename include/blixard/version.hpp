// The library's version, from the repository's VERSION file.
#pragma once

#include <string_view>

namespace blixard {
std::string_view version() noexcept;
}
