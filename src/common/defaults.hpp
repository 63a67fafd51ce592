// Defaults that more than one layer applies, each written once.
#pragma once

#include <chrono>
#include <cstdint>

namespace blixard {

// A function's request and response limit when its spec sets no maxPayloadBytes: the API checks
// the payload against it, the driver the instance's answer, and the HTTP trigger gateway takes
// it as its body limit (gateway_body_limit). Lambda's synchronous limit.
inline constexpr std::uint64_t k_default_max_payload_bytes = 6U << 20;

// The largest code archive (compressed) a client may pack and the server keeps: the packer's
// limit, the blob store's and the HTTP body limit of PUT /v1/blobs (Lambda takes 50 MB zipped).
inline constexpr std::uint64_t k_max_code_archive_bytes = 64U << 20;

// A VM set's rollout timings when its updateStrategy gives none (healthyDeadline and
// progressDeadline are Nomad's): the controller applies them, validation checks a spec's own
// against them.
inline constexpr std::chrono::milliseconds k_default_min_healthy_time{1000};
inline constexpr std::chrono::milliseconds k_default_healthy_deadline{5 * 60 * 1000};
inline constexpr std::chrono::milliseconds k_default_progress_deadline{10 * 60 * 1000};

}  // namespace blixard
