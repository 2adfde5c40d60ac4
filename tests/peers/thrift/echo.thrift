// The test service the Thrift peers (tests/peers/thrift_server.py, thrift_client.py)
// speak. scripts/setup-test-deps.sh generates Python stubs from it with the real
// `thrift` compiler into .venv/thrift-gen (package metamesh_echo).

namespace py metamesh_echo

struct EchoRequest {
  1: string message,
  // The server sleeps this long before answering (echo and slow).
  2: i32 delay_ms = 0,
}

// Everything the server saw of the call.
struct EchoReply {
  1: string method,         // the method name as the server's processor saw it
  2: string message,        // EchoRequest.message
  3: string group,          // the server's --group
  4: i32 port,              // the server's listening port
  5: map<string, string> headers,  // THeader info headers the server read (empty otherwise)
  6: i32 seqid,             // the seqid of the call as the server read it
  7: string transport,      // framed | buffered | header
  8: string protocol,       // binary | compact (THeader: the protocol of this message)
  9: string mux_service,    // the TMultiplexedProcessor service name, "" when not multiplexed
  10: i64 fired,            // oneway fire() calls this server received so far
}

exception EchoError {
  1: string message,
  2: string group,
  3: i32 code,
}

service EchoService {
  // Echoes the call.
  EchoReply echo(1: EchoRequest req) throws (1: EchoError err),
  // Always raises the declared EchoError (a REPLY message carrying the exception field).
  EchoReply fail(1: EchoRequest req) throws (1: EchoError err),
  // Raises an error the IDL does not declare: the library answers with an EXCEPTION
  // message holding TApplicationException INTERNAL_ERROR (6).
  EchoReply undeclared(1: EchoRequest req),
  // No reply at all.
  oneway void fire(1: string s),
  // Sleeps ms milliseconds, then echoes.
  EchoReply slow(1: i32 ms, 2: EchoRequest req),
}
