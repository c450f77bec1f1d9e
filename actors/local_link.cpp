// The local LINK: writes persisted output to the terminal, byte for byte.
#include "actors/local_link.hpp"

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <cstdio>

#include "runtime/process/io.hpp"

namespace makima {

namespace {

using link_ptr = link_actor::stateful_pointer<local_link_state>;

std::string format(const char* fmt, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, a);
  return buf;
}

std::string size_text(uint64_t bytes) {
  if (bytes >= 1024 * 1024)
    return format("%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return format("%.1f KiB", static_cast<double>(bytes) / 1024.0);
}

std::string seconds_text(int64_t ms) {
  return format("%.1f s", static_cast<double>(ms) / 1000.0);
}

// "1234 objects, 5.6 MiB" (or "1234/5678 objects, ..." while running).
std::string counts(const task_progress& p, bool live) {
  bool files = p.phase == "checking_out";
  std::string n = std::to_string(p.done);
  if (live && p.total > 0)
    n += "/" + std::to_string(p.total);
  n += files ? " files" : " objects";
  if (!files && p.bytes > 0)
    n += ", " + size_text(p.bytes);
  return n;
}

// The line of a finished phase, without "makima: " and newline.
std::string finished_text(const task_progress& p) {
  auto in = " in " + seconds_text(p.elapsed_ms);
  if (p.phase == "cloning")
    return "cloned " + p.target + " (" + counts(p, false) + ")" + in;
  if (p.phase == "fetching")
    return "fetched " + p.target + " (" + counts(p, false) + ")" + in;
  if (p.phase == "checking_out")
    return "checked out " + counts(p, false) + in;
  if (p.phase == "pushing")
    return "pushed to " + p.target + " (" + counts(p, false) + ")" + in;
  if (p.phase == "committing")
    return "committed" + in;
  return p.phase + in;
}

// The live status line of a running phase.
std::string status_text(const task_progress& p) {
  std::string name = p.phase == "checking_out" ? "checking out" : p.phase;
  std::string out = name;
  if (!p.target.empty() && p.phase != "checking_out" && p.phase != "committing")
    out += " " + p.target;
  out += ":";
  if (p.total > 0)
    out += " " + std::to_string(p.done * 100 / p.total) + "%";
  if (p.done > 0 || p.total > 0)
    out += " (" + counts(p, true) + ")";
  return out;
}

void clear_status(link_ptr self) {
  auto& st = self->state;
  if (!st.status_shown)
    return;
  process::write_all(st.err_fd, "\r\033[K");
  st.status_shown = false;
}

// Writes one whole line of makima's on stderr.
void print_line(link_ptr self, const std::string& text) {
  clear_status(self);
  process::write_all(self->state.err_fd, "makima: " + text + "\n");
}

// The child's phase ended (publishing or the result): its line.
void end_running(link_ptr self, const task_record& rec) {
  auto& st = self->state;
  if (!st.running_since)
    return;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - *st.running_since)
                .count();
  st.running_since.reset();
  if (st.mode == progress_mode::quiet)
    return;
  std::string exit = rec.exit_code >= 0
                         ? " (exit " + std::to_string(rec.exit_code) + ")"
                         : std::string{};
  if (rec.signal > 0)
    exit = " (signal " + std::to_string(rec.signal) + ")";
  print_line(self, "ran for " + seconds_text(ms) + exit);
}

void show_state(link_ptr self, const task_record& rec) {
  auto& st = self->state;
  if (rec.state == task_state::running)
    st.running_since = std::chrono::steady_clock::now();
  else if (rec.state == task_state::publishing)
    end_running(self, rec);
  if (st.on_state)
    st.on_state(rec);
}

} // namespace

link_actor::behavior_type
local_link(link_actor::stateful_pointer<local_link_state> self, int out_fd,
           int err_fd, std::function<void(const task_record&)> on_state,
           std::function<void(const task_record&)> on_result,
           progress_mode mode) {
  auto& st = self->state;
  st.out_fd = out_fd;
  st.err_fd = err_fd;
  st.on_state = std::move(on_state);
  st.on_result = std::move(on_result);
  st.mode = mode;
  return {
      [self](output_atom, const std::string&, uint32_t,
             const std::vector<output_chunk>& chunks) -> caf::result<ok_atom> {
        if (!chunks.empty())
          clear_status(self);
        for (auto& c : chunks)
          process::write_all(
              c.stream == 2 ? self->state.err_fd : self->state.out_fd, c.bytes);
        return ok_atom::value;
      },
      [self](state_atom, const task_record& rec) { show_state(self, rec); },
      [self](state_atom, const task_record& rec, const restore_report&) {
        // Only daemons restore: a local run has nothing to show of it.
        show_state(self, rec);
      },
      [self](result_atom, const task_record& rec) {
        end_running(self, rec);
        clear_status(self);
        if (self->state.on_result)
          self->state.on_result(rec);
      },
      [self](progress_atom, const task_progress& p) {
        auto& st = self->state;
        if (st.mode == progress_mode::quiet)
          return;
        if (p.finished) {
          print_line(self, finished_text(p));
          return;
        }
        if (st.mode != progress_mode::live)
          return;
        process::write_all(st.err_fd, "\r\033[Kmakima: " + status_text(p));
        st.status_shown = true;
      },
      [](checkpoint_atom, const std::string&, uint32_t,
         const checkpoint_report&) {
        // The TASK logged it; nothing in the terminal's stream.
      },
      [](checkpoint_atom, const std::string&, uint32_t, const std::string&) {
        // Only servers ask for checkpoints on demand.
      },
  };
}

link_actor spawn_local_link(caf::actor_system& sys, int out_fd, int err_fd,
                            std::function<void(const task_record&)> on_state,
                            std::function<void(const task_record&)> on_result,
                            progress_mode mode) {
  return sys.spawn<caf::detached>(local_link, out_fd, err_fd,
                                  std::move(on_state), std::move(on_result),
                                  mode);
}

} // namespace makima
