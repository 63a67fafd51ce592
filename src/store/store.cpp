// The backend-independent conveniences of the Store interface, expressed as one-op transactions.
#include "store/store.hpp"

namespace blixard::store {

TxnResult Store::put(const std::string& key, const std::string& value, std::int64_t lease) {
  Txn t;
  t.success.push_back(Operation{Operation::Type::put, key, value, lease});
  return txn(t);
}

TxnResult Store::erase(const std::string& key) {
  Txn t;
  t.success.push_back(Operation{Operation::Type::erase, key, {}, 0});
  return txn(t);
}

}  // namespace blixard::store
