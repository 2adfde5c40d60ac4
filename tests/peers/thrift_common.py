"""Shared by the Thrift peers (thrift_server.py, thrift_client.py, capture_thrift.py):
the generated stubs, the command-line options that pick a wire format, and a client
connection built the way an application builds one."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# `thrift --gen py` output for tests/peers/thrift/echo.thrift (scripts/setup-test-deps.sh)
GEN = os.path.join(REPO, ".venv", "thrift-gen")


def load_stubs():
    """Puts the generated stubs on sys.path; exits with a hint when they are missing."""
    if not os.path.isdir(os.path.join(GEN, "metamesh_echo")):
        sys.exit("%s is missing: run scripts/setup-test-deps.sh" % GEN)
    if GEN not in sys.path:
        sys.path.insert(0, GEN)


def text(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return value


def add_wire_args(parser):
    """--transport, --protocol, --strict/--non-strict."""
    parser.add_argument("--transport", choices=("framed", "buffered", "header"), default="framed")
    parser.add_argument("--protocol", choices=("binary", "compact"), default="binary",
                        help="header transport: the protocol inside the THeader frames")
    strict = parser.add_mutually_exclusive_group()
    strict.add_argument("--strict", dest="strict", action="store_true", default=True,
                        help="binary: write strict (versioned) message headers (default)")
    strict.add_argument("--non-strict", dest="strict", action="store_false",
                        help="binary: write the old versionless message header")


def connect(host, port, transport, protocol, strict=True, service="", timeout=10.0):
    """Opens a client connection: returns (transport, protocol, EchoService.Client).
    `protocol` is the THeaderProtocol in header mode (set_header, get_headers); with
    `service` the client writes through TMultiplexedProtocol (calls named service:method)."""
    load_stubs()
    from metamesh_echo import EchoService
    from thrift.protocol import TBinaryProtocol, TCompactProtocol, THeaderProtocol
    from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
    from thrift.transport import TSocket, TTransport
    from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID

    sock = TSocket.TSocket(host, port)
    sock.setTimeout(int(timeout * 1000))
    if transport == "framed":
        trans = TTransport.TFramedTransport(sock)
    else:
        trans = TTransport.TBufferedTransport(sock)
    if transport == "header":
        pid = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        proto = THeaderProtocol.THeaderProtocol(trans, (THeaderClientType.HEADERS,),
                                                default_protocol=pid)
    elif protocol == "binary":
        proto = TBinaryProtocol.TBinaryProtocolAccelerated(trans, strictRead=False,
                                                          strictWrite=strict)
    else:
        proto = TCompactProtocol.TCompactProtocolAccelerated(trans)
    oprot = TMultiplexedProtocol(proto, service) if service else proto
    client = EchoService.Client(proto, oprot)
    trans.open()
    return trans, proto, client


def call_unknown(client, req, name="nosuchMethod"):
    """Sends a call named `name` (not in the IDL) with echo's arguments and reads the reply
    as echo's."""
    from metamesh_echo import EchoService
    from thrift.Thrift import TMessageType

    client._oprot.writeMessageBegin(name, TMessageType.CALL, client._seqid)
    EchoService.echo_args(req=req).write(client._oprot)
    client._oprot.writeMessageEnd()
    client._oprot.trans.flush()
    return client.recv_echo()
