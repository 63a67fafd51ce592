// The placement scheduler (src/sched): each filter and score with the reasons it gives, the
// protobuf mapping, and properties over seeded random clusters and request streams checked
// against the linear reference scheduler.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "sched/cluster.hpp"
#include "sched/place.hpp"
#include "sched/proto.hpp"

namespace {

using namespace blixard::sched;  // NOLINT(google-build-using-namespace): the layer under test

NodeInfo node(std::string name, std::uint64_t memory_mib = 4096, std::uint32_t vcpu = 4,
              std::map<std::string, std::string> labels = {}) {
  NodeInfo n;
  n.name = std::move(name);
  n.capacity = {memory_mib, vcpu};
  n.labels = std::move(labels);
  return n;
}

Request ask(std::uint64_t memory_mib = 128, std::uint32_t vcpu = 1) {
  Request r;
  r.memory_mib = memory_mib;
  r.vcpu = vcpu;
  return r;
}

bool has_reason(const Decision& d, const std::string& reason) {
  return std::find(d.reasons.begin(), d.reasons.end(), reason) != d.reasons.end();
}

// Both schedulers, which must agree on everything they say.
Decision place_both(const Cluster& c, const Request& r) {
  Decision a = place(c, r);
  Decision b = place_linear(c, r);
  EXPECT_EQ(a.node, b.node) << a.summary() << " | " << b.summary();
  EXPECT_EQ(a.score, b.score) << a.summary() << " | " << b.summary();
  EXPECT_EQ(a.reasons, b.reasons);
  EXPECT_EQ(a.feasible, b.feasible);
  EXPECT_EQ(a.filtered, b.filtered);
  return a;
}

// ---- the index ----

TEST(SchedCluster, GivesDenseIdsAndReusesTheLowestFreeOne) {
  Cluster c;
  EXPECT_EQ(c.add_node(node("a")), 0u);
  EXPECT_EQ(c.add_node(node("b")), 1u);
  EXPECT_EQ(c.add_node(node("c")), 2u);
  c.remove_node(1);
  c.remove_node(0);
  EXPECT_FALSE(c.contains(0));
  EXPECT_EQ(c.add_node(node("d")), 0u);
  EXPECT_EQ(c.add_node(node("e")), 1u);
  EXPECT_EQ(c.size(), 3u);
  EXPECT_EQ(c.id_bound(), 3u);
  EXPECT_EQ(c.find("e"), 1u);
  EXPECT_FALSE(c.find("b"));
}

TEST(SchedCluster, RefusesEmptyAndDuplicateNames) {
  Cluster c;
  c.add_node(node("a"));
  const NodeId b = c.add_node(node("b"));
  EXPECT_THROW(c.add_node(node("a")), std::invalid_argument);
  EXPECT_THROW(c.add_node(node("")), std::invalid_argument);
  EXPECT_THROW(c.update_node(b, node("a")), std::invalid_argument);
  EXPECT_THROW(c.remove_node(7), std::out_of_range);
  c.update_node(b, node("b2"));
  EXPECT_EQ(c.find("b2"), b);
  EXPECT_FALSE(c.find("b"));
}

TEST(SchedCluster, UpdatedLabelsAndRemovedNodesLeaveTheBitmaps) {
  Cluster c;
  const NodeId a = c.add_node(node("a", 4096, 4, {{"zone", "az1"}}));
  const NodeId b = c.add_node(node("b", 4096, 4, {{"zone", "az1"}}));
  Request r = ask();
  r.node_selector = {{"zone", "az1"}};
  EXPECT_EQ(place_both(c, r).feasible, 2u);
  c.update_node(a, node("a", 4096, 4, {{"zone", "az2"}}));
  EXPECT_EQ(place_both(c, r).node, b);
  c.remove_node(b);
  EXPECT_FALSE(place_both(c, r).placed());
  r.node_selector = {{"zone", "az2"}};
  EXPECT_EQ(place_both(c, r).node, a);
}

TEST(SchedCluster, AllocateAndReleaseMoveFreeCapacity) {
  Cluster c;
  const NodeId a = c.add_node(node("a", 1000, 2));
  c.allocate(a, {600, 1});
  EXPECT_EQ(c.free(a), (Resources{400, 1}));
  EXPECT_FALSE(place_both(c, ask(500, 1)).placed());
  c.release(a, {600, 1});
  EXPECT_EQ(place_both(c, ask(500, 1)).node, a);
  c.release(a, {10, 10});  // saturates
  EXPECT_EQ(c.node(a).allocated, (Resources{0, 0}));
  c.allocate(a, {5000, 0});  // bookkeeping past capacity: no room left, not an error
  EXPECT_EQ(c.free(a).memory_mib, 0u);
}

// ---- filters ----

TEST(SchedFilter, ExplainsKubeStyleWhyNoNodeFits) {
  Cluster c;
  c.add_node(node("small1", 256));
  c.add_node(node("small2", 400));
  const NodeId big = c.add_node(node("big", 8192));
  c.set_cordoned(big, true);
  const Decision d = place_both(c, ask(512));
  ASSERT_FALSE(d.placed());
  EXPECT_EQ(d.summary(), "0 of 3 nodes fit: 2 lack memory (need 512 MiB), 1 cordoned");
  EXPECT_EQ(d.filtered, (std::vector<FilterCount>{{Filter::cordoned, 1}, {Filter::memory, 2}}));
}

TEST(SchedFilter, AnEmptyClusterSaysSo) {
  Cluster c;
  EXPECT_EQ(place_both(c, ask()).summary(), "0 of 0 nodes fit: the cluster has no nodes");
}

TEST(SchedFilter, ChecksTheBoundaryBucketExactly) {
  // 600, 700 and 1023 MiB free share the bucket [512, 1024); a 650 MiB request fits two of them.
  Cluster c;
  c.add_node(node("n600", 600));
  const NodeId n700 = c.add_node(node("n700", 700));
  c.add_node(node("n1023", 1023));
  c.add_node(node("n4096", 4096));
  const Decision d = place_both(c, ask(650, 0));
  EXPECT_EQ(d.feasible, 3u);
  EXPECT_EQ(d.node, n700);  // binpack: the fullest that fits
  // A power of two needs no exact check: its bucket's lower bound is the request.
  EXPECT_EQ(place_both(c, ask(1024, 0)).node, c.find("n4096"));
  EXPECT_EQ(place_both(c, ask(600, 0)).node, c.find("n600"));
  EXPECT_FALSE(place_both(c, ask(4097, 0)).placed());
}

TEST(SchedFilter, RejectsNodesWithoutVcpu) {
  Cluster c;
  c.add_node(node("one", 4096, 1));
  const NodeId three = c.add_node(node("three", 4096, 3));
  c.allocate(three, {0, 1});
  EXPECT_EQ(place_both(c, ask(128, 2)).node, three);
  EXPECT_EQ(place_both(c, ask(128, 3)).summary(), "0 of 2 nodes fit: 2 lack vcpu (need 3)");
}

TEST(SchedFilter, NodeSelectorNeedsEveryPair) {
  Cluster c;
  c.add_node(node("fast-az1", 4096, 4, {{"storage", "fast"}, {"zone", "az1"}}));
  const NodeId want = c.add_node(node("fast-az2", 4096, 4, {{"storage", "fast"}, {"zone", "az2"}}));
  c.add_node(node("slow-az2", 4096, 4, {{"storage", "slow"}, {"zone", "az2"}}));
  Request r = ask();
  r.node_selector = {{"storage", "fast"}, {"zone", "az2"}};
  EXPECT_EQ(place_both(c, r).node, want);
  r.node_selector = {{"storage", "nvme"}};
  EXPECT_EQ(place_both(c, r).summary(),
            "0 of 3 nodes fit: 3 do not match nodeSelector storage=nvme");
}

TEST(SchedFilter, RequiredAffinityInNotInExists) {
  Cluster c;
  const NodeId a = c.add_node(node("a", 4096, 4, {{"arch", "x86_64"}, {"kvm", "true"}}));
  const NodeId b = c.add_node(node("b", 4096, 4, {{"arch", "aarch64"}}));
  const NodeId d = c.add_node(node("d", 4096, 4, {}));
  auto feasible = [&](std::vector<MatchExpression> required) {
    Request r = ask();
    r.required = std::move(required);
    std::set<NodeId> out;
    Cluster copy = c;
    for (Decision p = place_both(copy, r); p.placed(); p = place_both(copy, r)) {
      out.insert(*p.node);
      copy.set_cordoned(*p.node, true);
    }
    return out;
  };
  EXPECT_EQ(feasible({{"arch", Operator::in, {"x86_64", "aarch64"}}}), (std::set<NodeId>{a, b}));
  EXPECT_EQ(feasible({{"arch", Operator::not_in, {"x86_64"}}}), (std::set<NodeId>{b, d}));
  EXPECT_EQ(feasible({{"kvm", Operator::exists, {}}}), (std::set<NodeId>{a}));
  EXPECT_EQ(feasible({{"kvm", Operator::does_not_exist, {}}}), (std::set<NodeId>{b, d}));
  EXPECT_EQ(feasible({{"arch", Operator::in, {"x86_64"}}, {"kvm", Operator::does_not_exist, {}}}),
            (std::set<NodeId>{}));
  Request r = ask();
  r.required = {{"gpu", Operator::exists, {}}};
  EXPECT_EQ(place_both(c, r).summary(), "0 of 3 nodes fit: 3 do not match required affinity");
}

TEST(SchedFilter, TaintsRepelRequestsThatDoNotTolerateThem) {
  Cluster c;
  NodeInfo db = node("db", 8192);
  db.taints = {{"dedicated", "db"}};
  const NodeId dbid = c.add_node(db);
  NodeInfo gpu = node("gpu", 8192);
  gpu.taints = {{"gpu", "nvidia"}};
  const NodeId gpuid = c.add_node(gpu);
  Request r = ask();
  EXPECT_EQ(place_both(c, r).summary(), "0 of 2 nodes fit: 2 have taints not tolerated");
  r.tolerations = {{"dedicated", "db"}};
  EXPECT_EQ(place_both(c, r).node, dbid);
  r.tolerations = {{"dedicated", "web"}};
  EXPECT_FALSE(place_both(c, r).placed());
  r.tolerations = {{"gpu", ""}};  // any value
  EXPECT_EQ(place_both(c, r).node, gpuid);
  r.tolerations = {{"", ""}};  // everything
  EXPECT_EQ(place_both(c, r).feasible, 2u);
}

TEST(SchedFilter, SkipsNodesNotReadyCordonedOrDraining) {
  Cluster c;
  const NodeId lost = c.add_node(node("lost"));
  const NodeId cordoned = c.add_node(node("cordoned"));
  const NodeId draining = c.add_node(node("draining"));
  const NodeId ok = c.add_node(node("ok", 1024));
  c.set_ready(lost, false);
  c.set_cordoned(cordoned, true);
  c.set_draining(draining, true);
  EXPECT_EQ(place_both(c, ask()).node, ok);
  EXPECT_EQ(
      place_both(c, ask(2048)).summary(),
      "0 of 4 nodes fit: 1 not ready, 1 cordoned, 1 draining, 1 lacks memory (need 2048 MiB)");
  c.set_cordoned(cordoned, false);
  EXPECT_EQ(place_both(c, ask(2048)).node, cordoned);
}

// ---- scores ----

TEST(SchedScore, BinpackPrefersTheFullestNodeAndSpreadTheEmptiest) {
  Cluster c;
  const NodeId empty = c.add_node(node("empty", 4096, 4));
  const NodeId half = c.add_node(node("half", 4096, 4));
  c.allocate(half, {2048, 2});
  Request r = ask(1024, 1);
  Decision d = place_both(c, r);
  EXPECT_EQ(d.node, half);
  EXPECT_TRUE(has_reason(d, "binpack: 75% allocated after placement")) << d.summary();
  r.strategy = Strategy::spread;
  d = place_both(c, r);
  EXPECT_EQ(d.node, empty);
  EXPECT_TRUE(has_reason(d, "spread: 25% allocated after placement")) << d.summary();
}

TEST(SchedScore, TiesGoToTheLowestId) {
  Cluster c;
  c.add_node(node("z"));
  c.add_node(node("a"));
  EXPECT_EQ(place_both(c, ask()).node_name, "z");
}

TEST(SchedScore, PreferredAffinityWinsTheGpuNode) {
  // Scenario 3: "Run on any node, prefer those with GPU".
  Cluster c;
  const NodeId busy = c.add_node(node("node1", 4096, 4));
  c.allocate(busy, {3000, 3});  // binpack alone would pick it
  const NodeId gpu = c.add_node(node("node2", 4096, 4, {{"gpu", "available"}}));
  Request r = ask();
  r.preferred = {{{"gpu", Operator::in, {"available"}}, 100}};
  const Decision d = place_both(c, r);
  EXPECT_EQ(d.node, gpu);
  EXPECT_EQ(d.reasons.front(), "gpu=available");
  c.set_cordoned(gpu, true);
  EXPECT_EQ(place_both(c, r).node, busy);  // a preference, not a requirement
}

TEST(SchedScore, PreferredTermsWeighByTheirWeights) {
  Cluster c;
  c.add_node(node("ssd", 4096, 4, {{"disk", "ssd"}}));
  const NodeId gpu = c.add_node(node("gpu", 4096, 4, {{"gpu", "available"}}));
  Request r = ask();
  r.preferred = {{{"disk", Operator::in, {"ssd"}}, 10}, {{"gpu", Operator::exists, {}}, 90}};
  const Decision d = place_both(c, r);
  EXPECT_EQ(d.node, gpu);
  EXPECT_TRUE(has_reason(d, "has gpu"));
}

TEST(SchedScore, NodesHoldingTheDataPathScoreHigher) {
  Cluster c;
  NodeInfo database = node("database");
  database.data_paths = {"/database"};  // not a directory above /data/input.jpg
  c.add_node(database);
  NodeInfo data = node("data");
  data.data_paths = {"/data/", "/var/lib"};
  const NodeId holder = c.add_node(data);
  Request r = ask();
  r.data_path = "/data/input.jpg";
  Decision d = place_both(c, r);
  EXPECT_EQ(d.node, holder);
  EXPECT_TRUE(has_reason(d, "holds /data")) << d.summary();
  r.data_path = "/database/x";
  EXPECT_EQ(place_both(c, r).node_name, "database");
  r.data_path = "/elsewhere";
  EXPECT_EQ(place_both(c, r).reasons.size(), 1u);  // only the fit reason
}

TEST(SchedScore, NodesNearerTheCallerScoreHigher) {
  Cluster c;
  const NodeId caller = c.add_node(node("caller", 64));  // too small to take the work
  const NodeId far = c.add_node(node("far"));
  const NodeId near = c.add_node(node("near"));
  c.set_latency(caller, far, 40'000);  // within 5 ms all are near: this one is not
  c.set_latency(caller, near, 300);
  Request r = ask();
  r.caller = caller;
  Decision d = place_both(c, r);
  EXPECT_EQ(d.node, near);
  EXPECT_TRUE(has_reason(d, "0.3 ms from caller")) << d.summary();
  EXPECT_EQ(c.latency(near, caller), 300u);
  r.memory_mib = 32;
  d = place_both(c, r);
  EXPECT_EQ(d.node, caller);
  EXPECT_TRUE(has_reason(d, "on the caller's node")) << d.summary();
  c.remove_node(near);
  EXPECT_FALSE(c.latency(caller, 2));
}

TEST(SchedScore, WithoutACallerNodeTheServersRoundTripsCount) {
  // The server that takes the calls runs no node of its own (or the work does not fit it): each
  // node's measured round trip to it decides between equals. A node not measured yet (it just
  // joined) is taken as near, not far.
  Cluster c;
  const NodeId far = c.add_node(node("far"));
  const NodeId unmeasured = c.add_node(node("unmeasured"));
  const NodeId near = c.add_node(node("near"));
  c.set_server_latency(far, 20'000);
  c.set_server_latency(near, 300);
  Request r = ask();
  EXPECT_EQ(place_both(c, r).node, far) << "latency counted though not asked for";
  r.from_server = true;
  Decision d = place_both(c, r);
  EXPECT_EQ(d.node, unmeasured) << "a new node lost to its unknown latency";
  c.set_cordoned(unmeasured, true);
  d = place_both(c, r);
  EXPECT_EQ(d.node, near);
  EXPECT_TRUE(has_reason(d, "0.3 ms from caller")) << d.summary();
  c.set_server_latency(near, 0);  // the server's own node
  d = place_both(c, r);
  EXPECT_TRUE(has_reason(d, "on the caller's node")) << d.summary();
  // A caller node, when there is one, is what counts.
  r.caller = far;
  EXPECT_EQ(place_both(c, r).node, far);
  c.remove_node(near);
  EXPECT_EQ(c.add_node(node("again")), near);
  EXPECT_FALSE(c.server_latency(near)) << "a new node kept its predecessor's measurement";
}

TEST(SchedScore, DataLocalityAndLatencyDecideWhenAllElseIsEqual) {
  // Scenario 0: the node holding /data and nearest the caller wins; the reasons say why.
  Cluster c;
  const NodeId n1 = c.add_node(node("nixos-node1"));
  c.add_node(node("nixos-node2"));
  NodeInfo n3 = node("nixos-node3");
  n3.data_paths = {"/data"};
  const NodeId third = c.add_node(n3);
  c.set_latency(n1, third, 300);
  c.set_latency(n1, 1, 250);
  Request r = ask();
  r.data_path = "/data/input.jpg";
  r.caller = n1;
  c.set_cordoned(n1, true);
  const Decision d = place_both(c, r);
  EXPECT_EQ(d.summary(),
            "placed on nixos-node3: holds /data, 0.3 ms from caller, binpack: 14% allocated after "
            "placement");
}

TEST(SchedSpread, PicksTheZoneWithTheFewestOfTheGroup) {
  Cluster c;
  const NodeId a1 = c.add_node(node("a1", 4096, 4, {{"zone", "az1"}}));
  const NodeId b1 = c.add_node(node("b1", 4096, 4, {{"zone", "az2"}}));
  const NodeId c1 = c.add_node(node("c1", 4096, 4, {{"zone", "az3"}}));
  Request r = ask();
  r.spread_across = "availability-zones";
  r.group = {{a1, 1}, {c1, 1}};
  const Decision d = place_both(c, r);
  EXPECT_EQ(d.node, b1);
  EXPECT_TRUE(has_reason(d, "zone az2 has 0 of 2")) << d.summary();
}

TEST(SchedSpread, SkipsAZoneWithNoRoom) {
  Cluster c;
  const NodeId a1 = c.add_node(node("a1", 4096, 4, {{"zone", "az1"}}));
  c.add_node(node("b1", 256, 4, {{"zone", "az2"}}));  // emptiest zone, but too small
  const NodeId c1 = c.add_node(node("c1", 4096, 4, {{"zone", "az3"}}));
  Request r = ask(1024);
  r.spread_across = "zone";
  r.group = {{a1, 2}, {c1, 1}};
  const Decision d = place_both(c, r);
  EXPECT_EQ(d.node, c1);
  EXPECT_TRUE(has_reason(d, "zone az3 has 1 of 3")) << d.summary();
}

TEST(SchedSpread, AClusterWithoutTheLabelStillPlaces) {
  Cluster c;
  const NodeId only = c.add_node(node("only"));
  Request r = ask();
  r.spread_across = "zone";
  const Decision d = place_both(c, r);
  EXPECT_EQ(d.node, only);
  EXPECT_TRUE(has_reason(d, "no node that fits has label zone")) << d.summary();
}

TEST(SchedSpread, ScoresWithinTheChosenZone) {
  Cluster c;
  for (int z = 1; z <= 3; ++z) {
    for (int i = 0; i < 100; ++i) {
      c.add_node(node("z" + std::to_string(z) + "n" + std::to_string(i), 4096, 4,
                      {{"zone", "az" + std::to_string(z)}}));
    }
  }
  const NodeId fullest = *c.find("z2n17");
  c.allocate(fullest, {2048, 1});
  Request r = ask();
  r.spread_across = "zone";
  r.group = {{*c.find("z1n0"), 1}, {*c.find("z3n4"), 1}};
  EXPECT_EQ(place_both(c, r).node, fullest);  // many nodes per domain: the intersection path
}

// ---- the protobuf mapping ----

TEST(SchedProto, MapsAFunctionsPlacementAndResources) {
  blixard::v1::FunctionSpec spec;
  spec.set_memory_mib(256);
  spec.set_vcpu(2);
  auto& p = *spec.mutable_placement();
  (*p.mutable_node_selector())["storage"] = "fast";
  (*p.mutable_node_affinity()->mutable_required())["arch"] = "x86_64";
  (*p.mutable_node_affinity()->mutable_preferred())["gpu"] = "available";
  auto* t = p.add_tolerations();
  t->set_key("dedicated");
  p.set_spread_across("availability-zones");
  p.set_strategy("spread");
  const Request r = request_from(spec);
  EXPECT_EQ(r.memory_mib, 256u);
  EXPECT_EQ(r.vcpu, 2u);
  EXPECT_EQ(r.node_selector, (std::map<std::string, std::string>{{"storage", "fast"}}));
  ASSERT_EQ(r.required.size(), 1u);
  EXPECT_EQ(r.required[0].key, "arch");
  EXPECT_EQ(r.required[0].values, std::vector<std::string>{"x86_64"});
  ASSERT_EQ(r.preferred.size(), 1u);
  EXPECT_EQ(r.preferred[0].match.key, "gpu");
  ASSERT_EQ(r.tolerations.size(), 1u);
  EXPECT_EQ(r.tolerations[0].key, "dedicated");
  EXPECT_EQ(r.spread_across, "zone");
  EXPECT_EQ(r.strategy, Strategy::spread);
}

TEST(SchedProto, DefaultsResourcesAsValidationDoes) {
  blixard::v1::FunctionSpec fn;
  EXPECT_EQ(request_from(fn).memory_mib, 128u);
  fn.mutable_microvm()->set_mem(96);
  EXPECT_EQ(request_from(fn).memory_mib, 96u);
  blixard::v1::VmSpec vm;
  const Request r = request_from(vm);
  EXPECT_EQ(r.memory_mib, 512u);
  EXPECT_EQ(r.vcpu, 1u);
  EXPECT_EQ(r.strategy, Strategy::binpack);
}

TEST(SchedProto, MapsAStoredNode) {
  blixard::v1::Node n;
  n.mutable_metadata()->set_name("node1");
  (*n.mutable_spec()->mutable_labels())["zone"] = "az1";
  n.mutable_spec()->set_memory_mib(8192);
  n.mutable_spec()->set_vcpu(8);
  auto* t = n.mutable_spec()->add_taints();
  t->set_key("dedicated");
  t->set_value("db");
  n.mutable_status()->set_phase("Draining");
  n.mutable_status()->set_allocated_memory_mib(1024);
  const NodeInfo info = node_from(n);
  EXPECT_EQ(info.name, "node1");
  EXPECT_EQ(info.labels.at("zone"), "az1");
  // vCPUs are overcommitted (k_vcpu_allocation_ratio per core), memory is not.
  EXPECT_EQ(info.capacity, (Resources{8192, 8 * k_vcpu_allocation_ratio}));
  EXPECT_EQ(info.allocated, (Resources{1024, 0}));
  EXPECT_EQ(info.taints, (std::vector<Taint>{{"dedicated", "db"}}));
  EXPECT_TRUE(info.ready);
  EXPECT_TRUE(info.draining);
  n.mutable_status()->set_phase("Lost");
  EXPECT_FALSE(node_from(n).ready);
}

// ---- properties over seeded random clusters and request streams ----

struct World {
  std::mt19937 rng;
  Cluster cluster;
  std::vector<std::string> zones;
  int next_name = 0;

  explicit World(unsigned seed) : rng(seed) {}

  int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }
  bool chance(int percent) { return uniform(1, 100) <= percent; }

  NodeInfo random_node() {
    NodeInfo n;
    n.name = "n" + std::to_string(next_name++);
    n.capacity = {static_cast<std::uint64_t>(uniform(1, 64)) * 256,
                  static_cast<std::uint32_t>(uniform(0, 16))};
    n.labels["zone"] = "az" + std::to_string(uniform(1, 4));
    n.labels["rack"] = "r" + std::to_string(uniform(1, 12));
    if (chance(20)) n.labels["gpu"] = "available";
    if (chance(50)) n.labels["storage"] = chance(50) ? "fast" : "slow";
    if (chance(10)) n.labels.erase("zone");
    if (chance(15)) n.taints.push_back({"dedicated", chance(50) ? "db" : "web"});
    if (chance(5)) n.taints.push_back({"gpu", "nvidia"});
    if (chance(30)) n.data_paths.emplace_back(chance(50) ? "/data" : "/data/images");
    if (chance(10)) n.data_paths.emplace_back("vol/pg");
    n.ready = !chance(5);
    n.cordoned = chance(5);
    n.draining = chance(3);
    return n;
  }

  std::vector<NodeId> live() const {
    std::vector<NodeId> ids;
    for (NodeId id = 0; id < cluster.id_bound(); ++id) {
      if (cluster.contains(id)) ids.push_back(id);
    }
    return ids;
  }

  void populate(int nodes) {
    for (int i = 0; i < nodes; ++i) cluster.add_node(random_node());
    auto ids = live();
    for (int i = 0; i < nodes * 2; ++i) {
      cluster.set_latency(ids[uniform(0, nodes - 1)], ids[uniform(0, nodes - 1)],
                          static_cast<std::uint32_t>(uniform(20, 20000)));
    }
    for (NodeId id : ids) {
      if (chance(70)) cluster.set_server_latency(id, static_cast<std::uint32_t>(uniform(0, 20000)));
    }
  }

  Request random_request(const std::map<NodeId, std::uint32_t>& group) {
    Request r;
    r.memory_mib = static_cast<std::uint64_t>(uniform(1, 3000));
    r.vcpu = static_cast<std::uint32_t>(uniform(0, 4));
    if (chance(30)) r.node_selector["storage"] = chance(70) ? "fast" : "slow";
    if (chance(10)) r.node_selector["rack"] = "r" + std::to_string(uniform(1, 13));
    if (chance(15)) r.required.push_back({"zone", Operator::in, {"az1", "az2"}});
    if (chance(10)) r.required.push_back({"rack", Operator::not_in, {"r1", "r2", "r3"}});
    if (chance(5)) r.required.push_back({"gpu", Operator::exists, {}});
    if (chance(5)) r.required.push_back({"gpu", Operator::does_not_exist, {}});
    if (chance(30)) r.tolerations.push_back({"dedicated", chance(50) ? "db" : ""});
    if (chance(5)) r.tolerations.push_back({"", ""});
    if (chance(30)) r.strategy = Strategy::spread;
    if (chance(50)) r.spread_across = chance(50) ? "availability-zones" : "rack";
    if (chance(30)) {
      r.preferred.push_back(
          {{"gpu", Operator::in, {"available"}}, static_cast<std::uint32_t>(uniform(1, 100))});
    }
    if (chance(20)) {
      r.preferred.push_back({{"storage", Operator::in, {"fast", "slow"}},
                             static_cast<std::uint32_t>(uniform(1, 100))});
    }
    if (chance(30)) r.data_path = chance(50) ? "/data/images/x.jpg" : "/data/input.jpg";
    if (chance(5)) r.data_path = "vol/pg";
    if (chance(40)) {
      auto ids = live();
      if (!ids.empty()) r.caller = ids[uniform(0, static_cast<int>(ids.size()) - 1)];
    }
    r.from_server = chance(40);
    r.group.assign(group.begin(), group.end());
    return r;
  }

  // Churn that exercises every incremental path of the index.
  void mutate() {
    auto ids = live();
    if (ids.empty()) return;
    const NodeId id = ids[uniform(0, static_cast<int>(ids.size()) - 1)];
    switch (uniform(0, 6)) {
      case 0:
        cluster.set_cordoned(id, !cluster.node(id).cordoned);
        break;
      case 1:
        cluster.set_ready(id, !cluster.node(id).ready);
        break;
      case 2:
        cluster.set_draining(id, !cluster.node(id).draining);
        break;
      case 3: {
        NodeInfo n = random_node();
        n.name = cluster.node(id).name;
        n.allocated = cluster.node(id).allocated;
        cluster.update_node(id, n);
        break;
      }
      case 4:
        cluster.remove_node(id);
        break;
      case 5:
        cluster.add_node(random_node());
        break;
      default:
        cluster.release(id, {static_cast<std::uint64_t>(uniform(0, 2048)),
                             static_cast<std::uint32_t>(uniform(0, 2))});
    }
  }
};

bool selector_holds(const NodeInfo& n, const Request& r) {
  return std::all_of(r.node_selector.begin(), r.node_selector.end(), [&](const auto& kv) {
    auto it = n.labels.find(kv.first);
    return it != n.labels.end() && it->second == kv.second;
  });
}

bool taints_tolerated(const NodeInfo& n, const Request& r) {
  return std::all_of(n.taints.begin(), n.taints.end(), [&](const Taint& t) {
    return std::any_of(r.tolerations.begin(), r.tolerations.end(), [&](const Toleration& o) {
      return o.key.empty() || (o.key == t.key && (o.value.empty() || o.value == t.value));
    });
  });
}

TEST(SchedProperty, BitmapSchedulerAgreesWithTheLinearOracleAndKeepsEveryRule) {
  int placed = 0;
  int refused = 0;
  // Small clusters, and a few large enough that spreading tests whole domains by intersection.
  for (unsigned seed = 1; seed <= 46; ++seed) {
    World w(seed);
    w.populate(seed <= 40 ? w.uniform(1, 200) : w.uniform(600, 1500));
    std::map<int, std::map<NodeId, std::uint32_t>> groups;
    for (int step = 0; step < 150; ++step) {
      const int g = w.uniform(0, 4);
      const Request r = w.random_request(groups[g]);
      const Decision d = place(w.cluster, r);
      const Decision oracle = place_linear(w.cluster, r);
      ASSERT_EQ(d.node, oracle.node) << "seed " << seed << " step " << step << ": " << d.summary()
                                     << " | " << oracle.summary();
      ASSERT_EQ(d.score, oracle.score) << "seed " << seed << " step " << step;
      ASSERT_EQ(d.reasons, oracle.reasons) << "seed " << seed << " step " << step;
      ASSERT_EQ(d.feasible, oracle.feasible) << "seed " << seed << " step " << step;
      ASSERT_EQ(d.filtered, oracle.filtered) << "seed " << seed << " step " << step;
      // Same input, same choice.
      const Decision again = place(w.cluster, r);
      ASSERT_EQ(again.node, d.node);
      ASSERT_EQ(again.reasons, d.reasons);
      if (d.placed()) {
        ++placed;
        const NodeId id = *d.node;
        const NodeInfo& n = w.cluster.node(id);
        ASSERT_EQ(n.name, d.node_name);
        ASSERT_TRUE(n.schedulable()) << d.summary();
        ASSERT_TRUE(selector_holds(n, r)) << d.summary();
        ASSERT_TRUE(taints_tolerated(n, r)) << d.summary();
        // Never over-commits: the request fits in what was free. (A node may already be past
        // its capacity when an update shrank it; then it takes only what asks for none.)
        const Resources free = w.cluster.free(id);
        ASSERT_GE(free.memory_mib, r.memory_mib) << d.summary();
        ASSERT_GE(free.vcpu, r.vcpu) << d.summary();
        const Resources before = n.allocated;
        w.cluster.allocate(id, r.resources());
        if (before.memory_mib <= n.capacity.memory_mib) {
          ASSERT_LE(n.allocated.memory_mib, n.capacity.memory_mib);
        }
        if (before.vcpu <= n.capacity.vcpu) {
          ASSERT_LE(n.allocated.vcpu, n.capacity.vcpu);
        }
        groups[g][id] += 1;
      } else {
        ++refused;
        std::uint32_t counted = 0;
        for (const auto& f : d.filtered) counted += f.nodes;
        ASSERT_EQ(counted, w.cluster.size()) << d.summary();
      }
      if (w.chance(20)) {
        w.mutate();
        // Removed nodes take their instances with them.
        for (auto& [name, members] : groups) {
          std::erase_if(members, [&](const auto& m) { return !w.cluster.contains(m.first); });
        }
      }
    }
  }
  // The streams exercise both outcomes.
  EXPECT_GT(placed, 1000);
  EXPECT_GT(refused, 100);
}

TEST(SchedProperty, SpreadKeepsZoneSkewWithinOneWhenCapacityAllows) {
  for (unsigned seed = 1; seed <= 20; ++seed) {
    World w(seed);
    const int zones = w.uniform(2, 6);
    Cluster& c = w.cluster;
    for (int i = 0; i < 60; ++i) {
      c.add_node(node("n" + std::to_string(i), 65536, 64,
                      {{"zone", "az" + std::to_string(w.uniform(1, zones))},
                       {"rack", "r" + std::to_string(w.uniform(1, 8))}}));
    }
    std::set<std::string> present;
    for (NodeId id = 0; id < c.id_bound(); ++id) present.insert(c.node(id).labels.at("zone"));
    std::map<NodeId, std::uint32_t> group;
    std::map<std::string, int> per_zone;
    for (int step = 0; step < 100; ++step) {
      Request r = ask(static_cast<std::uint64_t>(w.uniform(64, 512)), 1);
      r.spread_across = "availability-zones";
      r.strategy = w.chance(50) ? Strategy::spread : Strategy::binpack;
      r.group.assign(group.begin(), group.end());
      const Decision d = place_both(c, r);
      ASSERT_TRUE(d.placed()) << d.summary();
      c.allocate(*d.node, r.resources());
      group[*d.node] += 1;
      per_zone[c.node(*d.node).labels.at("zone")] += 1;
      int least = INT32_MAX;
      int most = 0;
      for (const auto& z : present) {
        least = std::min(least, per_zone[z]);
        most = std::max(most, per_zone[z]);
      }
      ASSERT_LE(most - least, 1) << "seed " << seed << " step " << step;
    }
  }
}

TEST(SchedProperty, SameClusterBuiltAgainGivesTheSameChoices) {
  World a(7);
  World b(7);
  a.populate(150);
  b.populate(150);
  Cluster copy = a.cluster;
  for (int i = 0; i < 200; ++i) {
    const Request r = a.random_request({});
    const Request s = b.random_request({});
    const Decision da = place(a.cluster, r);
    EXPECT_EQ(da.node, place(b.cluster, s).node);
    EXPECT_EQ(da.reasons, place(copy, r).reasons);
  }
}

}  // namespace
