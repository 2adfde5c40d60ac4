#!/usr/bin/env python3
"""A Thrift EchoService client on Apache Thrift's generated Python client, for the end-to-end tests.

    thrift_client.py --target 127.0.0.1:PORT [--count N] [--connections C]
        [--transport framed|buffered|header] [--protocol binary|compact] [--non-strict]
        [--service NAME] [--header k=v ...] [--tag-every K --tag k=v]
        [--method echo|fail|undeclared|fire|slow|unknown[,...]] [--delay-ms MS]
        [--echo-delay-ms MS]
        [--seqid-start S] [--zlib] [--timeout SECONDS]

Prints one JSON object on stdout when done (see tests/peers/README.md for every field) and
exits 0 whatever the calls returned; 2 when the arguments are wrong.

Call n (1-based) sends EchoRequest(message="m-<run>-<n>"). Methods listed with commas are
used in turn (call n uses method (n-1) mod len). C connections run at once, each on its own
thread with its own generated client, one call at a time (the generated client cannot do
more: it never looks at the reply's seqid or name). A transport error (timeout, reset)
drops that connection and opens a new one for the next call.

--transport header: THeaderProtocol; every --header k=v is sent as a THeader info header on
every call, plus ``x-req-key: <run>-<n>``; every K-th call (--tag-every) also sends the
--tag header. The reply's info headers are collected as response_headers.
--zlib adds the THeader zlib transform (the connection's every call is compressed).
--service NAME wraps the output protocol in TMultiplexedProtocol (calls named NAME:method).
--seqid-start S: call i of a connection (0-based) goes out with seqid S+i instead of the
library's constant 0; replies whose seqid differs are counted in seqid_errors.
Method ``unknown`` sends a call named ``nosuchMethod`` (not in the IDL) with echo's
arguments.
"""
import argparse
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from thrift_common import add_wire_args, call_unknown, connect, load_stubs, text  # noqa: E402

METHODS = ("echo", "fail", "undeclared", "fire", "slow", "unknown")
MAX_ERRORS = 20


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="HOST:PORT")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--connections", type=int, default=1)
    add_wire_args(p)
    p.add_argument("--service", default="", help="TMultiplexedProtocol service name")
    p.add_argument("--header", action="append", default=[], metavar="K=V",
                   help="THeader info header sent on every call (header transport only)")
    p.add_argument("--tag-every", type=int, default=0, metavar="K",
                   help="every K-th call also sends the --tag header")
    p.add_argument("--tag", default="", metavar="K=V")
    p.add_argument("--method", default="echo",
                   help="comma-separated, used in turn: " + "|".join(METHODS))
    p.add_argument("--delay-ms", type=int, default=0, help="slow: the ms argument")
    p.add_argument("--echo-delay-ms", type=int, default=0, help="echo: EchoRequest.delay_ms")
    p.add_argument("--seqid-start", type=int, default=None)
    p.add_argument("--zlib", action="store_true",
                   help="header transport: compress every call's payload (THeader zlib transform)")
    p.add_argument("--timeout", type=float, default=10.0, help="socket timeout, seconds")
    a = p.parse_args(argv)
    a.methods = [m.strip() for m in a.method.split(",") if m.strip()]
    for m in a.methods:
        if m not in METHODS:
            p.error("unknown --method %r" % m)
    if not a.methods:
        p.error("--method is empty")
    host, sep, port = a.target.rpartition(":")
    if not sep or not port.isdigit():
        p.error("--target must be HOST:PORT")
    a.host, a.port = host.strip("[]"), int(port)
    a.headers = []
    for h in a.header:
        k, sep, v = h.partition("=")
        if not sep or not k:
            p.error("--header wants K=V, got %r" % h)
        a.headers.append((k, v))
    a.tag_kv = None
    if a.tag_every:
        k, sep, v = a.tag.partition("=")
        if not sep or not k:
            p.error("--tag-every needs --tag K=V")
        a.tag_kv = (k, v)
    if (a.headers or a.tag_kv or a.zlib) and a.transport != "header":
        p.error("--header, --tag and --zlib need --transport header")
    if a.count < 0 or a.connections < 1:
        p.error("--count >= 0 and --connections >= 1")
    return a


def main(argv=None):
    a = parse_args(argv if argv is not None else sys.argv[1:])
    load_stubs()
    from metamesh_echo.ttypes import EchoError, EchoRequest
    from thrift.Thrift import TApplicationException, TMessageType
    from thrift.protocol.TProtocol import TProtocolException
    from thrift.transport import TTransport

    run = "%06x" % random.getrandbits(24)
    lock = threading.Lock()
    stats = {
        "sent": 0, "ok": 0, "mismatched": 0, "seqid_errors": 0, "header_errors": 0,
        "error_count": 0, "reconnects": 0,
    }
    errors = {}  # json key -> [error dict, count]
    error_kinds = {}
    by_group = {}
    by_group_method = {}
    by_group_tagged = {}
    server_headers = {}
    added_headers = {}
    # x-request-id differs per request: counted apart from the other headers.
    request_ids = set()
    with_request_id = [0]
    response_headers = {}
    reply_types = {}
    mux_services = {}
    samples = []

    def bump(d, k, n=1):
        d[k] = d.get(k, 0) + n

    def describe(exc):
        if isinstance(exc, TApplicationException):
            return {"kind": "TApplicationException", "type": exc.type, "message": text(exc.message)}
        if isinstance(exc, EchoError):
            return {"kind": "EchoError", "message": exc.message, "group": exc.group,
                    "code": exc.code}
        if isinstance(exc, (TTransport.TTransportException, TProtocolException)):
            return {"kind": type(exc).__name__, "type": exc.type,
                    "message": text(exc.message) or str(exc)}
        return {"kind": type(exc).__name__, "message": str(exc)}

    def record_error(exc):
        d = describe(exc)
        key = json.dumps(d, sort_keys=True)
        with lock:
            stats["error_count"] += 1
            bump(error_kinds, d["kind"])
            if key in errors:
                errors[key][1] += 1
            elif len(errors) < MAX_ERRORS:
                errors[key] = [d, 1]

    class Conn(object):
        def __init__(self):
            self.trans, self.proto, self.client = connect(
                a.host, a.port, a.transport, a.protocol, strict=a.strict, service=a.service,
                timeout=a.timeout)
            # Patched after connect() built the multiplexing decorator, which copies the
            # protocol's attributes.
            self.last_begin = None
            read_begin = self.proto.readMessageBegin

            def recording_read_begin():
                self.last_begin = read_begin()
                return self.last_begin

            self.proto.readMessageBegin = recording_read_begin
            self.calls = 0

        def close(self):
            try:
                self.trans.close()
            except Exception:
                pass

        def call(self, n):
            method = a.methods[(n - 1) % len(a.methods)]
            message = "m-%s-%d" % (run, n)
            sent_headers = {}
            if a.transport == "header":
                sent_headers = dict(a.headers)
                sent_headers["x-req-key"] = "%s-%d" % (run, n)
                tagged = bool(a.tag_kv) and n % a.tag_every == 0
                if tagged:
                    sent_headers[a.tag_kv[0]] = a.tag_kv[1]
                self.proto.clear_headers()
                for k, v in sent_headers.items():
                    self.proto.set_header(k.encode(), v.encode())
                if a.zlib and not self.calls:
                    from thrift.transport.THeaderTransport import THeaderTransformID
                    self.proto.add_transform(THeaderTransformID.ZLIB)
            else:
                tagged = False
            seqid = 0
            if a.seqid_start is not None:
                seqid = (a.seqid_start + self.calls) & 0x7FFFFFFF
                self.client._seqid = seqid
            self.calls += 1
            self.last_begin = None
            req = EchoRequest(message=message, delay_ms=a.echo_delay_ms if method == "echo" else 0)
            with lock:
                stats["sent"] += 1
            try:
                if method == "echo":
                    reply = self.client.echo(req)
                elif method == "slow":
                    reply = self.client.slow(a.delay_ms, req)
                elif method == "fail":
                    reply = self.client.fail(req)
                elif method == "undeclared":
                    reply = self.client.undeclared(req)
                elif method == "unknown":
                    reply = call_unknown(self.client, req)
                else:
                    self.client.fire(message)
                    with lock:
                        stats["ok"] += 1
                    return True
            except (TTransport.TTransportException, TProtocolException, EOFError, OSError) as e:
                record_error(e)
                self.note_reply(seqid)
                return False  # the connection is unusable now
            except Exception as e:  # TApplicationException, EchoError: the connection is fine
                record_error(e)
                self.note_reply(seqid)
                return True
            self.note_reply(seqid)
            ok = reply.message == message
            seen = {text(k): text(v) for k, v in (reply.headers or {}).items()}
            with lock:
                if not ok:
                    stats["mismatched"] += 1
                    return True
                stats["ok"] += 1
                bump(by_group, reply.group)
                by_group_method.setdefault(reply.group, {})
                bump(by_group_method[reply.group], reply.method)
                if tagged:
                    bump(by_group_tagged, reply.group)
                if reply.mux_service:
                    bump(mux_services, reply.mux_service)
                if any(seen.get(k) != v for k, v in sent_headers.items()):
                    stats["header_errors"] += 1
                for k, v in seen.items():
                    if k == "x-request-id" and k not in sent_headers:
                        with_request_id[0] += 1
                        request_ids.add(v)
                        continue
                    bump(server_headers, "%s=%s" % (k, v) if k != "x-req-key" else k)
                    if k not in sent_headers:
                        bump(added_headers, "%s=%s" % (k, v))
                if len(samples) < 3:
                    samples.append({
                        "method": reply.method, "message": reply.message, "group": reply.group,
                        "port": reply.port, "headers": seen, "seqid": reply.seqid,
                        "transport": reply.transport, "protocol": reply.protocol,
                        "mux_service": reply.mux_service, "fired": reply.fired,
                    })
            return True

        def note_reply(self, seqid):
            """Reply message type, seqid check and response headers of the last call."""
            begin = self.last_begin
            if begin is None:
                return
            _name, mtype, rseqid = begin
            kind = {TMessageType.REPLY: "reply", TMessageType.EXCEPTION: "exception"}.get(
                mtype, str(mtype))
            with lock:
                bump(reply_types, kind)
                if rseqid != seqid:
                    stats["seqid_errors"] += 1
                if a.transport == "header":
                    for k, v in self.proto.get_headers().items():
                        k, v = text(k), text(v)
                        bump(response_headers, "%s=%s" % (k, v))

    def worker(index):
        conn = None
        for n in range(index + 1, a.count + 1, a.connections):
            if conn is None:
                try:
                    conn = Conn()
                except Exception as e:
                    with lock:
                        stats["sent"] += 1
                    record_error(e)
                    continue
            if not conn.call(n):
                conn.close()
                conn = None
                with lock:
                    stats["reconnects"] += 1
        if conn is not None:
            conn.close()

    started = time.time()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(min(a.connections, max(a.count, 1)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = dict(stats)
    out.update({
        "errors": [dict(d, count=c) for d, c in errors.values()],
        "error_kinds": error_kinds,
        "by_group": by_group,
        "by_group_method": by_group_method,
        "by_group_tagged": by_group_tagged,
        "mux_services": mux_services,
        "server_headers": server_headers,
        "added_headers": added_headers,
        "request_ids": with_request_id[0],
        "distinct_request_ids": len(request_ids),
        "response_headers": response_headers,
        "reply_types": reply_types,
        "samples": samples,
        "target": a.target,
        "transport": a.transport,
        "protocol": a.protocol,
        "methods": a.methods,
        "elapsed_s": round(time.time() - started, 3),
    })
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
