// libFuzzer target: the wire's JSON check (common/json_check) against Boost.JSON's DOM parser
// with the same options. They must agree on every input, in time linear in its size.
// Boost.JSON compiled in (not the installed library), so all of it is instrumented.
#include <boost/json/src.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/json_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const blixard::JsonCheck check = blixard::check_json_text(text);

  boost::system::error_code ec;
  boost::json::value dom = boost::json::parse(text, ec, {}, blixard::json_parse_options());
  // Agreement: valid exactly when the DOM parses; too deep exactly when the DOM says so.
  if (check.ok() != !ec) std::abort();
  if ((check.verdict == blixard::JsonVerdict::too_deep) != (ec == boost::json::error::too_deep)) {
    std::abort();
  }
  if (!check.ok() && check.detail.empty()) std::abort();
  if (!check.ok() && blixard::json_problem(check, "x").empty()) std::abort();
  // What passes the check prints as JSON again (the gateway serialises bodies), but for numbers
  // past a double's range: Boost.JSON reads them as infinity (or 0e999 as NaN) and prints
  // "Infinity" or "NaN", which is not JSON (the gateway answers 502 for that). Not compared for
  // equality: 1.81 reads doubles imprecisely (an ULP off), so a printed double may read back as its
  // neighbour.
  if (check.ok()) {
    const std::string printed = boost::json::serialize(dom);
    const bool json = blixard::check_json_text(printed).ok();
    if (!json && printed.find("Infinity") == std::string::npos &&
        printed.find("NaN") == std::string::npos) {
      std::abort();
    }
    if (json) {
      auto again = boost::json::parse(printed, ec, {}, blixard::json_parse_options());
      if (ec || again.kind() != dom.kind()) std::abort();
    }
  }
  return 0;
}
