// Links the installed libblixard: opens an embedded cluster and parses a size.
#include <blixard/blixard.hpp>

#include <filesystem>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  auto cluster = blixard::Cluster::local(argv[1]);
  std::cout << "blixard " << blixard::version() << ", functions: " << cluster.functions().size()
            << ", 4G = " << blixard::parse_size_mib("4G", "size") << " MiB\n";
  cluster.close();
  return 0;
}
