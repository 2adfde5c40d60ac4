#!/usr/bin/env python3
"""A Dubbo2 consumer for the end-to-end tests, on dubbo-py (default) or dubbo-python.

    dubbo_consumer.py --target 127.0.0.1:20880 --count 200 --connections 8 --batchjob-every 5

Sends --count requests in total over --connections TCP connections (one thread per
connection, plus --inflight threads per connection with dubbo-python), every request with
a unique string argument and a unique attachment ``req-key``; every K-th request (1-based)
also carries ``batchjob=true``. Each reply must come from tests/peers/dubbo_provider.py
(a JSON echo of the request); it is checked to belong to this very request (echoed argument
and req-key), and that the attachments arrived unchanged.

Prints one JSON object to stdout at the end and exits 0 whatever the numbers are:

    {"client": "dubbo-py", "sent": 200, "ok": 200, "mismatched": 0, "attachment_errors": 0,
     "timeouts": 0, "errors": [<first 20 error strings>],
     "by_group": {"batchjob": {"batchjob_requests": 40, "plain_requests": 0,
                               "added_attachments": {"x-tier=batch": 40}}, ...},
     "samples": [<first few full replies as strings>], "elapsed_s": 0.41}

``mismatched`` counts replies that echo another request's key/argument, or are not the
provider's JSON echo at all (a reply delivered to the wrong caller). ``by_group`` counts the
other replies (including those with attachment errors) by the group the provider reports,
split by whether this request carried batchjob=true. ``added_attachments`` counts
attachments the provider saw that this consumer did not send (e.g. one added by a proxy),
as "key=value" -- except ``x-request-id``, whose values differ per request:
``request_ids`` counts the replies whose request reached the provider with one and
``distinct_request_ids`` how many different ones there were. A ``traceparent`` sent (with
--raw-attachments) may arrive as a child of the one sent -- same trace id and flags, a new
span id -- which ``traceparent_children`` counts; any other change is an attachment error.

Exit status is 2 only for bad command-line arguments or a missing library.
"""
import argparse
import itertools
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
import uuid

MAX_ERRORS = 20
MAX_SAMPLES = 3

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_DUBBO_PYTHON_LIB = os.path.join(REPO, ".venv", "dubbo-python-lib")


def is_child_traceparent(parent, child):
    """True when ``child`` is a W3C trace context for a new span of ``parent``'s trace."""
    if not parent or not child or len(child) != 55 or len(parent) < 55:
        return False
    hexdigits = set("0123456789abcdef")
    fields = child.split("-")
    return (len(fields) == 4 and fields[0] == "00" and child[3:35] == parent[3:35]
            and child[53:55] == parent[53:55] and child[36:52] != parent[36:52]
            and set(fields[2]) <= hexdigits and len(fields[2]) == 16)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="HOST:PORT of the provider or proxy")
    p.add_argument("--count", type=int, default=10, help="requests in total (default 10)")
    p.add_argument("--connections", type=int, default=1, help="TCP connections (default 1)")
    p.add_argument("--inflight", type=int, default=1,
                   help="concurrent requests per connection; >1 needs --client dubbo-python "
                        "(dubbo-py has no reply correlation, one request at a time)")
    p.add_argument("--batchjob-every", type=int, default=0, metavar="K",
                   help="every K-th request carries batchjob=true (0: never)")
    p.add_argument("--interface", default="org.apache.dubbo.samples.DemoService")
    p.add_argument("--method", default="sayHello")
    p.add_argument("--service-version", default=None,
                   help="service version field (library default: dubbo-py 1.0, dubbo-python 1.0.0)")
    p.add_argument("--version", dest="dubbo_version", default=None,
                   help="dubbo protocol version string sent in the request (library default: "
                        "dubbo-py 2.5.3, dubbo-python 2.4.10)")
    p.add_argument("--group", default=None, help="also send attachment group=GROUP")
    p.add_argument("--raw-attachments", default=None, metavar="JSON",
                   help='extra attachments on every request, e.g. \'{"k":"v"}\'')
    p.add_argument("--client", choices=("dubbo-py", "dubbo-python"), default="dubbo-py")
    p.add_argument("--arg-style", choices=("java-string", "py-str"), default="java-string",
                   help="dubbo-py only: java-string sends descriptor Ljava/lang/String; "
                        "(what a Java consumer sends); py-str sends the library's default "
                        "for a Python str, descriptor S")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--dubbo-python-lib", default=DEFAULT_DUBBO_PYTHON_LIB,
                   help="directory where setup-test-deps.sh installed dubbo-python")
    p.add_argument("--log-level", default="ERROR", help="python logging level (stderr)")
    a = p.parse_args(argv)
    host, sep, port = a.target.rpartition(":")
    if not sep or not port.isdigit():
        p.error("--target must be HOST:PORT")
    a.host, a.port = host, int(port)
    if a.count < 0 or a.connections < 1 or a.inflight < 1:
        p.error("--count >= 0, --connections >= 1, --inflight >= 1")
    if a.inflight > 1 and a.client == "dubbo-py":
        p.error("--inflight > 1 needs --client dubbo-python")
    try:
        a.raw = json.loads(a.raw_attachments) if a.raw_attachments else {}
    except ValueError as e:
        p.error("--raw-attachments is not JSON: %s" % e)
    if not isinstance(a.raw, dict):
        p.error("--raw-attachments must be a JSON object")
    a.raw = {str(k): str(v) for k, v in a.raw.items()}
    return a


class Results:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.ok = 0
        self.mismatched = 0
        self.attachment_errors = 0
        self.timeouts = 0
        self.errors = []
        self.error_count = 0
        self.by_group = {}
        self.request_ids = set()
        self.with_request_id = 0
        self.traceparent_children = 0
        self.samples = []

    def error(self, text, kind=None):
        with self.lock:
            self.error_count += 1
            if kind == "timeout":
                self.timeouts += 1
            elif kind == "mismatch":
                self.mismatched += 1
            elif kind == "attachments":
                self.attachment_errors += 1
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(text)

    def record(self, req, reply_text):
        """Check one reply (a str) against the request it answers."""
        with self.lock:
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append(reply_text)
        try:
            reply = json.loads(reply_text)
            if not isinstance(reply, dict):
                raise ValueError("not an object")
        except (TypeError, ValueError):
            self.error("req %s: reply is not the provider's JSON echo: %r"
                       % (req["key"], reply_text[:200] if isinstance(reply_text, str) else reply_text),
                       "mismatch")
            return
        got_att = reply.get("attachments") or {}
        got_args = reply.get("args") or []
        group = str(reply.get("group", "unknown"))
        if got_att.get("req-key") != req["key"] or not got_args or got_args[0] != req["arg"]:
            self.error("req %s: reply belongs to another request (req-key=%r, arg=%r)"
                       % (req["key"], got_att.get("req-key"), got_args[:1]), "mismatch")
            return
        added = {k: v for k, v in got_att.items() if k not in req["attachments"]}
        rid = added.pop("x-request-id", None)
        if rid is not None:
            with self.lock:
                self.with_request_id += 1
                self.request_ids.add(rid)
        self._count_group(group, req, added)
        wrong = {k: [v, got_att.get(k)] for k, v in req["attachments"].items() if got_att.get(k) != v}
        sent_tp, got_tp = req["attachments"].get("traceparent"), got_att.get("traceparent")
        if "traceparent" in wrong and is_child_traceparent(sent_tp, got_tp):
            del wrong["traceparent"]
            with self.lock:
                self.traceparent_children += 1
        if wrong:
            self.error("req %s: attachments changed on the way (sent, received): %s"
                       % (req["key"], json.dumps(wrong, sort_keys=True)), "attachments")
            return
        with self.lock:
            self.ok += 1

    def _count_group(self, group, req, added):
        with self.lock:
            g = self.by_group.setdefault(
                group, {"batchjob_requests": 0, "plain_requests": 0, "added_attachments": {}})
            g["batchjob_requests" if req["batchjob"] else "plain_requests"] += 1
            for k, v in added.items():
                kv = "%s=%s" % (k, v)
                g["added_attachments"][kv] = g["added_attachments"].get(kv, 0) + 1

    def to_json(self, args, elapsed):
        return {
            "client": args.client,
            "target": args.target,
            "sent": self.sent,
            "ok": self.ok,
            "mismatched": self.mismatched,
            "attachment_errors": self.attachment_errors,
            "timeouts": self.timeouts,
            "error_count": self.error_count,
            "errors": self.errors,
            "by_group": self.by_group,
            "request_ids": self.with_request_id,
            "traceparent_children": self.traceparent_children,
            "distinct_request_ids": len(self.request_ids),
            "samples": self.samples,
            "elapsed_s": round(elapsed, 3),
        }


class RequestSource:
    """Hands out request numbers 1..count to the worker threads."""

    def __init__(self, args):
        self.args = args
        self.run_id = uuid.uuid4().hex[:12]
        self.counter = itertools.count(1)
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            i = next(self.counter)
        if i > self.args.count:
            return None
        key = "%s-%d" % (self.run_id, i)
        batchjob = self.args.batchjob_every > 0 and i % self.args.batchjob_every == 0
        attachments = {}
        if self.args.group:
            attachments["group"] = self.args.group
        attachments.update(self.args.raw)
        if batchjob:
            attachments["batchjob"] = "true"
        attachments["req-key"] = key
        return {"n": i, "key": key, "arg": "hello-" + key, "batchjob": batchjob,
                "attachments": attachments}


# --------------------------------------------------------------------------- dubbo-py

def run_dubbo_py(args, source, results):
    try:
        from dubbo.client import DubboClient
        from dubbo.java_class import JavaString
    except ImportError as e:
        sys.stderr.write("dubbo-py is not importable (run scripts/setup-test-deps.sh and use "
                         ".venv/bin/python): %s\n" % e)
        sys.exit(2)
    from queue import Empty

    def connect():
        c = DubboClient(args.host, args.port, **({"dubbo_version": args.dubbo_version}
                                                  if args.dubbo_version else {}))
        c._timeout = args.timeout
        return c

    def drop(c):
        # dubbo-py matches replies to callers by arrival order only, so after a timeout a
        # late reply would be handed to the next caller: drop the connection instead.
        # shutdown only: the receive thread then sees EOF and ends; closing the socket
        # under it would make its recv() raise instead.
        try:
            c._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def worker():
        client = None
        while True:
            req = source.next()
            if req is None:
                break
            with results.lock:
                results.sent += 1
            if client is None:
                try:
                    client = connect()
                except OSError as e:
                    results.error("req %s: connect %s: %s" % (req["key"], args.target, e))
                    continue
            arg = JavaString(req["arg"]) if args.arg_style == "java-string" else req["arg"]
            kwargs = {"service_name": args.interface, "method_name": args.method,
                      "args": [arg], "attachment": dict(req["attachments"])}
            if args.service_version is not None:
                kwargs["service_version"] = args.service_version
            try:
                resp = client.send_request_and_return_response(**kwargs)
            except Empty:
                results.error("req %s: timeout after %ss" % (req["key"], args.timeout), "timeout")
                drop(client)
                client = None
                continue
            except OSError as e:
                results.error("req %s: %s" % (req["key"], e))
                drop(client)
                client = None
                continue
            if not hasattr(resp, "status"):
                results.error("req %s: unexpected message %r" % (req["key"], resp))
                continue
            if not resp.ok:
                results.error("req %s: status %s: %s" % (req["key"], resp.status, resp.error))
                continue
            if not isinstance(resp.data, str):
                results.error("req %s: reply value is %r, not a string" % (req["key"], resp.data))
                continue
            results.record(req, resp.data)
        if client is not None:
            drop(client)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ----------------------------------------------------------------------- dubbo-python

def run_dubbo_python(args, source, results):
    lib = os.path.abspath(args.dubbo_python_lib)
    if not os.path.isdir(os.path.join(lib, "dubbo")):
        sys.stderr.write("dubbo-python not found in %s (run scripts/setup-test-deps.sh)\n" % lib)
        sys.exit(2)
    sys.path.insert(0, lib)
    for name in [m for m in sys.modules if m == "dubbo" or m.startswith("dubbo.")]:
        del sys.modules[name]
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    import dubbo.connection.connections as conns
    from dubbo.common.exceptions import DubboRequestTimeoutException

    extra = threading.local()

    class RequestWithAttachments(conns.Request):
        """dubbo-python always sends exactly the attachments path, interface and version.
        To carry more, append entries to its attachment map (the last thing in the body,
        'H' ... 'Z') using the library's own hessian encoder, and fix the body length."""

        def encode(self):
            data = super().encode()
            att = getattr(extra, "attachments", None)
            if not att:
                return data
            body = data[16:]
            assert body[-1:] == b"Z", "dubbo-python body does not end with its attachment map"
            add = []
            for k, v in att.items():
                add.extend(self._encode_single_value(k))
                add.extend(self._encode_single_value(v))
            body = body[:-1] + bytearray(b & 0xff for b in add) + b"Z"
            return bytearray(data[:12]) + struct.pack("!i", len(body)) + body

    conns.Request = RequestWithAttachments

    host = "%s:%d" % (args.host, args.port)
    request_base = {
        "dubbo_version": args.dubbo_version or "2.4.10",
        "version": args.service_version if args.service_version is not None else "1.0.0",
        "path": args.interface,
        "method": args.method,
    }

    def worker(pool):
        while True:
            req = source.next()
            if req is None:
                break
            with results.lock:
                results.sent += 1
            # path/interface/version are sent by the library itself.
            extra.attachments = {k: v for k, v in req["attachments"].items()
                                 if k not in ("path", "interface", "version")}
            param = dict(request_base, arguments=[req["arg"]])
            try:
                value = pool.get(host, param, args.timeout)
            except DubboRequestTimeoutException:
                results.error("req %s: timeout after %ss" % (req["key"], args.timeout), "timeout")
                continue
            except Exception as e:  # the library raises its own and plain exceptions
                results.error("req %s: %s: %s" % (req["key"], type(e).__name__, str(e).strip()))
                continue
            if not isinstance(value, str):
                results.error("req %s: reply value is %r, not a string" % (req["key"], value))
                continue
            # The library's own attachments were sent too; they are not "added" by anyone.
            library_att = {"path": request_base["path"], "interface": request_base["path"],
                           "version": request_base["version"]}
            results.record(dict(req, attachments=dict(library_att, **extra.attachments)), value)

    # One SelectConnectionPool per connection: the library keeps one socket per host per pool
    # and matches replies to callers by request id, so --inflight threads share it.
    pools = [conns.connection_pool] + [conns.SelectConnectionPool()
                                       for _ in range(args.connections - 1)]

    def connect(pool):
        # the library sleeps 0.5 s after each connect; do them in parallel
        try:
            pool._get_connection(host)
        except OSError as e:
            results.error("connect %s: %s" % (args.target, e))

    connectors = [threading.Thread(target=connect, args=(p,), daemon=True) for p in pools]
    for t in connectors:
        t.start()
    for t in connectors:
        t.join()
    threads = [threading.Thread(target=worker, args=(p,), daemon=True)
               for p in pools for _ in range(args.inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s consumer %(levelname)s %(message)s")
    source = RequestSource(args)
    results = Results()
    start = time.monotonic()
    if args.client == "dubbo-py":
        run_dubbo_py(args, source, results)
    else:
        run_dubbo_python(args, source, results)
    out = results.to_json(args, time.monotonic() - start)
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
    sys.stdout.flush()
    # Library threads (receive loops, heartbeats) are daemons; do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()
