// The environment a task's process starts with. A task never inherits
// makima's environment: it gets a fixed list of pass-through variables
// (PATH, HOME, locale, terminal, time zone, proxies, SSH agent), the names
// the daemon's operator adds (`--pass-env`, `task.pass_env`), then the
// task's own `--env` values, then the variables makima sets for the task
// (MAKIMA_TASK_ID …). makima's own secrets — every MAKIMA_* variable of
// makima's environment and the AWS credential variables — never pass, even
// when named. `makima run`, `makima daemon` and `makima local` all build a
// task's environment with these functions.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace makima::process {

/// The names passed from makima's environment to every task. An entry
/// ending in '*' ("LC_*") is a prefix.
const std::vector<std::string>& default_pass_env();

/// PATH of a task when makima's environment has none.
inline constexpr const char* default_path = "/usr/local/bin:/usr/bin:/bin";

/// Whether `name` is withheld from every task even when named in
/// --pass-env or task.pass_env: any MAKIMA_* name (makima's keys, store
/// credentials and config; makima sets the task's own MAKIMA_* variables
/// itself) and the AWS credentials (AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_SECURITY_TOKEN).
bool is_withheld(const std::string& name);

/// Whether `name` is a variable name a user may pass: [A-Za-z_][A-Za-z0-9_]*.
bool valid_env_name(const std::string& name);

/// The variables makima sets for every task (MAKIMA_TASK_ID,
/// MAKIMA_ATTEMPT, MAKIMA_RESUMED, MAKIMA_STATE_DIR, MAKIMA_WORKTREE); a
/// task's --env cannot set them.
const std::vector<std::string>& task_variables();

/// Whether `name` is one of task_variables().
bool is_task_variable(const std::string& name);

/// The environment every task of this process starts from, as KEY=VALUE
/// sorted by key: the entries of `parent` named by default_pass_env() or
/// `extra_names`, minus the withheld ones; PATH is default_path when
/// `parent` has none. Names in `extra_names` that are withheld or invalid
/// are ignored here (the CLI and config reject them before).
std::vector<std::string>
base_environment(const std::map<std::string, std::string>& parent,
                 const std::vector<std::string>& extra_names);

/// The complete environment of one task's process: `base`, then
/// `task_env` (the task's KEY=VALUE values), then `makima_vars`; a later
/// entry replaces an earlier one with the same key, so the task cannot
/// override makima's variables. Sorted by key; malformed entries (no '=',
/// empty key) are dropped.
std::vector<std::string> child_environment(
    const std::vector<std::string>& base,
    const std::vector<std::string>& task_env,
    const std::vector<std::pair<std::string, std::string>>& makima_vars);

/// Hides makima's own secrets from its tasks, which run as the same user:
/// overwrites the values of the withheld variables (is_withheld) in this
/// process's environment in place (so /proc/<makima>/environ no longer
/// shows them; getenv then returns "") and marks the process non-dumpable
/// (PR_SET_DUMPABLE 0: a task of the same non-root user can then neither
/// read /proc/<makima>/environ or /mem nor ptrace makima; makima leaves no
/// core dump). Call once the configuration is read, before a task starts.
void hide_own_secrets();

} // namespace makima::process
