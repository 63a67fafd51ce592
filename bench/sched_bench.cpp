// Placement throughput at 10,000 simulated nodes (100 rack values, 10 zones): the bitmap scheduler
// against the linear-scan reference scheduler, in the same binary over the same request stream.
// Every placement is recorded (allocate) and the oldest of the last 2,000 released, so the index
// is updated as in a running cluster and the cluster never fills up.
#include <benchmark/benchmark.h>

#include <deque>
#include <random>
#include <string>
#include <vector>

#include "sched/cluster.hpp"
#include "sched/place.hpp"

namespace {

using blixard::sched::Cluster;
using blixard::sched::Decision;
using blixard::sched::NodeId;
using blixard::sched::NodeInfo;
using blixard::sched::Operator;
using blixard::sched::Request;
using blixard::sched::Resources;
using blixard::sched::Strategy;

constexpr int k_nodes = 10000;
constexpr int k_racks = 100;
constexpr int k_zones = 10;
constexpr std::size_t k_live = 2000;  // placements kept allocated

Cluster make_cluster() {
  std::mt19937 rng(42);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Cluster c;
  for (int i = 0; i < k_nodes; ++i) {
    NodeInfo n;
    n.name = "node" + std::to_string(i);
    n.capacity = {static_cast<std::uint64_t>(uniform(16, 128)) * 1024,
                  static_cast<std::uint32_t>(uniform(8, 64))};
    n.allocated = {n.capacity.memory_mib * static_cast<std::uint64_t>(uniform(0, 60)) / 100,
                   n.capacity.vcpu * static_cast<std::uint32_t>(uniform(0, 60)) / 100};
    n.labels["rack"] = "r" + std::to_string(i % k_racks);
    n.labels["zone"] = "az" + std::to_string((i / k_racks) % k_zones);
    n.labels["storage"] = uniform(0, 1) ? "fast" : "slow";
    n.labels["arch"] = "x86_64";
    if (uniform(1, 10) == 1) n.labels["gpu"] = "available";
    if (uniform(1, 50) == 1) n.taints.push_back({"dedicated", "db"});
    if (uniform(1, 20) == 1) n.data_paths.emplace_back("/data");
    n.cordoned = uniform(1, 100) == 1;
    c.add_node(std::move(n));
  }
  for (int i = 0; i < k_nodes; ++i) {
    for (int j = 1; j <= 4; ++j) {
      c.set_latency(static_cast<NodeId>(i), static_cast<NodeId>((i + j * 37) % k_nodes),
                    static_cast<std::uint32_t>(uniform(50, 5000)));
    }
  }
  return c;
}

enum class Mix {
  selector_spread,  // nodeSelector rack=… (100 nodes) + spreadAcross zone + a preferred term
  selector,         // nodeSelector rack=… and storage=fast, binpack
  spread_only,      // no selector: spreadAcross zone over all 10,000 nodes
  no_fit,           // a selector no node satisfies with the memory it needs: the explanation
};

std::vector<Request> make_requests(Mix mix) {
  std::mt19937 rng(7);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::vector<Request> out;
  for (int i = 0; i < 4096; ++i) {
    Request r;
    r.memory_mib = static_cast<std::uint64_t>(uniform(1, 16)) * 128;
    r.vcpu = static_cast<std::uint32_t>(uniform(1, 2));
    const std::string rack = "r" + std::to_string(uniform(0, k_racks - 1));
    switch (mix) {
      case Mix::selector_spread:
        r.node_selector["rack"] = rack;
        r.spread_across = "availability-zones";
        r.preferred.push_back({{"gpu", Operator::in, {"available"}}, 100});
        r.data_path = "/data/input.jpg";
        r.caller = static_cast<NodeId>(uniform(0, k_nodes - 1));
        break;
      case Mix::selector:
        r.node_selector["rack"] = rack;
        r.node_selector["storage"] = "fast";
        break;
      case Mix::spread_only:
        r.spread_across = "zone";
        r.strategy = Strategy::spread;
        break;
      case Mix::no_fit:
        r.node_selector["rack"] = rack;
        r.memory_mib = 1u << 20;
        break;
    }
    // The group's existing instances: a few, anywhere.
    for (int g = 0; g < 4; ++g) {
      r.group.emplace_back(static_cast<NodeId>(uniform(0, k_nodes - 1)), 1);
    }
    out.push_back(std::move(r));
  }
  return out;
}

const Cluster& base_cluster() {
  static const Cluster c = make_cluster();
  return c;
}

template <Decision (*Place)(const Cluster&, const Request&)>
void run(benchmark::State& state, Mix mix) {
  Cluster c = base_cluster();
  const std::vector<Request> requests = make_requests(mix);
  std::deque<std::pair<NodeId, Resources>> live;
  std::size_t i = 0;
  std::int64_t placed = 0;
  for (auto _ : state) {
    const Request& r = requests[i++ % requests.size()];
    Decision d = Place(c, r);
    if (d.node) {
      ++placed;
      c.allocate(*d.node, r.resources());
      live.emplace_back(*d.node, r.resources());
      if (live.size() > k_live) {
        c.release(live.front().first, live.front().second);
        live.pop_front();
      }
    }
    benchmark::DoNotOptimize(d);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["placed"] =
      benchmark::Counter(static_cast<double>(placed) / static_cast<double>(state.iterations()));
}

void BM_PlaceBitmap(benchmark::State& state, Mix mix) { run<blixard::sched::place>(state, mix); }
void BM_PlaceLinear(benchmark::State& state, Mix mix) {
  run<blixard::sched::place_linear>(state, mix);
}

BENCHMARK_CAPTURE(BM_PlaceBitmap, selector_spread, Mix::selector_spread);
BENCHMARK_CAPTURE(BM_PlaceLinear, selector_spread, Mix::selector_spread);
BENCHMARK_CAPTURE(BM_PlaceBitmap, selector, Mix::selector);
BENCHMARK_CAPTURE(BM_PlaceLinear, selector, Mix::selector);
BENCHMARK_CAPTURE(BM_PlaceBitmap, spread_only, Mix::spread_only);
BENCHMARK_CAPTURE(BM_PlaceLinear, spread_only, Mix::spread_only);
BENCHMARK_CAPTURE(BM_PlaceBitmap, no_fit, Mix::no_fit);
BENCHMARK_CAPTURE(BM_PlaceLinear, no_fit, Mix::no_fit);

}  // namespace

BENCHMARK_MAIN();
