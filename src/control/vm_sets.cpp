// The VM set controller (see vm_sets.hpp).
#include "control/vm_sets.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <algorithm>
#include <array>
#include <utility>

#include "blixard/error.hpp"
#include "common/health_check.hpp"
#include "runtime/volume.hpp"

namespace blixard::control {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

std::string phase_name(int phase) {
  static const std::array<const char*, 3> names{"Starting", "Running", "Stopping"};
  return names.at(static_cast<std::size_t>(phase));
}

milliseconds to_millis(const google::protobuf::Duration& d) {
  return milliseconds(d.seconds() * 1000 + d.nanos() / 1'000'000);
}

// As a spec says it: "1h", "5m", "2s", "1500ms".
std::string duration_text(milliseconds d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace

// One start of a slot's replica.
struct VmSets::Run {
  enum Phase { starting, running, stopping };
  std::uint64_t generation = 0;  // unique in the slot: an exit names the run by it
  std::int64_t revision = 0;
  Phase phase = starting;
  std::shared_ptr<runtime::Replica> replica;
  std::string node, address, driver, accel;
  std::string network_address;  // on the set's network, if it has one
  sched::Resources reserved;
  std::map<std::uint32_t, std::uint32_t> ports;
  std::chrono::system_clock::time_point started_at;
  Clock::time_point ready_at;
  // Health (proto Readiness): what is checked, when next, failures in a row, why it failed.
  v1::Readiness readiness;
  std::uint32_t check_port = 0;  // the declared port checked; 0: no health check
  Clock::time_point next_check;
  std::uint32_t failures = 0;
  std::string unhealthy;
  // A rolling update's run started in place of the revision it names (no room beside it): it
  // proves itself for minHealthyTime as a `next` run does; 0 once it has, or if it never did.
  std::int64_t replaces = 0;
  // When it was asked for: a run proving itself has healthyDeadline from here.
  Clock::time_point created = Clock::now();
  // In a set with a primary: "primary" (with the epoch it was fenced under) or "replica".
  std::string role;
  std::int64_t epoch = 0;
  std::string volume;  // the volume it writes to, once claimed
  // A standby guest holding the set's volume unmounted (VolumeAttachment.standby): promoted in
  // place, a role change rather than a fresh boot. Its ports are forwarded but not served
  // (not in `ports`) until then.
  std::string held_volume;
  bool promote_pending = false;  // chosen: promoted once no other primary run is left
  bool promoting = false;
};

// One of the set's replicas ("webapp-2"): the run that serves it and, during a rolling update,
// the new run that will replace it; runs being stopped stay listed until they are gone.
struct VmSets::Slot {
  int ordinal = 0;
  std::string name;
  std::shared_ptr<Run> current, next;
  std::vector<std::shared_ptr<Run>> retiring;
  std::uint64_t generations = 0;
  bool failed = false;  // its last run failed: started again at retry_at
  std::string message;
  std::uint32_t restarts = 0;
  int failures_in_row = 0;
  bool remove = false;  // going away (scaled down, stopped, deleted)
  Clock::time_point retry_at;
  std::int64_t replacing = 0;  // the revision its next start replaces in place (Run::replaces)

  std::shared_ptr<Run>* find(std::uint64_t generation) {
    if (current && current->generation == generation) return &current;
    if (next && next->generation == generation) return &next;
    for (auto& r : retiring) {
      if (r->generation == generation) return &r;
    }
    return nullptr;
  }
  bool empty() const { return !current && !next && retiring.empty(); }
};

struct VmSets::Set {
  v1::VmSpec spec;  // as stored, newest
  std::int64_t version = 0;
  bool deleted = false;
  struct Revision {
    v1::VmSpec spec;  // without `replicas` and `stopped` (revision_key)
    std::chrono::system_clock::time_point created;
  };
  // The last few revisions; the newest, and the one new runs start from (older while a rollout
  // is halted).
  std::map<std::int64_t, Revision> revisions;
  std::int64_t revision = 0, serving = 0;
  std::string rollout;  // progress or why it halted
  std::map<int, std::shared_ptr<Slot>> slots;
  // The last revision all its replicas ran (Nomad's stable version): where autoRevert goes back.
  std::int64_t stable = 0;
  // After a halt with autoRevert: the replicas are being rolled back to `serving`.
  bool reverting = false;
  std::string halted;  // "rollout of revision 3 halted: why", kept for the status once reverted
  // The rollout's (or revert's) progress: replicas updated when last counted, and when that count
  // last rose (or the rollout began): progressDeadline runs from there.
  int updated = 0;
  Clock::time_point progress_at;
  // With a primary (spec.primary_election_policy): the slot that is primary or being promoted
  // (0: none yet), the stored epoch, a switchover asked for (a slot), the spec's `primary` last
  // acted on, and the steps of the last failover with when it was detected.
  int primary = 0;
  std::int64_t epoch = 0;
  int switch_to = 0;
  std::string primary_asked;
  std::vector<v1::FailoverStep> failover;
  Clock::time_point failover_began;
  bool failing_over = false;  // until the new primary serves

  // Whether every wanted replica runs revision `number`, and no other is on its way in.
  bool all_run(std::int64_t number) const {
    const int desired = deleted || spec.stopped() ? 0 : static_cast<int>(spec.replicas());
    for (int ordinal = 1; ordinal <= desired; ++ordinal) {
      const auto it = slots.find(ordinal);
      if (it == slots.end() || it->second->next) return false;
      const auto& run = it->second->current;
      if (!run || run->phase != Run::running || run->revision != number) return false;
    }
    return desired > 0;
  }
};

// What replicas' callbacks reach: the controller while it lives (a remote node may report an
// exit after it is gone).
struct VmSets::Hub {
  std::mutex mutex;
  VmSets* self = nullptr;
};

VmSets::VmSets(std::shared_ptr<NodeRegistry> nodes, std::shared_ptr<Telemetry> telemetry,
               std::shared_ptr<Volumes> volumes, std::shared_ptr<Networks> networks,
               std::shared_ptr<VmRevisionLog> revisions, std::shared_ptr<PrimaryLog> primaries,
               VmSetsOptions options)
    : nodes_(std::move(nodes)),
      telemetry_(std::move(telemetry)),
      volumes_(std::move(volumes)),
      networks_(std::move(networks)),
      revisions_(std::move(revisions)),
      primaries_(std::move(primaries)),
      options_(options),
      hub_(std::make_shared<Hub>()) {
  hub_->self = this;
  loop_ = std::thread([this] { loop(); });
  health_ = std::thread([this] { health_loop(); });
}

VmSets::~VmSets() {
  shutdown();
  std::lock_guard lock(hub_->mutex);
  hub_->self = nullptr;
}

namespace {

constexpr std::size_t k_revisions_kept = 10;
constexpr milliseconds k_check_timeout{1000};

// The part of a spec a revision is made of: everything but how many run, whether they do and
// which is asked to be primary (a switchover is no rollout).
v1::VmSpec revision_of(v1::VmSpec spec) {
  spec.clear_replicas();
  spec.clear_stopped();
  spec.clear_primary();
  return spec;
}

bool has_volume(const v1::VmSpec& spec) {
  return !spec.storage().pool().empty() || !spec.storage().class_().empty();
}

// The declared port a run's health is checked on (0: none), by its readiness and ports.
std::uint32_t check_port_of(const v1::Readiness& readiness, const v1::VmSpec& spec) {
  if (!readiness.console_marker().empty() || spec.ports_size() == 0) return 0;
  if (readiness.tcp_port() != 0) return readiness.tcp_port();
  if (!readiness.http_path().empty() && readiness.http_port() != 0) return readiness.http_port();
  return spec.ports(0);
}

std::string revision_key(const v1::VmSpec& revision) {
  std::string out;
  google::protobuf::io::StringOutputStream stream(&out);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  revision.SerializeToCodedStream(&coded);
  return out;
}

}  // namespace

void VmSets::update(const std::string& vm, std::int64_t version, const v1::VmSpec& spec) {
  // (Calls come one at a time, from the store's watch: no other update of the set runs between
  // the reads and the writes below.)
  bool known = false;
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    known = sets_.contains(vm);
  }
  std::vector<v1::VmRevision> kept;  // what an earlier run of the server stored
  std::optional<v1::VmPrimary> primary;
  if (primaries_ && !known) {
    try {
      primary = primaries_->load(vm);
    } catch (const std::exception& e) {
      publish(vm, "PrimaryUnreadable",
              "its stored primary cannot be read (" + std::string(e.what()) + ")");
    }
  }
  if (revisions_ && !known) {
    try {
      kept = revisions_->load(vm);  // (not under the controller's lock: the store may be slow)
    } catch (const std::exception& e) {
      publish(
          vm, "RevisionsUnreadable",
          "its stored revisions cannot be read (" + std::string(e.what()) + "): numbering from 1");
    }
  }
  v1::VmRevision appended;
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    auto& set = sets_[vm];
    if (!set) {
      set = std::make_shared<Set>();
      for (auto& r : kept) {
        const auto at =
            std::chrono::system_clock::time_point(std::chrono::seconds(r.created_at().seconds()));
        set->revisions[r.revision()] = {std::move(*r.mutable_spec()), at};
        set->revision = set->serving = r.revision();
      }
      if (primary) {
        // The primary stays where it was (its ordinal), under the epoch stored.
        set->epoch = primary->epoch();
        const auto& name = primary->replica();
        if (name.starts_with(vm + "-")) {
          try {
            set->primary = std::stoi(name.substr(vm.size() + 1));
          } catch (const std::exception&) {
            set->primary = 0;
          }
        }
      }
      // A switchover asked for before is done or overtaken: not acted on again.
      set->primary_asked = spec.primary();
    }
    if (version < set->version) return;
    if (spec.primary() != set->primary_asked) {
      set->primary_asked = spec.primary();
      set->switch_to = -1;  // unknown until elect() reads it (a name that is no replica)
      const auto& name = spec.primary();
      if (name.starts_with(vm + "-") &&
          name.find_first_not_of("0123456789", vm.size() + 1) == std::string::npos &&
          name.size() > vm.size() + 1 && name.size() < vm.size() + 8) {
        set->switch_to = std::stoi(name.substr(vm.size() + 1));
      }
    }
    auto revision = revision_of(spec);
    const bool new_revision =
        set->revisions.empty() ||
        revision_key(set->revisions.rbegin()->second.spec) != revision_key(revision);
    // (Before roll() saw it: the revision every replica runs is the one to revert to.)
    if (new_revision && set->all_run(set->revision)) set->stable = set->revision;
    set->spec = spec;
    set->version = version;
    set->deleted = false;
    if (new_revision) {
      set->revision = set->revisions.empty() ? 1 : set->revision + 1;
      const auto now = std::chrono::system_clock::now();
      appended.set_revision(set->revision);
      appended.mutable_created_at()->set_seconds(
          std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count());
      *appended.mutable_spec() = revision;
      set->revisions[set->revision] = {std::move(revision), now};
      set->serving = set->revision;  // new runs start from it (unless its rollout halts)
      set->reverting = false;
      set->halted.clear();
      set->updated = 0;
      set->progress_at = Clock::now();
      // Keep the last few (a rollback names one of them).
      while (set->revisions.size() > k_revisions_kept) set->revisions.erase(set->revisions.begin());
      if (set->revision > 1) set->rollout = "rolling out revision " + std::to_string(set->revision);
    }
    wake_.notify_all();
  }
  if (revisions_ && appended.revision() != 0) {
    try {
      revisions_->append(vm, appended, k_revisions_kept);
    } catch (const std::exception& e) {
      // The set rolls on; only a restarted server would not know this revision.
      publish(vm, "RevisionNotStored",
              "revision " + std::to_string(appended.revision()) + " is not stored: " + e.what());
    }
  }
}

void VmSets::remove(const std::string& vm) {
  {
    std::lock_guard lock(mutex_);
    auto it = sets_.find(vm);
    if (it != sets_.end()) {
      it->second->deleted = true;
      wake_.notify_all();
    }
  }
  if (revisions_) {
    try {
      revisions_->erase(vm);
    } catch (const std::exception& e) {
      // Erased at the next start of a server (StoredVmRevisions::erase_orphans).
      publish(vm, "RevisionsNotErased", std::string("its stored revisions stay: ") + e.what());
    }
  }
  // (Its stored primary stays, as its volume does: a set made again under the name fences on
  // from the epoch the volume was last written under.)
}

void VmSets::shutdown() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
  }
  wake_.notify_all();
  if (loop_.joinable()) loop_.join();
  if (health_.joinable()) health_.join();
  // Starts in flight end when the nodes are shut down (the server did that first); their
  // threads use this object until they are counted out.
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] { return workers_ == 0; });
}

milliseconds VmSets::check_interval(const v1::Readiness& r) {
  const auto& i = r.interval();
  const milliseconds given(i.seconds() * 1000 + i.nanos() / 1'000'000);
  return given.count() > 0 ? given : milliseconds(5000);
}

void VmSets::health_loop() {
  struct Due {
    std::shared_ptr<Run> run;
    std::string vm, slot;
  };
  std::unique_lock lock(mutex_);
  while (!closed_) {
    const auto now = Clock::now();
    std::vector<Due> due;
    for (const auto& [vm, set] : sets_) {
      for (const auto& [ordinal, slot] : set->slots) {
        for (const auto& run : {slot->current, slot->next}) {
          if (run && run->phase == Run::running && run->check_port != 0 && now >= run->next_check) {
            due.push_back({run, vm, slot->name});
          }
        }
      }
    }
    lock.unlock();
    for (auto& d : due) {
      // The run's fields below are set before it is running and not changed after: read here
      // without the lock, as the checks block.
      const auto& r = d.run->readiness;
      const auto host = d.run->ports.find(d.run->check_port);
      const bool ok = host != d.run->ports.end() &&
                      (r.http_path().empty()
                           ? tcp_accepts(d.run->address, host->second, k_check_timeout)
                           : http_ok(d.run->address, host->second, r.http_path(), k_check_timeout));
      std::shared_ptr<runtime::Replica> kill;
      std::string why;
      {
        std::lock_guard relock(mutex_);
        d.run->next_check = Clock::now() + check_interval(r);
        d.run->failures = ok ? 0 : d.run->failures + 1;
        const std::uint32_t threshold = r.failure_threshold() != 0 ? r.failure_threshold() : 3;
        if (!ok && d.run->failures >= threshold && d.run->phase == Run::running) {
          why = "failed its health check (" +
                (r.http_path().empty() ? "TCP port " + std::to_string(d.run->check_port)
                                       : "GET " + r.http_path()) +
                ") " + std::to_string(d.run->failures) + " times in a row";
          d.run->unhealthy = why;
          kill = d.run->replica;
        }
      }
      if (kill) {
        publish(d.vm, "ReplicaUnhealthy", d.slot + " " + why);
        kill->kill();  // its exit replaces it (VmSets::exited)
      }
    }
    lock.lock();
    wake_.wait_for(lock, options_.tick, [&] { return closed_; });
  }
}

void VmSets::loop() {
  std::unique_lock lock(mutex_);
  while (!closed_) {
    reconcile();
    wake_.wait_for(lock, options_.tick);
  }
}

void VmSets::reconcile() {
  const auto now = Clock::now();
  for (auto it = sets_.begin(); it != sets_.end();) {
    const std::string& vm = it->first;
    Set& set = *it->second;
    const int desired =
        set.deleted || set.spec.stopped() ? 0 : static_cast<int>(set.spec.replicas());
    for (int ordinal = 1; ordinal <= desired; ++ordinal) {
      auto& slot = set.slots[ordinal];
      if (!slot) {
        slot = std::make_shared<Slot>();
        slot->ordinal = ordinal;
        slot->name = vm + "-" + std::to_string(ordinal);
      }
      slot->remove = false;
    }
    elect(vm, set, desired);
    // A primary run starts once no other is left (the old one stopping in a switchover, or
    // scaled away): one writer, whatever the fence says.
    bool primary_running = false;
    for (const auto& [ordinal, slot] : set.slots) {
      for (const auto* r : {&slot->current, &slot->next}) {
        if (*r && (*r)->role == "primary") primary_running = true;
      }
      for (const auto& r : slot->retiring) {
        if (r->role == "primary") primary_running = true;
      }
    }
    for (int ordinal = 1; ordinal <= desired; ++ordinal) {
      auto& slot = set.slots[ordinal];
      if (ordinal == set.primary && !set.spec.primary_election_policy().empty() &&
          primary_running) {
        continue;
      }
      if (ordinal == set.primary && slot->current && slot->current->promote_pending) {
        promote_in_place(vm, set, *slot);
        continue;
      }
      // (Once what it ran before is gone: a recreate stops, then starts.)
      if (!slot->current && slot->retiring.empty() && (!slot->failed || now >= slot->retry_at)) {
        start(vm, set, *slot, false);
      }
    }
    for (auto s = set.slots.upper_bound(desired); s != set.slots.end();) {
      Slot& slot = *s->second;
      slot.remove = true;
      if (slot.empty()) {
        s = set.slots.erase(s);
        continue;
      }
      // A starting run is stopped once it is ready (start() sees `remove`).
      if (slot.next && slot.next->phase == Run::running) retire(slot, slot.next, {});
      if (slot.current && slot.current->phase == Run::running) retire(slot, slot.current, {});
      ++s;
    }
    roll(vm, set, desired);
    if (set.deleted && set.slots.empty()) {
      it = sets_.erase(it);
    } else {
      ++it;
    }
  }
}

void VmSets::roll(const std::string& vm, Set& set, int desired) {
  const auto now = Clock::now();
  if (set.serving == set.revision && set.rollout.empty()) {
    // Nothing rolls: once every replica runs the revision, it is where an autoRevert goes back to.
    if (set.stable != set.revision && set.all_run(set.revision)) set.stable = set.revision;
    return;
  }
  // Where the replicas go: the new revision, or back to the serving one in a revert, which is
  // rolled out by that revision's own strategy (as Nomad deploys the job version it reverts to).
  const std::int64_t target = set.reverting ? set.serving : set.revision;
  const auto& strategy = set.revisions.at(target).spec.update_strategy();
  const auto min_healthy = strategy.has_min_healthy_time() ? to_millis(strategy.min_healthy_time())
                                                           : options_.min_healthy_time;
  const auto healthy_deadline = strategy.has_healthy_deadline()
                                    ? to_millis(strategy.healthy_deadline())
                                    : options_.healthy_deadline;
  const auto progress_deadline = strategy.has_progress_deadline()
                                     ? to_millis(strategy.progress_deadline())
                                     : options_.progress_deadline;
  const bool moving = set.serving == target;  // not halted
  // A run proving itself is healthy once it has been ready, passing its checks, for
  // minHealthyTime; it has healthyDeadline from its start to get there.
  auto healthy = [&](Run& run) {
    if (run.phase != Run::running) return false;
    if (run.failures > 0) {
      run.ready_at = now;  // a failed check: minHealthyTime starts again
      return false;
    }
    return now - run.ready_at >= min_healthy;
  };
  auto overdue = [&](const Run& run) { return moving && now - run.created >= healthy_deadline; };
  int updated = 0, total = 0;
  bool in_flight = false;
  std::shared_ptr<Slot> late;  // its new run is past healthyDeadline
  for (auto& [ordinal, slot] : set.slots) {
    if (ordinal > desired) continue;
    ++total;
    // One replica in transition at a time (maxParallel 1), until what it replaced is gone: a
    // rollout needs room for one replica more than the set, not two.
    if (!slot->retiring.empty() || slot->replacing != 0) in_flight = true;
    if (auto& run = slot->current; run && run->replaces != 0) {
      in_flight = true;
      if (healthy(*run)) {
        run->replaces = 0;
        publish(vm, "ReplicaUpdated",
                slot->name + " runs revision " + std::to_string(run->revision));
      } else if (overdue(*run) && !late) {
        late = slot;
      }
    }
    if (slot->next) {
      in_flight = true;
      // The new run took over once it stayed up for minHealthyTime: the old one goes.
      if (healthy(*slot->next)) {
        if (slot->current) retire(*slot, slot->current, options_.drain);
        slot->current = std::move(slot->next);
        publish(vm, "ReplicaUpdated",
                slot->name + " runs revision " + std::to_string(slot->current->revision));
      } else if (overdue(*slot->next) && !late) {
        late = slot;
      }
    }
    if (slot->current && slot->current->revision == target &&
        slot->current->phase == Run::running && !slot->next && slot->current->replaces == 0) {
      ++updated;
    }
  }
  if (!moving) return;  // halted: nothing more rolls
  if (late) {
    // Not healthy in time: stopped (once its start returns, if it is still starting) and the
    // rollout halts, as when it fails to start.
    const bool beside = late->next != nullptr;
    const auto run = beside ? late->next : late->current;
    const auto back_to =
        beside ? (late->current ? late->current->revision : set.serving) : run->replaces;
    retire(*late, run, {});
    const std::string event = halt(
        set, back_to,
        late->name + " (revision " + std::to_string(run->revision) +
            ") did not become healthy within healthyDeadline " + duration_text(healthy_deadline) +
            (run->phase == Run::running && run->replica ? "" : " (it was not ready)"));
    publish(vm, "RolloutHalted", event);
    return;
  }
  if (updated > set.updated) set.progress_at = now;  // a replica became healthy
  set.updated = updated;
  if (updated == total) {
    if (set.reverting) {
      set.reverting = false;
      set.rollout = set.halted + "; reverted to revision " + std::to_string(set.serving);
      publish(vm, "RolloutReverted",
              "revision " + std::to_string(set.serving) + " runs on all " + std::to_string(total) +
                  " replicas again (" + set.halted + ")");
      return;
    }
    if (!set.rollout.empty()) {
      publish(vm, "RolloutComplete", "revision " + std::to_string(set.revision) + " is out");
      set.rollout.clear();
    }
    set.stable = set.revision;
    return;
  }
  if (progress_deadline.count() > 0 && now - set.progress_at >= progress_deadline) {
    // Where new runs start from unless autoRevert says otherwise: the last revision all ran, or
    // the newest kept one before this rollout's.
    std::int64_t back_to =
        set.stable != target && set.revisions.contains(set.stable) ? set.stable : 0;
    if (back_to == 0) {
      for (const auto& [number, revision] : set.revisions) {
        if (number < target) back_to = number;  // (in order: the newest one before wins)
      }
    }
    if (back_to != 0 || set.reverting) {
      // What is still proving itself is given up on: the set goes back to what ran before.
      for (auto& [ordinal, slot] : set.slots) {
        if (slot->next) retire(*slot, slot->next, {});
        if (slot->current && slot->current->replaces != 0) retire(*slot, slot->current, {});
      }
      const std::string event = halt(
          set, back_to,
          "no replica became healthy within progressDeadline " + duration_text(progress_deadline) +
              " (" + std::to_string(updated) + "/" + std::to_string(total) + " updated)");
      publish(vm, "RolloutHalted", event);
      return;
    }
  }
  set.rollout = set.reverting
                    ? set.halted + "; reverting to revision " + std::to_string(set.serving) + ": " +
                          std::to_string(updated) + "/" + std::to_string(total) + " replicas back"
                    : "rolling out revision " + std::to_string(set.revision) + ": " +
                          std::to_string(updated) + "/" + std::to_string(total) +
                          " replicas updated";
  if (in_flight) return;
  for (auto& [ordinal, slot] : set.slots) {
    if (ordinal > desired || !slot->current || slot->current->phase != Run::running ||
        slot->current->revision == target) {
      continue;
    }
    if (strategy.type() == "recreate") {
      retire(*slot, slot->current, {});  // started again with the new revision when it is gone
      continue;
    }
    if (has_volume(set.revisions.at(target).spec)) {
      // One writer per volume: the old run goes, then the new one starts on its volume.
      slot->replacing = slot->current->revision;
      retire(*slot, slot->current, options_.drain);
      return;
    }
    start(vm, set, *slot, true);
    return;  // one at a time
  }
}

void VmSets::failover_step(const std::string& vm, Set& set, const std::string& step,
                           const std::string& message) {
  const auto now = std::chrono::system_clock::now();
  // A failover that keeps failing (no standby starts as primary) keeps its first step and its
  // latest ones.
  constexpr std::size_t k_steps_kept = 32;
  if (set.failover.size() >= k_steps_kept) set.failover.erase(set.failover.begin() + 1);
  auto& s = set.failover.emplace_back();
  s.set_step(step);
  s.set_message(message);
  const auto since = now.time_since_epoch();
  s.mutable_at()->set_seconds(std::chrono::duration_cast<std::chrono::seconds>(since).count());
  s.mutable_at()->set_nanos(static_cast<std::int32_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(since).count() % 1'000'000'000));
  const auto elapsed =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - set.failover_began);
  s.mutable_elapsed()->set_seconds(elapsed.count() / 1'000'000'000);
  s.mutable_elapsed()->set_nanos(static_cast<std::int32_t>(elapsed.count() % 1'000'000'000));
  static const std::map<std::string, std::string> reasons{
      {"detected", "FailoverDetected"}, {"promoting", "PrimaryChosen"},
      {"fenced", "PrimaryFenced"},      {"volume-attached", "VolumeAttached"},
      {"promoted", "PrimaryPromoted"},  {"balancer-switched", "BalancerSwitched"},
      {"failed", "FailoverFailed"}};
  const auto r = reasons.find(step);
  const auto ms = std::chrono::duration_cast<milliseconds>(elapsed).count();
  // (Published off the lock would reorder steps; Telemetry::publish only queues.)
  publish(vm, r != reasons.end() ? r->second : "Failover",
          message + " (+" + std::to_string(ms) + " ms)");
}

std::int64_t VmSets::fence(const std::string& vm, Run& run, const std::string& replica,
                           const std::string& node) {
  std::int64_t seen = 0;
  {
    std::lock_guard lock(mutex_);
    const auto s = sets_.find(vm);
    if (s == sets_.end()) throw Error(errc::conflict, "vm " + vm + " was deleted");
    seen = s->second->epoch;
  }
  v1::VmPrimary next;
  next.set_replica(replica);
  next.set_node(node);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  next.mutable_since()->set_seconds(std::chrono::duration_cast<std::chrono::seconds>(now).count());
  std::int64_t epoch = seen + 1;
  if (primaries_) {
    try {
      epoch = primaries_->fence(vm, seen, next).epoch();
    } catch (const Error& e) {
      // Fenced by someone else meanwhile: the next attempt starts from the stored epoch.
      if (e.code() == errc::conflict) {
        if (const auto stored = primaries_->load(vm)) {
          std::lock_guard lock(mutex_);
          if (auto s = sets_.find(vm); s != sets_.end()) {
            s->second->epoch = std::max(s->second->epoch, stored->epoch());
          }
        }
      }
      throw;
    }
  }
  std::lock_guard lock(mutex_);
  run.epoch = epoch;
  if (auto s = sets_.find(vm); s != sets_.end()) {
    Set& set = *s->second;
    set.epoch = std::max(set.epoch, epoch);
    if (set.failing_over) {
      failover_step(vm, set, "fenced",
                    "epoch " + std::to_string(epoch) + " stored for " + replica + " on " + node +
                        ": no run of an older epoch gets the volume");
    }
  }
  return epoch;
}

void VmSets::elect(const std::string& vm, Set& set, int desired) {
  const std::string& policy = set.spec.primary_election_policy();
  if (policy.empty()) {
    set.primary = 0;
    return;
  }
  if (desired == 0) return;  // stopped: its primary starts as primary again
  auto slot_at = [&](int ordinal) -> Slot* {
    const auto it = set.slots.find(ordinal);
    return it != set.slots.end() && ordinal <= desired ? it->second.get() : nullptr;
  };
  auto standby = [](const Slot* slot) {
    return slot != nullptr && slot->current && slot->current->phase == Run::running &&
           slot->current->role == "replica" && !slot->next;
  };
  auto begin = [&](const std::string& why) {
    set.failover.clear();
    set.failover_began = Clock::now();
    set.failing_over = true;
    failover_step(vm, set, "detected", why);
  };
  // Whether the slot's standby holds the volume, to be promoted in place.
  auto in_place = [](const Slot& slot) {
    return slot.current && slot.current->phase == Run::running &&
           !slot.current->held_volume.empty();
  };
  auto promote = [&](Slot& to) {
    set.primary = to.ordinal;
    if (in_place(to)) {
      // reconcile() promotes it once no other primary run is left (a switchover's stopping).
      to.current->promote_pending = true;
      return;
    }
    // Its standby run makes way; reconcile() starts it again as primary.
    if (to.current) retire(to, to.current, {});
  };

  if (set.switch_to != 0) {
    const int to = std::exchange(set.switch_to, 0);
    Slot* target = to > 0 ? slot_at(to) : nullptr;
    if (to == set.primary) return;  // already
    if (!standby(target)) {
      publish(vm, "SwitchoverRefused",
              "cannot switch the primary to " + set.primary_asked + ": " +
                  (target == nullptr ? "no such replica (1.." + std::to_string(desired) + ")"
                                     : "it is not a running standby"));
      return;
    }
    Slot* old = slot_at(set.primary);
    begin("switchover to " + target->name + " asked" +
          (old != nullptr ? ": " + old->name + " stops first" : ""));
    if (old != nullptr && old->current) retire(*old, old->current, {});
    promote(*target);
    return;
  }

  Slot* current = slot_at(set.primary);
  const bool gone = current == nullptr || (!current->current && current->failed);
  if (set.primary != 0 && !gone) return;
  // Who takes over: a running standby as the policy says; with none, the slot itself (after its
  // backoff), or at the first start the lowest ordinal (the highest for newest-first).
  Slot* chosen = nullptr;
  for (auto& [ordinal, slot] : set.slots) {
    if (ordinal > desired || !standby(slot.get())) continue;
    if (chosen == nullptr) {
      chosen = slot.get();
    } else if (policy == "oldest-first" &&
               slot->current->started_at < chosen->current->started_at) {
      chosen = slot.get();
    } else if (policy == "newest-first" &&
               slot->current->started_at > chosen->current->started_at) {
      chosen = slot.get();
    }  // lowest-ordinal: the first found
  }
  if (set.primary == 0 || current == nullptr) {
    if (chosen == nullptr) chosen = slot_at(policy == "newest-first" ? desired : 1);
    if (chosen == nullptr) return;
    const bool was = set.primary != 0;
    promote(*chosen);
    publish(vm, "PrimaryElected",
            chosen->name + " is to be primary (" + policy +
                (was ? ", the last one was scaled away)" : ")"));
    return;
  }
  if (chosen == nullptr) return;  // the primary's slot starts again in place after its backoff
  if (!set.failing_over) begin(current->name + " is gone: " + current->message);
  failover_step(
      vm, set, "promoting",
      chosen->name + " is to be primary (" + policy + "); " +
          (in_place(*chosen) ? "its standby guest, holding the volume, is promoted in place"
                             : "its standby run stops"));
  promote(*chosen);
}

void VmSets::promote_in_place(const std::string& vm, Set& set, Slot& slot) {
  const std::shared_ptr<Run> run = slot.current;
  run->promote_pending = false;
  run->promoting = true;
  const auto revision = set.revisions.find(run->revision);
  const v1::VmSpec serving = revision != set.revisions.end() ? revision->second.spec : set.spec;
  runtime::Promotion promotion;
  promotion.readiness = serving.readiness();
  if (const auto given = to_millis(serving.readiness().timeout()); given.count() > 0) {
    promotion.timeout = given;
  }
  // Its own address from now on, as a primary started afresh would be told a standby's.
  if (serving.ports_size() > 0) {
    const auto ports = run->replica->ports();
    if (!run->network_address.empty()) {
      promotion.primary_address = run->network_address + ":" + std::to_string(serving.ports(0));
    } else if (const auto p = ports.find(serving.ports(0)); p != ports.end()) {
      promotion.primary_address = run->address + ":" + std::to_string(p->second);
    }
  }
  ++workers_;
  std::thread([this, vm, slot_name = slot.name, ordinal = slot.ordinal, run, serving,
               promotion]() mutable {
    std::string error;
    try {
      // The fence before anything: from here no run of an older epoch gets the volume.
      promotion.epoch = fence(vm, *run, slot_name, run->node);
      run->replica->promote(promotion);
    } catch (const std::exception& e) {
      error = e.what();
    }
    if (error.empty()) {
      try {
        volumes_->attached(run->held_volume, run->node, run->replica->name(), promotion.epoch,
                           runtime::k_volume_image);
      } catch (const std::exception&) {
        // The store is closing with the server (as for a primary started afresh).
      }
    }
    bool kill = false;
    {
      std::lock_guard lock(mutex_);
      run->promoting = false;
      auto s = sets_.find(vm);
      Set* set = s != sets_.end() ? s->second.get() : nullptr;
      Slot* sl = nullptr;
      if (set != nullptr) {
        if (auto found = set->slots.find(ordinal); found != set->slots.end()) {
          sl = found->second.get();
        }
      }
      const bool ours = sl != nullptr && sl->current == run && run->phase == Run::running &&
                        !sl->remove && set->primary == ordinal && !closed_;
      if (error.empty() && ours) {
        run->role = "primary";
        run->volume = run->held_volume;
        run->ports = run->replica->ports();
        run->readiness = serving.readiness();
        run->check_port = check_port_of(run->readiness, serving);
        run->next_check = Clock::now() + check_interval(run->readiness);
        if (set->failing_over) {
          set->failing_over = false;
          failover_step(vm, *set, "volume-attached",
                        run->held_volume + " mounted by " + slot_name + " on " + run->node +
                            " under epoch " + std::to_string(run->epoch) +
                            " (held by its standby guest since its start)");
          failover_step(vm, *set, "promoted",
                        slot_name + " is primary on " + run->node + " (epoch " +
                            std::to_string(run->epoch) + "), promoted in place");
          failover_step(vm, *set, "balancer-switched",
                        "the load balancer sends the set's ports to " + slot_name);
        } else {
          publish(vm, "PrimaryPromoted",
                  slot_name + " is primary on " + run->node + " (epoch " +
                      std::to_string(run->epoch) + "), promoted in place");
        }
      } else if (ours) {
        // Not promoted: the standby makes way and its slot starts afresh as the primary.
        if (set->failing_over) {
          failover_step(vm, *set, "promoting",
                        slot_name + " was not promoted in place (" + error +
                            "): it starts afresh as primary");
        }
        retire(*sl, run, {});
      } else if (error.empty()) {
        kill = true;  // promoted, but no longer wanted as the primary (deleted, scaled, stopped)
      }
      --workers_;
      idle_.notify_all();
      wake_.notify_all();
    }
    if (kill) run->replica->kill();
  }).detach();
}

void VmSets::start(const std::string& vm, Set& set, Slot& slot, bool next) {
  auto run = std::make_shared<Run>();
  run->generation = ++slot.generations;
  run->revision = set.serving;
  if (!next) run->replaces = std::exchange(slot.replacing, 0);
  const auto& serving = set.revisions.at(set.serving).spec;
  auto placed_spec = serving;
  placed_spec.set_replicas(set.spec.replicas());
  placed_spec.clear_primary();
  const bool with_primary = !serving.primary_election_policy().empty();
  if (with_primary) {
    // The primary's address for a standby to follow (a database's replication source).
    std::string primary_address;
    if (const auto p = set.slots.find(set.primary);
        p != set.slots.end() && p->second->current && p->second->current->role == "primary") {
      const auto& r = *p->second->current;
      if (!r.network_address.empty() && serving.ports_size() > 0) {
        primary_address = r.network_address + ":" + std::to_string(serving.ports(0));
      } else if (serving.ports_size() > 0 && r.ports.contains(serving.ports(0))) {
        primary_address = r.address + ":" + std::to_string(r.ports.at(serving.ports(0)));
      }
    }
    run->role = slot.ordinal == set.primary ? "primary" : "replica";
    auto& env = *placed_spec.mutable_env();
    env["BLIXARD_ROLE"] = run->role;
    env["BLIXARD_PRIMARY_ADDR"] = primary_address;
    if (run->role == "replica") {
      // A standby: no volume (the primary's only), no ports served, ready once it runs.
      placed_spec.clear_storage();
      placed_spec.clear_ports();
      placed_spec.clear_readiness();
    }
  }
  run->readiness = placed_spec.readiness();
  run->check_port = check_port_of(run->readiness, placed_spec);
  // A standby guest holds the set's volume unmounted and its ports forwarded, to be promoted in
  // place (libvirt driver: a guest takes no disk while it runs); elsewhere a standby holds
  // nothing and a promotion starts the primary afresh.
  std::shared_ptr<const v1::VmSpec> standby_of;
  if (with_primary && run->role == "replica" && has_volume(serving)) {
    standby_of = std::make_shared<const v1::VmSpec>(serving);
  }
  (next ? slot.next : slot.current) = run;
  if (next || run->replaces != 0) {
    // A run proving itself has healthyDeadline to be healthy, then roll() gives up on it: its
    // start waits for ready no longer (and a little more, so that roll() says why first).
    const auto& u = serving.update_strategy();
    const auto bound =
        (u.has_healthy_deadline() ? to_millis(u.healthy_deadline()) : options_.healthy_deadline) +
        2 * options_.tick;
    auto& readiness = *placed_spec.mutable_readiness();
    if (const auto given = to_millis(readiness.timeout()); given.count() <= 0 || given > bound) {
      readiness.mutable_timeout()->set_seconds(bound.count() / 1000);
      readiness.mutable_timeout()->set_nanos(static_cast<std::int32_t>(bound.count() % 1000) *
                                             1'000'000);
    }
  }
  // A set's replicas spread over nodes unless its placement says otherwise: one node's loss
  // should not take the whole set (Kubernetes' default topology spread does the same).
  if (placed_spec.placement().strategy().empty()) {
    placed_spec.mutable_placement()->set_strategy("spread");
  }
  auto spec = std::make_shared<const v1::VmSpec>(std::move(placed_spec));
  ++workers_;
  std::thread([this, vm, slot_name = slot.name, ordinal = slot.ordinal, run, spec, standby_of] {
    std::shared_ptr<runtime::Replica> replica;
    Placed placed;
    std::string error;
    bool no_room = false;  // no node fits it (rather than a start that failed)
    std::optional<VolumeClaim> volume;
    std::optional<v1::NetworkAttachment> network;
    try {
      if (has_volume(*spec)) {
        if (!volumes_) throw Error(errc::unavailable, "this server keeps no volumes");
        volume = run->role == "primary" ? volumes_->claim_primary(vm, spec->storage())
                                        : volumes_->claim(vm, ordinal, spec->storage());
        std::lock_guard lock(mutex_);
        run->volume = volume->attachment.name();
      }
      if (!spec->network().empty()) {
        if (!networks_) throw Error(errc::unavailable, "this server keeps no networks");
        network = networks_->claim(spec->network(), slot_name);
      }
      {
        // One placement at a time, each seeing where the set's replicas went: spread holds.
        std::lock_guard placing(placement_mutex_);
        PlacementRequest request;
        request.function = vm;
        request.vm_spec = spec.get();
        if (volume) request.only_node = volume->node;
        {
          std::lock_guard lock(mutex_);
          if (auto s = sets_.find(vm); s != sets_.end()) {
            for (const auto& [o, other] : s->second->slots) {
              for (const auto* r : {&other->current, &other->next}) {
                if (*r && *r != run && !(*r)->node.empty())
                  ++request.instances_per_node[(*r)->node];
              }
            }
          }
        }
        no_room = true;
        try {
          placed = nodes_->place(request);
        } catch (const Error& e) {
          if (request.only_node.empty()) throw;
          throw Error(e.code(), std::string(e.what()) + " (its volume " +
                                    volume->attachment.name() + " lives on node " +
                                    request.only_node + ": pool " + volume->pool +
                                    " is node-local)");
        }
        no_room = false;
        const auto described = placed.node->describe();
        std::lock_guard lock(mutex_);
        run->node = placed.node->name();
        run->address = described.address();
        run->driver = replica_driver(*spec, described);
        if (run->driver == "libvirt") {
          const auto kvm = described.labels().find("kvm");
          run->accel = kvm != described.labels().end() && kvm->second == "true" ? "kvm" : "tcg";
        }
        run->reserved = placed.reserved;
        if (network) {
          run->network_address = network->address();
          network->set_local(described.address());
          for (auto& peer : nodes_->peer_addresses(placed.node->name())) {
            network->add_peers(std::move(peer));
          }
        }
      }
      ReplicaAssignment assignment;
      assignment.replica.spec = *spec;
      if (run->role == "primary") {
        // The fence: the stored epoch bumped in one compare-and-swap, before the volume is
        // attached under it; a run of an older epoch is refused the volume from now on. The
        // workload may stamp its writes with it (BLIXARD_EPOCH).
        const std::int64_t epoch = fence(vm, *run, slot_name, placed.node->name());
        if (volume) volume->attachment.set_writer_epoch(epoch);
        (*assignment.replica.spec.mutable_env())["BLIXARD_EPOCH"] = std::to_string(epoch);
      }
      assignment.epoch = placed.epoch;
      assignment.replica.vm = vm;
      assignment.replica.slot = slot_name;
      assignment.replica.name = slot_name + "." + std::to_string(run->generation);
      if (volume) assignment.replica.volume = volume->attachment;
      if (standby_of && run->driver == "libvirt" && volumes_) {
        try {
          auto held = volumes_->claim_primary(vm, standby_of->storage());
          held.attachment.set_standby(true);
          held.attachment.set_writer_epoch(0);
          assignment.replica.volume = held.attachment;
          *assignment.replica.spec.mutable_ports() = standby_of->ports();
          std::lock_guard lock(mutex_);
          run->held_volume = held.attachment.name();
        } catch (const std::exception&) {
          // (A node-local pool: no volume to hold; its promotion starts the primary afresh.)
        }
      }
      if (network) assignment.replica.network = *network;
      std::weak_ptr<Hub> hub = hub_;
      assignment.replica.on_exit = [hub, vm, ordinal,
                                    generation = run->generation](const runtime::ReplicaExit& e) {
        auto h = hub.lock();
        if (!h) return;
        std::lock_guard lock(h->mutex);
        if (h->self != nullptr) h->self->exited(vm, ordinal, generation, e);
      };
      assignment.replica.on_log =
          [telemetry = telemetry_, vm, slot_name, node = placed.node->name()](
              const std::string&, const std::string& stream, std::string line) {
            telemetry->append_log(log_key(vm), slot_name, node, stream, std::move(line));
          };
      replica = placed.node->start_replica(assignment);
      if (volume) {
        const auto epoch =
            run->role == "primary" ? volume->attachment.writer_epoch() : placed.epoch;
        volumes_->attached(
            volume->attachment.name(), placed.node->name(), replica->name(), epoch,
            run->driver == "libvirt" ? runtime::k_volume_image : runtime::k_volume_directory);
        if (run->role == "primary") {
          std::lock_guard lock(mutex_);
          if (auto s = sets_.find(vm); s != sets_.end() && s->second->failing_over) {
            failover_step(vm, *s->second, "volume-attached",
                          volume->attachment.name() + " attached to " + slot_name + " on " +
                              placed.node->name() + " under epoch " + std::to_string(epoch));
          }
        }
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    bool stop_now = false;
    std::string event, reason;
    {
      std::lock_guard lock(mutex_);
      auto s = sets_.find(vm);
      std::shared_ptr<Slot> sl;
      if (s != sets_.end()) {
        if (auto found = s->second->slots.find(ordinal); found != s->second->slots.end()) {
          sl = found->second;
        }
      }
      const bool ours = sl && sl->find(run->generation) != nullptr;
      // Given up on while it started (past its healthyDeadline): listed as stopping.
      const bool abandoned = ours && run->phase == Run::stopping;
      if (replica && ours && !abandoned && !sl->remove && !closed_) {
        run->phase = Run::running;
        run->replica = replica;
        // (A standby's forwarded ports are served once it is promoted.)
        if (run->role != "replica") run->ports = replica->ports();
        run->started_at = std::chrono::system_clock::now();
        run->ready_at = Clock::now();
        run->next_check = run->ready_at + check_interval(run->readiness);
        sl->failed = false;
        sl->failures_in_row = 0;
        sl->message.clear();
        reason = "ReplicaStarted";
        event = slot_name + " (revision " + std::to_string(run->revision) + ") is running on " +
                run->node + (run->role.empty() ? "" : " as " + run->role);
        if (run->role == "primary") {
          Set& set = *s->second;
          if (set.failing_over) {
            set.failing_over = false;
            failover_step(vm, set, "promoted",
                          slot_name + " is primary on " + run->node + " (epoch " +
                              std::to_string(run->epoch) + ")");
            // (The balancer reads the ready replicas per connection: from now on it is this one.)
            failover_step(vm, set, "balancer-switched",
                          "the load balancer sends the set's ports to " + slot_name);
          }
        }
      } else if (replica) {
        stop_now = true;  // scaled down, stopped, deleted or given up on while it started
        run->phase = Run::stopping;
        run->replica = replica;
        if (!ours && placed.node) nodes_->release(placed.node->name(), placed.reserved);
      } else {
        if (placed.node) nodes_->release(placed.node->name(), placed.reserved);
        reason = "ReplicaFailed";
        event = slot_name + " did not start: " + error;
        if (abandoned) {
          std::erase(sl->retiring, run);
          reason = "ReplicaStopped";
          event = slot_name + " (revision " + std::to_string(run->revision) +
                  "), given up on, did not start either: " + error;
        } else if (ours) {
          Set& set = *s->second;
          if (sl->next == run && no_room && sl->current && ready_beside(set, *sl)) {
            // No room for the new run beside the old one: the others serve while this slot's
            // old run makes way for it (Nomad's in-place replacement; Kubernetes' maxSurge 0).
            sl->next.reset();
            sl->replacing = sl->current->revision;
            retire(*sl, sl->current, options_.drain);
            reason = "ReplicaReplacedInPlace";
            event = "no room for " + slot_name + "'s revision " + std::to_string(run->revision) +
                    " beside the old one (" + error + "): replacing it in place";
          } else if (sl->next == run) {
            // The new revision does not start: the rollout halts, the old run keeps serving.
            sl->next.reset();
            event = halt(set, sl->current ? sl->current->revision : set.serving,
                         slot_name + " did not start: " + error +
                             (no_room ? " (a rolling update needs room for one replica more; "
                                        "free some, or update with strategy recreate)"
                                      : ""));
            reason = "RolloutHalted";
          } else if (run->replaces != 0 && !no_room && set.serving == run->revision) {
            // Started in place of the old revision and failed: the slot goes back to it.
            if (sl->current == run) sl->current.reset();
            event = halt(set, run->replaces, slot_name + " did not start: " + error);
            reason = "RolloutHalted";
          } else {
            if (sl->current == run) sl->current.reset();
            // Still to replace the old revision in place once there is room.
            if (no_room && run->replaces != 0) sl->replacing = run->replaces;
            failed(*sl, "did not start: " + error);
          }
        }
      }
    }
    if (!event.empty()) publish(vm, reason, event);
    if (stop_now) replica->stop(options_.stop_grace);
    // Last: once the count is down, shutdown() may return and this object go.
    std::lock_guard lock(mutex_);
    --workers_;
    idle_.notify_all();
    wake_.notify_all();
  }).detach();
}

void VmSets::retire(Slot& slot, const std::shared_ptr<Run>& which, milliseconds drain) {
  // A copy: `which` may be the slot's own pointer, reset below.
  const std::shared_ptr<Run> run = which;  // NOLINT(performance-unnecessary-copy-initialization)
  if (!run || run->phase == Run::stopping) return;
  run->phase = Run::stopping;  // out of the load balancer from now on
  if (slot.current == run) slot.current.reset();
  if (slot.next == run) slot.next.reset();
  slot.retiring.push_back(run);
  auto replica = run->replica;
  if (!replica) return;
  ++workers_;
  // A standby holds no data and serves nothing: it goes at once (a promotion waits for it).
  const bool standby = run->role == "replica";
  std::thread([this, replica, drain, standby] {
    if (drain.count() > 0) {
      std::unique_lock lock(mutex_);
      wake_.wait_for(lock, drain, [&] { return closed_; });
    }
    if (standby) {
      replica->kill();
    } else {
      replica->stop(options_.stop_grace);
    }
    std::lock_guard lock(mutex_);
    --workers_;
    idle_.notify_all();
  }).detach();
}

std::string VmSets::halt(Set& set, std::int64_t back_to, const std::string& why) {
  if (set.reverting) {
    // The revision it went back to fails too: the revert stops where it is.
    set.reverting = false;
    set.rollout = set.halted + "; the revert to revision " + std::to_string(set.serving) +
                  " halted too: " + why;
    return set.rollout;
  }
  set.halted = "rollout of revision " + std::to_string(set.revision) + " halted: " + why;
  if (set.revisions.at(set.revision).spec.update_strategy().auto_revert() && set.stable != 0 &&
      set.stable != set.revision && set.revisions.contains(set.stable)) {
    set.serving = set.stable;
    set.reverting = true;  // roll() brings the updated replicas back
    set.updated = 0;
    set.progress_at = Clock::now();
    set.rollout = set.halted + "; reverting to revision " + std::to_string(set.serving);
    return set.rollout;
  }
  set.serving = back_to;
  set.rollout = set.halted + "; serving revision " + std::to_string(set.serving);
  return set.rollout;
}

bool VmSets::ready_beside(const Set& set, const Slot& slot) {
  for (const auto& [ordinal, other] : set.slots) {
    if (other.get() != &slot && other->current && other->current->phase == Run::running &&
        !other->remove) {
      return true;
    }
  }
  return false;
}

void VmSets::failed(Slot& slot, const std::string& why) {
  slot.failed = true;
  slot.message = why;
  ++slot.failures_in_row;
  auto backoff = options_.restart_backoff * (1 << std::min(slot.failures_in_row - 1, 10));
  backoff = std::min<milliseconds>(backoff, options_.max_restart_backoff);
  slot.retry_at = Clock::now() + backoff;
}

void VmSets::exited(const std::string& vm, int ordinal, std::uint64_t generation,
                    const runtime::ReplicaExit& exit) {
  std::string event, reason;
  std::pair<std::string, std::string> detach;  // the volume and the run that wrote to it
  {
    std::lock_guard lock(mutex_);
    auto s = sets_.find(vm);
    if (s == sets_.end()) return;
    Set& set = *s->second;
    auto sl = set.slots.find(ordinal);
    if (sl == set.slots.end()) return;
    Slot& slot = *sl->second;
    auto* found = slot.find(generation);
    if (found == nullptr) return;
    std::shared_ptr<Run> run = *found;
    if (!run->node.empty()) nodes_->release(run->node, run->reserved);
    if (volumes_ && run->replica && !run->volume.empty()) {
      detach = {run->volume, run->replica->name()};
    }
    if (run->role == "primary" && run->phase != Run::stopping && !set.failing_over) {
      // The primary is gone: the failover starts here (elect() picks who takes over).
      set.failover.clear();
      set.failover_began = Clock::now();
      set.failing_over = true;
      failover_step(vm, set, "detected",
                    slot.name + " " + (run->unhealthy.empty() ? exit.reason : run->unhealthy));
    }
    const std::string what = slot.name + " (revision " + std::to_string(run->revision) + ") ";
    if (run->phase == Run::stopping) {
      std::erase(slot.retiring, run);
      if (slot.current == run) slot.current.reset();
      event = what + "stopped";
      reason = "ReplicaStopped";
    } else if (slot.next == run) {
      // The new revision failed before it took over: halt, keep the old run.
      slot.next.reset();
      event = halt(set, slot.current ? slot.current->revision : set.serving,
                   slot.name + " " + exit.reason);
      reason = "RolloutHalted";
    } else if (run->replaces != 0 && set.serving == run->revision) {
      // Started in place of the old revision and failed before it proved itself: the slot
      // starts the old revision again at once (it ran; the new one is what failed).
      slot.current.reset();
      event = halt(set, run->replaces, slot.name + " " + exit.reason);
      reason = "RolloutHalted";
    } else {
      const std::string why = run->unhealthy.empty() ? exit.reason : run->unhealthy;
      slot.current.reset();
      ++slot.restarts;
      failed(slot, slot.name + " " + why + "; replaced");
      event = what + why + " on " + run->node + "; starting it again";
      reason = "ReplicaFailed";
    }
    if (slot.remove && slot.empty()) set.slots.erase(sl);
  }
  if (!detach.first.empty()) {
    try {
      volumes_->detached(detach.first, detach.second);
    } catch (const std::exception&) {
      // The store is closing with the server: the record says the last writer, as it did.
    }
  }
  publish(vm, reason, event);
  wake_.notify_all();
}

void VmSets::publish(const std::string& vm, const std::string& reason, const std::string& what) {
  v1::WatchEvent event;
  event.set_type("record");
  event.set_kind("vms");
  event.set_name(vm);
  event.set_reason(reason);
  event.set_message(what);
  telemetry_->publish(std::move(event));
}

std::string VmSets::log_key(const std::string& vm) { return "vm:" + vm; }

void VmSets::fill_status(const std::string& vm, const v1::VmSpec& spec,
                         v1::VmStatus& status) const {
  std::lock_guard lock(mutex_);
  const int desired = spec.stopped() ? 0 : static_cast<int>(spec.replicas());
  std::uint32_t ready = 0, failed_count = 0;
  std::string last_failure;
  auto add = [&](const Slot& slot, const Run* run, const std::string& phase) {
    auto& in = *status.add_instances();
    in.set_name(slot.name);
    in.set_vm(vm);
    in.set_phase(phase);
    in.set_message(slot.message);
    in.set_restarts(slot.restarts);
    if (run == nullptr) return;
    if (run->phase == Run::running && !run->node.empty() && !nodes_->find(run->node)) {
      // Only a guest runs on without its node's connection (docs/vms.md, "Agent restarts").
      in.set_message("node " + run->node +
                     " is disconnected: held while its guest runs on, until its agent is back or "
                     "the node's lease lapses");
    }
    in.set_node(run->node);
    in.set_driver(run->driver);
    in.set_accel(run->accel);
    in.set_address(run->address);
    in.set_network_address(run->network_address);
    in.set_revision(run->revision);
    in.set_role(run->role);
    in.set_primary(run->role == "primary");
    in.set_epoch(run->epoch);
    for (const auto& [port, host] : run->ports) (*in.mutable_host_ports())[port] = host;
    if (run->phase == Run::running) {
      const auto since = run->started_at.time_since_epoch();
      in.mutable_started_at()->set_seconds(
          std::chrono::duration_cast<std::chrono::seconds>(since).count());
    }
  };
  if (auto it = sets_.find(vm); it != sets_.end()) {
    const Set& set = *it->second;
    status.set_revision(set.revision);
    status.set_serving_revision(set.serving);
    status.set_rollout(set.rollout);
    status.set_observed_version(set.version);
    if (!set.spec.primary_election_policy().empty()) {
      status.set_primary_epoch(set.epoch);
      for (const auto& step : set.failover) *status.add_failover() = step;
      if (const auto p = set.slots.find(set.primary); p != set.slots.end() && p->second->current &&
                                                      p->second->current->role == "primary" &&
                                                      p->second->current->phase == Run::running) {
        status.set_primary(p->second->name);
      }
    }
    for (const auto& [number, revision] : set.revisions) {
      auto& r = *status.add_revisions();
      r.set_revision(number);
      *r.mutable_spec() = revision.spec;
      const auto at = revision.created.time_since_epoch();
      r.mutable_created_at()->set_seconds(
          std::chrono::duration_cast<std::chrono::seconds>(at).count());
    }
    for (const auto& [ordinal, slot] : set.slots) {
      const Run* run = slot->current.get();
      if (run != nullptr) {
        add(*slot, run, phase_name(run->phase));
        if (run->phase == Run::running) ++ready;
      } else if (slot->failed) {
        add(*slot, nullptr, "Failed");
        ++failed_count;
        last_failure = slot->message;
      } else if (slot->retiring.empty()) {
        add(*slot, nullptr, "Pending");
      }
      if (slot->next) add(*slot, slot->next.get(), phase_name(slot->next->phase) + " (update)");
      for (const auto& r : slot->retiring) add(*slot, r.get(), "Stopping");
    }
  }
  status.set_ready_replicas(ready);
  if (auto b = balanced_.find(vm); b != balanced_.end()) {
    for (const auto& [port, address] : b->second) {
      auto& e = *status.add_endpoints();
      e.set_port(port);
      e.set_address(address);
    }
  }
  if (desired == 0) {
    status.set_phase(status.instances_size() == 0 ? "Stopped" : "Stopping");
  } else if (static_cast<int>(ready) >= desired) {
    status.set_phase("Running");
  } else if (ready > 0) {
    status.set_phase("Degraded");
  } else {
    status.set_phase(failed_count > 0 ? "Failed" : "Pending");
  }
  if (!last_failure.empty()) status.set_message(last_failure);
}

std::vector<VmEndpoint> VmSets::endpoints(const std::string& vm, std::uint32_t port) const {
  std::vector<VmEndpoint> out;
  std::lock_guard lock(mutex_);
  auto it = sets_.find(vm);
  if (it == sets_.end()) return out;
  for (const auto& [ordinal, slot] : it->second->slots) {
    // A new revision's run serves beside the old one until it takes over.
    for (const auto* run : {slot->current.get(), slot->next.get()}) {
      if (run == nullptr || run->phase != Run::running || !run->replica->alive()) continue;
      auto p = run->ports.find(port);
      if (p == run->ports.end()) continue;
      out.push_back({slot->name, run->address, p->second});
    }
  }
  return out;
}

std::map<std::string, std::vector<std::uint32_t>> VmSets::exposed() const {
  std::map<std::string, std::vector<std::uint32_t>> out;
  std::lock_guard lock(mutex_);
  for (const auto& [vm, set] : sets_) {
    if (set->deleted) continue;
    out[vm].assign(set->spec.ports().begin(), set->spec.ports().end());
  }
  return out;
}

void VmSets::set_balanced(const std::string& vm, std::uint32_t port, const std::string& address) {
  std::lock_guard lock(mutex_);
  if (address.empty()) {
    auto it = balanced_.find(vm);
    if (it == balanced_.end()) return;
    it->second.erase(port);
    if (it->second.empty()) balanced_.erase(it);
  } else {
    balanced_[vm][port] = address;
  }
}

}  // namespace blixard::control
