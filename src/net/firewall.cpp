// The guard between VM networks and their node (see firewall.hpp).
#include "net/firewall.hpp"

#include <nftables/libnftables.h>

#include <memory>
#include <string>
#include <vector>

#include "blixard/error.hpp"

namespace blixard::net {
namespace {

// Declaring the table first makes the delete succeed when there is none: one transaction that
// replaces whatever was there. Where bridged frames pass netfilter (br_netfilter), a network's
// own traffic shows as forwarded from its bridge to itself: that stays, as in Docker's
// "-i docker0 -o docker0 -j ACCEPT"; from one network's bridge to another's does not.
std::string guard_script(const std::vector<std::string>& bridges) {
  std::string within;
  for (const auto& b : bridges) {
    within.append("    iifname \"")
        .append(b)
        .append("\" oifname \"")
        .append(b)
        .append("\" accept\n");
  }
  return R"(table inet blixard_guard
delete table inet blixard_guard
table inet blixard_guard {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "bx-*" ct state established,related accept
    iifname "bx-*" drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
)" + within +
         R"(    iifname "bx-*" drop
    oifname "bx-*" drop
  }
}
)";
}
constexpr const char* k_unguard = "table inet blixard_guard\ndelete table inet blixard_guard\n";

void run(const std::string& script, const char* what) {
  struct Free {
    void operator()(nft_ctx* c) const { nft_ctx_free(c); }
  };
  std::unique_ptr<nft_ctx, Free> ctx(nft_ctx_new(NFT_CTX_DEFAULT));
  if (!ctx) throw Error(errc::unavailable, std::string("nftables: cannot ") + what);
  nft_ctx_buffer_output(ctx.get());
  nft_ctx_buffer_error(ctx.get());
  if (nft_run_cmd_from_buffer(ctx.get(), script.c_str()) != 0) {
    const char* err = nft_ctx_get_error_buffer(ctx.get());
    throw Error(errc::unavailable, std::string("nftables: cannot ") + what + ": " +
                                       (err != nullptr && *err != '\0' ? err : "refused"));
  }
}

}  // namespace

void guard_bridges(const std::vector<std::string>& bridges) {
  for (const auto& b : bridges) {
    if (b.empty() || b.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") != b.npos) {
      throw Error(errc::invalid_spec, "not a bridge name: " + b, "bridge");
    }
  }
  run(guard_script(bridges), "guard the VM network bridges");
}

void unguard_bridges() { run(k_unguard, "remove the VM network guard"); }

}  // namespace blixard::net
