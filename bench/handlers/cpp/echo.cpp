// The native echo handler the benchmarks time: answers every event with itself, through
// examples/handlers/cpp/blixard_handler.hpp (built by bench/CMakeLists.txt as bench_echo_handler).
#include "blixard_handler.hpp"

int main() {
  return blixard_handler::serve([](const blixard_handler::Request& request) {
    return request.payload.empty() ? std::string("null") : request.payload;
  });
}
