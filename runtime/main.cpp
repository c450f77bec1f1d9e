// The `makima` binary: everything happens in runtime/app/.
#include "runtime/app/commands.hpp"

int main(int argc, char** argv) {
  return makima::app::run_cli(argc, argv);
}
