// See task_store.hpp.
#include "actors/task_store.hpp"

#include "runtime/ids.hpp"

namespace makima {

void put_record(store::write_batch& batch, const task_record& rec,
                uint64_t event_no, std::string detail) {
  state_change change{rec.attempt, rec.state, rec.updated_at,
                      std::move(detail)};
  if (change.at == 0)
    change.at = now_ms();
  batch.put_task(rec.spec.id, to_json(rec));
  batch.put_event(rec.spec.id, event_no, to_json(change));
}

caf::expected<std::vector<output_chunk>> read_output(store::db& db,
                                                     const std::string& id,
                                                     uint64_t from,
                                                     uint64_t max_bytes) {
  std::vector<output_chunk> out;
  uint64_t bytes = 0;
  auto err = db.for_each_output(id, from, [&](const store::stored_chunk& c) {
    if (!out.empty() && bytes + c.bytes.size() > max_bytes)
      return false;
    bytes += c.bytes.size();
    out.push_back(output_chunk{c.seq, c.stream, c.bytes});
    return true;
  });
  if (err)
    return err;
  return out;
}

} // namespace makima
