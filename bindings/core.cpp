// blixard._core: the private extension module behind the `blixard` Python package. It exposes
// blixard::Cluster with objects exchanged as canonical JSON text (the package json.loads them),
// releases the GIL around every call into the C++ core, and turns blixard::Error into the
// exception classes of blixard.errors.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>

#include "blixard/blixard.hpp"
#include "common/json.hpp"

namespace py = pybind11;

namespace {

using release_gil = py::call_guard<py::gil_scoped_release>;

// The facade returns vectors; the wire's list messages give them one JSON shape ({"items": [...]}).
template <class ListMsg, class Item>
std::string to_list_json(const std::vector<Item>& items) {
  ListMsg list;
  for (const auto& item : items) *list.add_items() = item;
  return blixard::to_json(list);
}

template <class Msg>
Msg from_json_as(const std::string& json) {
  Msg msg;
  blixard::from_json(json, msg);
  return msg;
}

blixard::detail::ApplyMode apply_mode(const std::string& mode) {
  if (mode == "apply") return blixard::detail::ApplyMode::apply;
  if (mode == "create") return blixard::detail::ApplyMode::create;
  if (mode == "remove" || mode == "delete") return blixard::detail::ApplyMode::remove;
  throw blixard::Error(blixard::errc::invalid_spec,
                       "unknown apply mode '" + mode + "' (apply, create, remove)", "mode");
}

// Invoke's answer: the handler's result as JSON text plus where and how it ran.
struct PyInvokeResult {
  std::string result;
  bool cold_start = false;
  std::string node;
  std::string request_id;
  double duration_ms = 0;
};

class PyCluster {
 public:
  explicit PyCluster(blixard::Cluster cluster) : cluster_(std::move(cluster)) {}

  static PyCluster local(const std::string& dir, const std::string& python,
                         const std::string& node_name, const std::string& nix_instantiate) {
    blixard::LocalOptions options;
    if (!python.empty()) options.python = python;
    if (!node_name.empty()) options.node_name = node_name;
    if (!nix_instantiate.empty()) options.spec.nix_instantiate = nix_instantiate;
    return PyCluster(blixard::Cluster::local(dir, std::move(options)));
  }

  static PyCluster connect(const std::string& url, const std::string& token, double timeout_s,
                           const std::string& nix_instantiate) {
    blixard::ConnectOptions options;
    options.token = token;
    if (timeout_s > 0) {
      options.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
    }
    if (!nix_instantiate.empty()) options.spec.nix_instantiate = nix_instantiate;
    return PyCluster(blixard::Cluster::connect(url, std::move(options)));
  }

  // Functions. Without a config file the overrides alone make the spec.
  std::string create_function(const std::string& name, const std::optional<std::string>& config,
                              const std::string& overrides_json) {
    if (config) {
      return blixard::to_json(cluster_.create_function(name, *config, overrides_json).get());
    }
    blixard::v1::FunctionSpec spec;
    blixard::merge_function_overrides(spec, overrides_json);
    return blixard::to_json(cluster_.create_function(name, spec).get());
  }
  std::string create_function_spec(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::FunctionSpec>(spec_json);
    return blixard::to_json(cluster_.create_function(name, spec).get());
  }
  std::string get_function(const std::string& name) {
    return blixard::to_json(cluster_.function(name).get());
  }
  std::string functions() { return to_list_json<blixard::v1::FunctionList>(cluster_.functions()); }
  void delete_function(const std::string& name) { cluster_.delete_function(name); }
  PyInvokeResult invoke(const std::string& name, const std::string& payload_json,
                        double timeout_s) {
    auto timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
    auto r = cluster_.function(name).invoke(payload_json, timeout);
    return PyInvokeResult{std::move(r.result), r.cold_start, std::move(r.node),
                          std::move(r.request_id),
                          static_cast<double>(r.duration.count()) / 1000.0};
  }

  // VMs.
  std::string create_vm(const std::string& name, const std::optional<std::string>& config,
                        const std::string& overrides_json) {
    if (config) return blixard::to_json(cluster_.create_vm(name, *config, overrides_json).get());
    blixard::v1::VmSpec spec;
    blixard::merge_vm_overrides(spec, overrides_json);
    return blixard::to_json(cluster_.create_vm(name, spec).get());
  }
  std::string create_vm_spec(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::VmSpec>(spec_json);
    return blixard::to_json(cluster_.create_vm(name, spec).get());
  }
  std::string get_vm(const std::string& name) { return blixard::to_json(cluster_.vm(name).get()); }
  std::string vms() { return to_list_json<blixard::v1::VmList>(cluster_.vms()); }
  void delete_vm(const std::string& name) { cluster_.delete_vm(name); }

  // Triggers.
  std::string create_trigger(const std::string& name, const std::string& spec_json) {
    auto spec = from_json_as<blixard::v1::TriggerSpec>(spec_json);
    return blixard::to_json(cluster_.create_trigger(name, spec).get());
  }
  std::string get_trigger(const std::string& name) {
    return blixard::to_json(cluster_.trigger(name).get());
  }
  std::string triggers() { return to_list_json<blixard::v1::TriggerList>(cluster_.triggers()); }
  void delete_trigger(const std::string& name) { cluster_.delete_trigger(name); }

  std::string nodes() { return to_list_json<blixard::v1::NodeList>(cluster_.nodes()); }
  std::string info() { return blixard::to_json(cluster_.info()); }

  std::string apply(const std::string& manifest) {
    return blixard::to_json(cluster_.apply(std::filesystem::path(manifest)));
  }
  std::string apply_objects(const std::string& objects_json, const std::string& mode) {
    auto set = from_json_as<blixard::v1::ObjectSet>(objects_json);
    return blixard::to_json(cluster_.apply(set, apply_mode(mode)));
  }
  std::string remove(const std::string& manifest) {
    return blixard::to_json(cluster_.remove(std::filesystem::path(manifest)));
  }
  // Parses a manifest without touching the cluster (for `apply --dry-run` and tests).
  std::string load_manifest(const std::string& manifest) {
    return blixard::to_json(blixard::load_manifest(manifest, cluster_.spec_options()));
  }

  void close() { cluster_.close(); }

 private:
  blixard::Cluster cluster_;
};

// Raises the blixard.errors class for `e` with its code, field and position as attributes.
void raise_blixard_error(const blixard::Error& e) {
  const auto& s = e.status();
  std::string code = s.code().empty() ? std::string(blixard::to_string(e.code())) : s.code();
  py::object errors = py::module_::import("blixard.errors");
  py::object exc =
      errors.attr("_from_status")(code, s.message(), s.field(), s.file(), s.line(), s.column());
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Private bindings of the Blixard C++ core; use the `blixard` package instead.";

  py::register_exception_translator([](std::exception_ptr p) {
    if (!p) return;
    try {
      std::rethrow_exception(p);
    } catch (const blixard::Error& e) {
      try {
        raise_blixard_error(e);
      } catch (py::error_already_set& inner) {
        // blixard.errors could not be imported: keep the message at least.
        inner.restore();
      }
    } catch (const py::error_already_set&) {
      throw;
    } catch (const py::builtin_exception&) {
      throw;
    } catch (const std::exception& e) {
      // Anything else from the core is a bug, reported as an internal BlixardError.
      try {
        raise_blixard_error(blixard::Error(blixard::errc::internal, e.what()));
      } catch (py::error_already_set& inner) {
        inner.restore();
      }
    }
  });

  m.def("version", [] { return std::string(blixard::version()); });
  m.def(
      "errc_names",
      [] {
        std::vector<std::string> names;
        for (int i = static_cast<int>(blixard::errc::invalid_spec);
             i <= static_cast<int>(blixard::errc::internal); ++i) {
          names.emplace_back(blixard::to_string(static_cast<blixard::errc>(i)));
        }
        return names;
      },
      "Every error code of the core, for checking blixard.errors against it.");
  m.def(
      "load_manifest",
      [](const std::string& path, const std::string& nix_instantiate) {
        blixard::SpecOptions options;
        if (!nix_instantiate.empty()) options.nix_instantiate = nix_instantiate;
        return blixard::to_json(blixard::load_manifest(path, options));
      },
      py::arg("path"), py::arg("nix_instantiate") = "", release_gil());
  m.def(
      "parse_size_mib",
      [](const std::string& text, const std::string& field) {
        return blixard::parse_size_mib(text, field);
      },
      py::arg("text"), py::arg("field") = "size");
  m.def(
      "parse_duration",
      [](const std::string& text, const std::string& field) {
        return static_cast<double>(blixard::parse_duration(text, field).count()) / 1000.0;
      },
      py::arg("text"), py::arg("field") = "duration");

  py::class_<PyInvokeResult>(m, "InvokeResult")
      .def_readonly("result", &PyInvokeResult::result)
      .def_readonly("cold_start", &PyInvokeResult::cold_start)
      .def_readonly("node", &PyInvokeResult::node)
      .def_readonly("request_id", &PyInvokeResult::request_id)
      .def_readonly("duration_ms", &PyInvokeResult::duration_ms);

  py::class_<PyCluster>(m, "Cluster")
      .def_static("local", &PyCluster::local, py::arg("dir"), py::arg("python") = "",
                  py::arg("node_name") = "", py::arg("nix_instantiate") = "", release_gil())
      .def_static("connect", &PyCluster::connect, py::arg("url"), py::arg("token") = "",
                  py::arg("timeout") = 0.0, py::arg("nix_instantiate") = "", release_gil())
      .def("create_function", &PyCluster::create_function, py::arg("name"), py::arg("config"),
           py::arg("overrides_json") = "{}", release_gil())
      .def("create_function_spec", &PyCluster::create_function_spec, py::arg("name"),
           py::arg("spec_json"), release_gil())
      .def("get_function", &PyCluster::get_function, py::arg("name"), release_gil())
      .def("functions", &PyCluster::functions, release_gil())
      .def("delete_function", &PyCluster::delete_function, py::arg("name"), release_gil())
      .def("invoke", &PyCluster::invoke, py::arg("name"), py::arg("payload_json"),
           py::arg("timeout") = 0.0, release_gil())
      .def("create_vm", &PyCluster::create_vm, py::arg("name"), py::arg("config"),
           py::arg("overrides_json") = "{}", release_gil())
      .def("create_vm_spec", &PyCluster::create_vm_spec, py::arg("name"), py::arg("spec_json"),
           release_gil())
      .def("get_vm", &PyCluster::get_vm, py::arg("name"), release_gil())
      .def("vms", &PyCluster::vms, release_gil())
      .def("delete_vm", &PyCluster::delete_vm, py::arg("name"), release_gil())
      .def("create_trigger", &PyCluster::create_trigger, py::arg("name"), py::arg("spec_json"),
           release_gil())
      .def("get_trigger", &PyCluster::get_trigger, py::arg("name"), release_gil())
      .def("triggers", &PyCluster::triggers, release_gil())
      .def("delete_trigger", &PyCluster::delete_trigger, py::arg("name"), release_gil())
      .def("nodes", &PyCluster::nodes, release_gil())
      .def("info", &PyCluster::info, release_gil())
      .def("apply", &PyCluster::apply, py::arg("manifest"), release_gil())
      .def("apply_objects", &PyCluster::apply_objects, py::arg("objects_json"),
           py::arg("mode") = "apply", release_gil())
      .def("remove", &PyCluster::remove, py::arg("manifest"), release_gil())
      .def("load_manifest", &PyCluster::load_manifest, py::arg("manifest"), release_gil())
      .def("close", &PyCluster::close, release_gil());
}
