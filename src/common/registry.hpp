// Where the store keeps the kinds more than one layer reads: <prefix><name>.
#pragma once

namespace blixard {

// Storage pools (apply plans them; the volume controller resolves sets' storage through them).
inline constexpr const char* k_storage_pools_prefix = "/registry/storagepools/";
// VM sets' volumes (written by the volume controller; apply refuses to drop a pool holding any).
inline constexpr const char* k_volumes_prefix = "/registry/volumes/";

// Networks (apply plans them) and the addresses replicas hold on them:
// <prefix><network>/<address> -> the replica ("webapp-2").
inline constexpr const char* k_networks_prefix = "/registry/networks/";
inline constexpr const char* k_addresses_prefix = "/registry/addresses/";

// Durable queues (apply plans them; the server's queues declare what is stored here).
inline constexpr const char* k_queues_prefix = "/registry/queues/";

}  // namespace blixard
