// The stored objects with REST routes of their own: functions, vms, triggers, storage pools,
// networks (and the volumes VM sets make). Create is
// apply(create) of a one-object set, then a read of what the store holds; delete is apply(remove).
#include "api/routes.hpp"

namespace blixard::api {
namespace {

template <class M>
void require_name(const M& m) {
  if (m.metadata().name().empty()) {
    throw Error(errc::invalid_spec, "a name is required", "metadata.name");
  }
}

struct FunctionKind {
  static constexpr std::string_view path = "/v1/functions";
  using Object = v1::Function;
  static auto* add(v1::ObjectSet& set) { return set.add_functions(); }
  static auto list(detail::Backend& b) { return b.list_functions(); }
  static auto get(detail::Backend& b, const std::string& name) { return b.get_function(name); }
};
struct VmKind {
  static constexpr std::string_view path = "/v1/vms";
  using Object = v1::Vm;
  static auto* add(v1::ObjectSet& set) { return set.add_vms(); }
  static auto list(detail::Backend& b) { return b.list_vms(); }
  static auto get(detail::Backend& b, const std::string& name) { return b.get_vm(name); }
};
struct TriggerKind {
  static constexpr std::string_view path = "/v1/triggers";
  using Object = v1::Trigger;
  static auto* add(v1::ObjectSet& set) { return set.add_triggers(); }
  static auto list(detail::Backend& b) { return b.list_triggers(); }
  static auto get(detail::Backend& b, const std::string& name) { return b.get_trigger(name); }
};

struct StoragePoolKind {
  static constexpr std::string_view path = "/v1/storagepools";
  using Object = v1::StoragePool;
  static auto* add(v1::ObjectSet& set) { return set.add_storage_pools(); }
  static auto list(detail::Backend& b) { return b.list_storage_pools(); }
  static auto get(detail::Backend& b, const std::string& name) { return b.get_storage_pool(name); }
};

struct NetworkKind {
  static constexpr std::string_view path = "/v1/networks";
  using Object = v1::Network;
  static auto* add(v1::ObjectSet& set) { return set.add_networks(); }
  static auto list(detail::Backend& b) { return b.list_networks(); }
  static auto get(detail::Backend& b, const std::string& name) { return b.get_network(name); }
};

template <class K>
void add_kind(RouteTable& table, const std::shared_ptr<detail::Backend>& backend) {
  const std::string collection(K::path);
  const std::string one = collection + "/{name}";
  table.add(http::verb::get, collection, Scope::read, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend] { return message_response(*req, K::list(*backend)); });
  });
  table.add(http::verb::post, collection, Scope::admin, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend] {
      v1::ObjectSet set;
      auto& object = *K::add(set) = decode_body<typename K::Object>(*req);
      require_name(object);
      backend->apply(set, {.mode = detail::ApplyMode::create});
      return message_response(*req, K::get(*backend, object.metadata().name()),
                              http::status::created);
    });
  });
  table.add(http::verb::get, one, Scope::read, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend, name = r.param("name")] {
      return message_response(*req, K::get(*backend, name));
    });
  });
  table.add(http::verb::delete_, one, Scope::admin, [backend](const RouteRequest& r) {
    return worker([req = r.req, backend, name = r.param("name")] {
      v1::ObjectSet set;
      K::add(set)->mutable_metadata()->set_name(name);
      return message_response(*req, backend->apply(set, {.mode = detail::ApplyMode::remove}));
    });
  });
}

}  // namespace

void add_object_routes(RouteTable& table, const RouteContext& context) {
  add_kind<FunctionKind>(table, context.backend);
  add_kind<VmKind>(table, context.backend);
  add_kind<TriggerKind>(table, context.backend);
  add_kind<StoragePoolKind>(table, context.backend);
  add_kind<NetworkKind>(table, context.backend);
  // Volumes are made by their VM sets, not declared: list and delete only.
  auto backend = context.backend;
  table.add(http::verb::get, "/v1/volumes", Scope::read, [backend](const RouteRequest& r) {
    return worker(
        [req = r.req, backend] { return message_response(*req, backend->list_volumes()); });
  });
  table.add(http::verb::delete_, "/v1/volumes/{name}", Scope::admin,
            [backend](const RouteRequest& r) {
              return worker([req = r.req, backend, name = r.param("name")] {
                return message_response(*req, backend->delete_volume(name));
              });
            });
}

}  // namespace blixard::api
