// The dashboard: GET /ui/ (the page), /ui/app.js, /ui/style.css, public. The page holds no data:
// it reads the API with the token its URL carries, so serving it needs no token.
#include "api/routes.hpp"
#include "api/ui_assets.hpp"

namespace blixard::api {

namespace {

// The page's token must not reach another origin: no resource but this server's own, no inline
// script (a name rendered by mistake as markup could not run), no Referer, no framing.
constexpr std::string_view k_csp =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

RouteHandler asset(std::string_view (*body)(), std::string_view content_type) {
  return [body, content_type](const RouteRequest&) {
    return immediate([body, content_type] {
      Response res{http::status::ok, 11};
      res.set(http::field::content_type, content_type);
      res.set(http::field::cache_control, "no-cache");
      res.set("Content-Security-Policy", k_csp);
      res.set("Referrer-Policy", "no-referrer");
      res.set("X-Content-Type-Options", "nosniff");
      res.set("X-Frame-Options", "DENY");
      res.set("Cross-Origin-Opener-Policy", "same-origin");
      res.body() = std::string(body());
      return res;
    });
  };
}

}  // namespace

void add_ui_routes(RouteTable& table, const RouteContext&) {
  // "/ui" and "/ui/" are one path to the table; the page names its files absolutely.
  table.add(http::verb::get, "/ui", Scope::none,
            asset(&detail::embedded_ui_index, "text/html; charset=utf-8"));
  table.add(http::verb::get, "/ui/app.js", Scope::none,
            asset(&detail::embedded_ui_app, "text/javascript; charset=utf-8"));
  table.add(http::verb::get, "/ui/style.css", Scope::none,
            asset(&detail::embedded_ui_style, "text/css; charset=utf-8"));
}

}  // namespace blixard::api
