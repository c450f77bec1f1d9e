// Atoms of makima's actor messages (CAF 0.17: at most 10 characters).
#pragma once

#include <caf/atom.hpp>

namespace makima {

using ack_atom = caf::atom_constant<caf::atom("ack")>;
using assign_atom = caf::atom_constant<caf::atom("assign")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using checkpoint_atom = caf::atom_constant<caf::atom("checkpoint")>;
using commit_atom = caf::atom_constant<caf::atom("commit")>;
using connect_atom = caf::atom_constant<caf::atom("connect")>;
using create_atom = caf::atom_constant<caf::atom("create")>;
using drain_atom = caf::atom_constant<caf::atom("drain")>;
using drop_atom = caf::atom_constant<caf::atom("drop")>;
using evict_atom = caf::atom_constant<caf::atom("evict")>;
using exit_atom = caf::atom_constant<caf::atom("exit")>;
using flush_atom = caf::atom_constant<caf::atom("flush")>;
using get_atom = caf::atom_constant<caf::atom("get")>;
using hello_atom = caf::atom_constant<caf::atom("hello")>;
using history_atom = caf::atom_constant<caf::atom("history")>;
using http_atom = caf::atom_constant<caf::atom("http")>;
using kill_atom = caf::atom_constant<caf::atom("kill")>;
using list_atom = caf::atom_constant<caf::atom("list")>;
using meta_atom = caf::atom_constant<caf::atom("meta")>;
using now_atom = caf::atom_constant<caf::atom("now")>;
using ok_atom = caf::atom_constant<caf::atom("ok")>;
using outbox_atom = caf::atom_constant<caf::atom("outbox")>;
using output_atom = caf::atom_constant<caf::atom("output")>;
using prepare_atom = caf::atom_constant<caf::atom("prepare")>;
using progress_atom = caf::atom_constant<caf::atom("progress")>;
using publish_atom = caf::atom_constant<caf::atom("publish")>;
using push_atom = caf::atom_constant<caf::atom("push")>;
using put_atom = caf::atom_constant<caf::atom("put")>;
using recover_atom = caf::atom_constant<caf::atom("recover")>;
using remove_atom = caf::atom_constant<caf::atom("remove")>;
using reopen_atom = caf::atom_constant<caf::atom("reopen")>;
using restore_atom = caf::atom_constant<caf::atom("restore")>;
using result_atom = caf::atom_constant<caf::atom("result")>;
using snapshot_atom = caf::atom_constant<caf::atom("snapshot")>;
using start_atom = caf::atom_constant<caf::atom("start")>;
using state_atom = caf::atom_constant<caf::atom("state")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using timeout_atom = caf::atom_constant<caf::atom("timeout")>;
using ws_close_atom = caf::atom_constant<caf::atom("ws_close")>;
using ws_open_atom = caf::atom_constant<caf::atom("ws_open")>;
using ws_text_atom = caf::atom_constant<caf::atom("ws_text")>;

} // namespace makima
