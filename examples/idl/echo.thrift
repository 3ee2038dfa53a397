// Example services served by examples/src/bin/echo-worker.rs.
// Regenerate the committed code with: scripts/gen-thrift (needs Debian's thrift-compiler 0.17).
namespace rs echo
namespace py echo

exception EchoError {
  1: string message,
  2: i32 code,
}

service Echo {
  // Two-way call: returns `message` unchanged.
  string echo(1: string message),
  // One-way call: the worker counts it; see `notified`.
  oneway void notify(1: string message),
  // How many `notify` calls this worker process has received.
  i64 notified(),
  // Declared exception: always throws EchoError{message, code}.
  string fail(1: string message, 2: i32 code) throws (1: EchoError err),
  // Slow call: sleeps `sleep_ms` then returns `message`.
  string slow(1: string message, 2: i32 sleep_ms),
  // Identifies the worker process that served the call (for load-sharing tests).
  string whoami(),
}

service Calc {
  i32 add(1: i32 a, 2: i32 b),
}
