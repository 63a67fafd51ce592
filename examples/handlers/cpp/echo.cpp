// A native Blixard handler: answers every event with itself. Build:
//   c++ -std=c++17 -O2 -static-libstdc++ -static-libgcc echo.cpp -o echo
// (a shared libstdc++ adds about 1.5 ms to every cold start); run it with `runtime: exec`,
// `command: [./echo]`, `code: <this directory>`.
#include "blixard_handler.hpp"

int main() {
  return blixard_handler::serve([](const blixard_handler::Request& request) {
    if (request.payload == "\"fail\"") throw blixard_handler::Failure("EchoError", "asked to fail");
    return request.payload.empty() ? std::string("null") : request.payload;
  });
}
