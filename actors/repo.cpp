// The REPO actor: turns task requests into runtime/git calls, one at a
// time, on the bare mirror of one repository.
#include "actors/repo.hpp"

#include <chrono>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/log.hpp"

namespace makima {

repo_state::repo_state() = default;
repo_state::~repo_state() = default;

namespace {

using clock_type = std::chrono::steady_clock;

// Reports one phase of git work to the requester (the TASK): a start, at
// most ten updates a second, and an end with the phase's duration.
class phase_reporter {
public:
  phase_reporter(caf::strong_actor_ptr to, std::string task, std::string phase,
                 std::string target)
      : to_(caf::actor_cast<caf::actor>(std::move(to))) {
    p_.task = std::move(task);
    p_.phase = std::move(phase);
    p_.target = std::move(target);
    start_ = clock_type::now();
    send();
  }
  void update(const git::progress& g) {
    p_.phase = git::to_string(g.phase);
    p_.done = g.done;
    p_.total = g.total;
    p_.bytes = g.bytes;
    auto now = clock_type::now();
    if (now - last_ >= std::chrono::milliseconds(100)) {
      last_ = now;
      send();
    }
  }
  void finish() {
    p_.finished = true;
    p_.elapsed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        clock_type::now() - start_)
                        .count();
    send();
  }
  git::progress_fn sink() {
    return [this](const git::progress& g) { update(g); };
  }

private:
  void send() {
    if (to_)
      caf::anon_send(to_, progress_atom::value, p_);
  }
  caf::actor to_;
  task_progress p_;
  clock_type::time_point start_;
  clock_type::time_point last_ = clock_type::now();
};

// Opens the mirror (clone when missing). `fetch` also fetches an existing
// mirror; a resumed attempt reuses what is there.
caf::error ensure_mirror(repo_state& st, bool fetch,
                         const git::control& ctl = {}) {
  if (st.mirror) {
    return fetch ? st.mirror->fetch(ctl) : caf::none;
  }
  auto m = git::mirror::open(st.url, st.repos_dir, fetch, ctl);
  if (!m)
    return m.error();
  st.mirror = std::make_unique<git::mirror>(std::move(*m));
  return caf::none;
}

} // namespace

repo_actor::behavior_type repo(repo_actor::stateful_pointer<repo_state> self,
                               std::string url, std::filesystem::path repos_dir,
                               std::string author_name,
                               std::string author_email) {
  git::init();
  auto& st = self->state;
  st.url = std::move(url);
  st.repos_dir = std::move(repos_dir);
  st.author_name = std::move(author_name);
  st.author_email = std::move(author_email);
  return {
      [self](prepare_atom, const prepare_request& req,
             const cancel_token& token) -> caf::result<worktree> {
        auto& st = self->state;
        auto& [id, ref, dir] = req;
        git::control ctl;
        ctl.cancel = token.flag;
        auto target = log::redact(st.url);
        {
          bool fresh = !st.mirror
                       && !std::filesystem::exists(
                           st.repos_dir / git::mirror_dir_name(st.url));
          phase_reporter rep{self->current_sender(), id,
                             fresh ? "cloning" : "fetching", target};
          ctl.on_progress = rep.sink();
          if (auto err = ensure_mirror(st, true, ctl)) {
            if (code_of(err) != ec::cancelled)
              log::warn("repo", "cannot prepare " + target + " for task " + id
                                    + ": " + describe(err));
            return err;
          }
          rep.finish();
        }
        auto commit = st.mirror->resolve(ref);
        if (!commit)
          return commit.error();
        phase_reporter rep{self->current_sender(), id, "checking_out", target};
        ctl.on_progress = rep.sink();
        auto wt =
            st.mirror->add_worktree(id, dir, *commit, "makima/" + id, ctl);
        if (!wt)
          return wt.error();
        rep.finish();
        log::debug("repo", "task " + id + ": worktree " + wt->path.string()
                               + " at " + wt->base_commit);
        return worktree{wt->path.string(), wt->branch, wt->base_commit};
      },
      [self](reopen_atom, const std::string& id,
             const std::string& branch) -> caf::result<worktree> {
        auto& st = self->state;
        if (auto err = ensure_mirror(st, false))
          return err;
        auto wt = st.mirror->open_worktree(id, branch);
        if (!wt)
          return wt.error();
        return worktree{wt->path.string(), wt->branch, wt->base_commit};
      },
      [self](commit_atom, const std::string& dir,
             const std::string& message) -> caf::result<std::string> {
        auto& st = self->state;
        if (auto err = ensure_mirror(st, false))
          return err;
        git::signature sig{st.author_name, st.author_email};
        phase_reporter rep{self->current_sender(),
                           std::filesystem::path{dir}.filename().string(),
                           "committing", log::redact(st.url)};
        auto id = st.mirror->commit_all(dir, message, sig);
        if (!id)
          return id.error();
        rep.finish();
        return *id ? **id : std::string{};
      },
      [self](snapshot_atom, const std::string& dir,
             const std::string& id) -> caf::result<std::string> {
        auto& st = self->state;
        if (auto err = ensure_mirror(st, false))
          return err;
        git::signature sig{st.author_name, st.author_email};
        auto commit =
            st.mirror->snapshot(dir, "refs/wip/" + id, "makima wip " + id, sig);
        if (!commit) {
          log::warn("repo", "cannot snapshot task " + id + ": "
                                + describe(commit.error()));
          return commit.error();
        }
        return *commit;
      },
      [self](push_atom, const std::string& branch, const std::string& url,
             const cancel_token& token) -> caf::result<ok_atom> {
        auto& st = self->state;
        if (auto err = ensure_mirror(st, false))
          return err;
        git::control ctl;
        ctl.cancel = token.flag;
        auto slash = branch.rfind('/');
        phase_reporter rep{
            self->current_sender(),
            slash == std::string::npos ? branch : branch.substr(slash + 1),
            "pushing", log::redact(url)};
        ctl.on_progress = rep.sink();
        if (auto err = st.mirror->push(branch, url, ctl))
          return err;
        rep.finish();
        return ok_atom::value;
      },
      [self](remove_atom, const std::string& id,
             const std::string& branch) -> caf::result<ok_atom> {
        auto& st = self->state;
        if (auto err = ensure_mirror(st, false))
          return err;
        if (auto err = st.mirror->remove_worktree(id, branch)) {
          log::warn("repo", "cannot remove the worktree of task " + id + ": "
                                + describe(err));
          return err;
        }
        return ok_atom::value;
      },
  };
}

repo_actor spawn_repo(caf::actor_system& sys, std::string url,
                      std::filesystem::path repos_dir, std::string author_name,
                      std::string author_email) {
  return sys.spawn<caf::detached>(repo, std::move(url), std::move(repos_dir),
                                  std::move(author_name),
                                  std::move(author_email));
}

} // namespace makima
