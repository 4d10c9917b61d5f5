// Which partition a topic (or an MQTT client id) belongs to. This function is part of the
// cluster contract: every edge and core node must compute the same answer forever, so it is
// defined here once, independent of any library's hash.
#pragma once

#include <cstdint>
#include <string_view>

namespace herald {

// 64-bit FNV-1a of the bytes.
uint64_t StableHash64(std::string_view bytes);

// partition = StableHash64(key) mod partition_count; partition_count > 0.
inline uint32_t PartitionFor(std::string_view key, uint32_t partition_count) {
  return static_cast<uint32_t>(StableHash64(key) % partition_count);
}

}  // namespace herald
