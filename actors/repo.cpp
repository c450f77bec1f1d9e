// The REPO actor: turns task requests into runtime/git calls, one at a
// time, on the bare mirror of one repository.
#include "actors/repo.hpp"

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

// Opens the mirror (clone when missing). `fetch` also fetches an existing
// mirror; a resumed attempt reuses what is there.
caf::error ensure_mirror(repo_state& st, bool fetch) {
  if (st.mirror) {
    return fetch ? st.mirror->fetch() : caf::none;
  }
  auto m = git::mirror::open(st.url, st.repos_dir, fetch);
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
      [self](prepare_atom,
             const prepare_request& req) -> caf::result<worktree> {
        auto& st = self->state;
        auto& [id, ref, dir] = req;
        if (auto err = ensure_mirror(st, true)) {
          log::warn("repo", "cannot prepare " + log::redact(st.url)
                                + " for task " + id + ": " + describe(err));
          return err;
        }
        auto commit = st.mirror->resolve(ref);
        if (!commit)
          return commit.error();
        auto wt = st.mirror->add_worktree(id, dir, *commit, "makima/" + id);
        if (!wt)
          return wt.error();
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
        auto id = st.mirror->commit_all(dir, message, sig);
        if (!id)
          return id.error();
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
      [self](push_atom, const std::string& branch,
             const std::string& url) -> caf::result<ok_atom> {
        auto& st = self->state;
        if (auto err = ensure_mirror(st, false))
          return err;
        if (auto err = st.mirror->push(branch, url))
          return err;
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
