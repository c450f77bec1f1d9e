// The domain mapping of tasks onto a `store::db`, written once for every
// actor that stores tasks (PERSISTENCE on a node, the SERVER on a server):
// a record with its history event in one batch, and bounded output reads.
// store::db itself stays domain-free (it takes JSON text and bytes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "actors/messages.hpp"
#include "runtime/store/db.hpp"

namespace makima {

/// Adds to `batch` the record `rec` and its state as history event number
/// `event_no` with `detail` (at: rec.updated_at, or now when 0).
void put_record(store::write_batch& batch, const task_record& rec,
                uint64_t event_no, std::string detail);

/// Output chunks of task `id` from seq `from`, at most `max_bytes` in total
/// but at least one chunk when any is left.
caf::expected<std::vector<output_chunk>> read_output(store::db& db,
                                                     const std::string& id,
                                                     uint64_t from,
                                                     uint64_t max_bytes);

} // namespace makima
