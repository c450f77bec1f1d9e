// The local LINK: writes persisted output to the terminal, byte for byte.
#include "actors/local_link.hpp"

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "runtime/process/io.hpp"

namespace makima {

link_actor::behavior_type
local_link(link_actor::stateful_pointer<local_link_state> self, int out_fd,
           int err_fd, std::function<void(const task_record&)> on_state,
           std::function<void(const task_record&)> on_result) {
  auto& st = self->state;
  st.out_fd = out_fd;
  st.err_fd = err_fd;
  st.on_state = std::move(on_state);
  st.on_result = std::move(on_result);
  return {
      [self](output_atom, const std::string&, uint32_t,
             const std::vector<output_chunk>& chunks) -> caf::result<ok_atom> {
        for (auto& c : chunks)
          process::write_all(
              c.stream == 2 ? self->state.err_fd : self->state.out_fd, c.bytes);
        return ok_atom::value;
      },
      [self](state_atom, const task_record& rec) {
        if (self->state.on_state)
          self->state.on_state(rec);
      },
      [self](result_atom, const task_record& rec) {
        if (self->state.on_result)
          self->state.on_result(rec);
      },
  };
}

link_actor spawn_local_link(caf::actor_system& sys, int out_fd, int err_fd,
                            std::function<void(const task_record&)> on_state,
                            std::function<void(const task_record&)> on_result) {
  return sys.spawn<caf::detached>(local_link, out_fd, err_fd,
                                  std::move(on_state), std::move(on_result));
}

} // namespace makima
