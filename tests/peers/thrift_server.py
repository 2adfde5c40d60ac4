#!/usr/bin/env python3
"""A Thrift EchoService server on Apache Thrift's own TThreadedServer, for the end-to-end tests.

    thrift_server.py --host 127.0.0.1 --port 0 --group NAME
        [--transport framed|buffered|header] [--protocol binary|compact]
        [--non-strict] [--multiplexed NAME[,NAME...]] [--stable-reply] [--log-level INFO]

Once listening it prints exactly one line ``READY <port>`` to stdout (and nothing else to
stdout afterwards). Logs go to stderr. SIGTERM / SIGINT stop it with exit status 0.

Serves tests/peers/thrift/echo.thrift (stubs generated into .venv/thrift-gen by
scripts/setup-test-deps.sh):

    echo(req)        EchoReply: what the server saw (method, message, group, port, seqid,
                     THeader info headers, transport, protocol, multiplexed service name,
                     count of oneway fire() calls received so far)
    fail(req)        raises the declared EchoError(message, group, code=42)
    undeclared(req)  raises RuntimeError: the library replies with an EXCEPTION message,
                     TApplicationException INTERNAL_ERROR (6) "Internal error"
    fire(s)          oneway: counted, no reply
    slow(ms, req)    sleeps ms milliseconds, then echoes

A request whose message name is not in the IDL gets the library's TApplicationException
UNKNOWN_METHOD (1) "Unknown function <name>".

--transport header: THeaderProtocol over a buffered socket; only THeader clients are
accepted (the library's default). Every reply carries the response headers
``x-served-by-group: <group>`` and ``x-served-by-port: <port>``; the server echoes the
request's info headers in EchoReply.headers. --protocol is the protocol the server would use
for a frame without one; a THeader server answers in the protocol of each request.

--multiplexed A,B: a TMultiplexedProcessor with the handler registered under each name;
calls must then be named ``A:method`` (a call without a known prefix makes the library
raise inside the server loop, which closes the connection without a reply).

--non-strict (binary only): write the old, versionless binary message header (both modes
read either form).
"""
import argparse
import logging
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from thrift_common import add_wire_args, load_stubs, text  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    p.add_argument("--group", default="default", help="group name echoed in every reply")
    add_wire_args(p)
    p.add_argument("--multiplexed", default="",
                   help="comma-separated service names for a TMultiplexedProcessor")
    p.add_argument("--stable-reply", action="store_true",
                   help="port 0 in replies and no x-served-by-port header (reproducible captures)")
    p.add_argument("--log-level", default="WARNING", help="python logging level (stderr)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s thrift-server[" + args.group + "] %(levelname)s %(message)s")
    load_stubs()

    from metamesh_echo import EchoService
    from metamesh_echo.ttypes import EchoError, EchoReply
    from thrift.TMultiplexedProcessor import TMultiplexedProcessor
    from thrift.protocol import TBinaryProtocol, TCompactProtocol, THeaderProtocol
    from thrift.server import TServer
    from thrift.transport import TSocket, TTransport
    from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID

    log = logging.getLogger("thrift-server")
    current = threading.local()  # per connection thread: iprot, oprot, last message begin
    fired = {"n": 0}
    fired_lock = threading.Lock()
    port_box = {}

    def protocol_name():
        iprot = getattr(current, "iprot", None)
        if args.transport == "header" and iprot is not None:
            pid = iprot.trans.protocol_id
            return "compact" if pid == THeaderSubprotocolID.COMPACT else "binary"
        return args.protocol

    def reply_headers():
        """Response info headers; the library clears them after every flushed frame."""
        if args.transport != "header":
            return
        oprot = current.oprot
        oprot.set_header(b"x-served-by-group", args.group.encode())
        if not args.stable_reply:
            oprot.set_header(b"x-served-by-port", str(port_box["port"]).encode())

    def build_reply(req):
        headers = {}
        if args.transport == "header":
            headers = {text(k): text(v) for k, v in current.iprot.get_headers().items()}
        name, _type, seqid = getattr(current, "message", ("", 0, 0))
        with fired_lock:
            fired_count = fired["n"]
        return EchoReply(method=text(name), message=req.message if req else "",
                         group=args.group, port=0 if args.stable_reply else port_box["port"],
                         headers=headers,
                         seqid=seqid, transport=args.transport, protocol=protocol_name(),
                         mux_service=getattr(current, "service", ""), fired=fired_count)

    class Handler(object):
        def echo(self, req):
            if req.delay_ms > 0:
                time.sleep(req.delay_ms / 1000.0)
            reply_headers()
            return build_reply(req)

        def fail(self, req):
            reply_headers()
            raise EchoError(message="%s: fail() raised on purpose" % args.group,
                            group=args.group, code=42)

        def undeclared(self, req):
            reply_headers()
            raise RuntimeError("%s: undeclared() raised on purpose" % args.group)

        def fire(self, s):
            with fired_lock:
                fired["n"] += 1
            log.info("fire(%r)", s)

        def slow(self, ms, req):
            time.sleep(max(ms, 0) / 1000.0)
            reply_headers()
            return build_reply(req)

    def make_processor(service):
        proc = EchoService.Processor(Handler())

        def on_begin(name, type_, seqid):
            current.message = (name, type_, seqid)
            current.service = service
            log.info("call %s%s type=%d seqid=%d", service + ":" if service else "",
                     text(name), type_, seqid)

        proc.on_message_begin(on_begin)
        return proc

    services = [s.strip() for s in args.multiplexed.split(",") if s.strip()]
    if services:
        inner = TMultiplexedProcessor()
        for s in services:
            inner.registerProcessor(s, make_processor(s))
    else:
        inner = make_processor("")

    class ConnectionProcessor(object):
        """Remembers the connection's protocols for the handler (one thread per connection)."""

        def process(self, iprot, oprot):
            current.iprot, current.oprot = iprot, oprot
            current.message = ("", 0, 0)
            current.service = ""
            return inner.process(iprot, oprot)

    class ServerSocket(TSocket.TServerSocket):
        """listen() is called once here and again by serve(): bind only once."""

        def listen(self):
            if self.handle is None:
                super().listen()

    if args.protocol == "binary":
        class BinaryFactory(object):
            """The library's accelerated factory takes no strictness options."""

            def getProtocol(self, trans):
                return TBinaryProtocol.TBinaryProtocolAccelerated(
                    trans, strictRead=False, strictWrite=args.strict)

        pfactory = BinaryFactory()
    else:
        pfactory = TCompactProtocol.TCompactProtocolAcceleratedFactory()
    if args.transport == "framed":
        tfactory = TTransport.TFramedTransportFactory()
    elif args.transport == "buffered":
        tfactory = TTransport.TBufferedTransportFactory()
    else:
        tfactory = TTransport.TBufferedTransportFactory()
        default = (THeaderSubprotocolID.COMPACT if args.protocol == "compact"
                   else THeaderSubprotocolID.BINARY)
        pfactory = THeaderProtocol.THeaderProtocolFactory(
            allowed_client_types=(THeaderClientType.HEADERS,), default_protocol=default)

    sock = ServerSocket(host=args.host, port=args.port)
    sock.listen()
    port = sock.handle.getsockname()[1]
    port_box["port"] = port
    # SIGTERM/SIGINT stay blocked in every thread (threads inherit the mask) and the main
    # thread takes them with sigwait below.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = TServer.TThreadedServer(ConnectionProcessor(), sock, tfactory, pfactory, daemon=True)
    threading.Thread(target=server.serve, name="serve", daemon=True).start()

    log.info("listening on %s:%d group=%s transport=%s protocol=%s%s", args.host, port,
             args.group, args.transport, args.protocol,
             " multiplexed=" + ",".join(services) if services else "")
    sys.stdout.write("READY %d\n" % port)
    sys.stdout.flush()

    log.info("signal %d: stopping", signal.sigwait(stop_signals))
    # The accept loop and the connection threads are daemon threads: leaving main ends
    # them (closing the listening socket first would only make the library's accept loop
    # log the same error in a tight loop).
    return 0


if __name__ == "__main__":
    sys.exit(main())
