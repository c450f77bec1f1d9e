// Finding processes a dead makima left behind. A task's child gets SIGKILL
// when makima dies (PR_SET_PDEATHSIG), but its own children live on in the
// worktree. They all inherit MAKIMA_TASK_ID, so `task resume` finds them
// through /proc/<pid>/environ and stops them before the next attempt starts
// in the same worktree.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace makima::process {

/// Returns the pids of live processes (other than this one) whose
/// environment holds exactly the entry `entry` ("KEY=VALUE"). Processes
/// whose environment cannot be read (other users) are skipped.
std::vector<pid_t> find_processes_with_env(const std::string& entry);

/// SIGKILLs every process returned by `find_processes_with_env(entry)`
/// and returns how many were signalled.
size_t kill_processes_with_env(const std::string& entry);

} // namespace makima::process
