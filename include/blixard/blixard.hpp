// The whole SDK in one include.
#pragma once

#include "blixard/cluster.hpp"
#include "blixard/error.hpp"
#include "blixard/function.hpp"
#include "blixard/spec.hpp"
#include "blixard/trigger.hpp"
#include "blixard/version.hpp"
#include "blixard/vm.hpp"
