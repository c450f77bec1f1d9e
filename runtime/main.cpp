// The `makima` binary: everything happens in runtime/app/.
#include <sys/resource.h>

#include "runtime/app/commands.hpp"

int main(int argc, char** argv) {
  // A server holds one descriptor per connection and stream: take every
  // descriptor the hard limit allows (the soft default is often 1024).
  // Best effort; children get the raised soft limit too.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  return makima::app::run_cli(argc, argv);
}
