// Owners of libarchive's handles (functions' code archives, guests' initramfs): a writer, a
// reader and a disk writer are each freed by their own function; each owner knows which it holds.
#pragma once

#include <archive.h>
#include <archive_entry.h>

#include <memory>

namespace blixard::libarchive {

struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};
using Entry = std::unique_ptr<archive_entry, EntryFree>;

struct WriteArchive {
  archive* a = archive_write_new();
  WriteArchive() = default;
  WriteArchive(const WriteArchive&) = delete;
  WriteArchive& operator=(const WriteArchive&) = delete;
  ~WriteArchive() { archive_write_free(a); }
};
struct ReadArchive {
  archive* a = archive_read_new();
  ReadArchive() = default;
  ReadArchive(const ReadArchive&) = delete;
  ReadArchive& operator=(const ReadArchive&) = delete;
  ~ReadArchive() { archive_read_free(a); }
};
struct DiskArchive {
  archive* a = archive_write_disk_new();
  DiskArchive() = default;
  DiskArchive(const DiskArchive&) = delete;
  DiskArchive& operator=(const DiskArchive&) = delete;
  ~DiskArchive() { archive_write_free(a); }
};

}  // namespace blixard::libarchive
