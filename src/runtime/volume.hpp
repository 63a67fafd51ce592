// A replica's volume on the node (DESIGN §6): where it lives in its pool's directory, made on
// first use, and removed when the volume is deleted. The sandbox driver keeps a volume as a
// directory it binds into the replica; the libvirt driver as an ext4 disk image (made through
// libvirt's storage API, libvirt_driver.cpp) attached as virtio-blk.
#pragma once

#include <filesystem>
#include <string>

#include "blixard/v1/volume.pb.h"

namespace blixard::runtime {

inline constexpr const char* k_volume_directory = "directory";
inline constexpr const char* k_volume_image = "ext4-image";

// The volume's path in its pool: "<pool>/<name>" (a directory) or "<pool>/<name>.img".
std::filesystem::path volume_path(const v1::VolumeAttachment& volume, const std::string& format);

// The directory of a sandbox replica's volume, made if missing, its files handed to `uid`:`gid`
// (each start of a replica runs as a host uid of its own). Throws invalid_spec when the volume
// was made as a disk image (for a guest), unavailable when the pool's directory cannot be made.
std::filesystem::path prepare_volume_directory(const v1::VolumeAttachment& volume, long uid,
                                               long gid);

// Refuses a start whose fencing epoch (volume.writer_epoch, a set's primary epoch) is older than
// the newest one that took the volume, recorded beside it in the pool ("<pool>/.<name>.epoch",
// root's, on the same shared storage as the data: every node sees it), and records it otherwise.
// Throws Error(conflict) for a fenced start; nothing happens for writer_epoch 0.
void fence_volume(const v1::VolumeAttachment& volume);

// Removes the volume's data, whichever format it was made as; idempotent.
void remove_volume_data(const v1::VolumeAttachment& volume);

}  // namespace blixard::runtime
