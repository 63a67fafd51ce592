// The dashboard's files (ui/), embedded at build time by cmake/Embed.cmake so the server serves
// /ui/ with nothing installed beside it and no build step for the page itself.
#pragma once

#include <string_view>

namespace blixard::detail {

std::string_view embedded_ui_index();  // ui/index.html
std::string_view embedded_ui_app();    // ui/app.js
std::string_view embedded_ui_style();  // ui/style.css

}  // namespace blixard::detail
