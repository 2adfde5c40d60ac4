#!/usr/bin/env python3
"""A Dubbo2 provider built on dubbo-py's DubboService, for the end-to-end tests.

    dubbo_provider.py --host 127.0.0.1 --port 0 --group batchjob

Once listening it prints exactly one line ``READY <port>`` to stdout (and nothing else to
stdout afterwards). Logs go to stderr. SIGTERM / SIGINT stop it with exit status 0.

Every interface is served (unless --interfaces restricts them). Any method answers with a
hessian2 string holding a JSON object that echoes the request:

    {"group": "<--group>", "port": 20881, "pid": 123, "request_id": 7,
     "dubbo_version": "2.5.3", "interface": "org.apache.dubbo.samples.DemoService",
     "version": "1.0", "method": "sayHello", "args": ["..."],
     "attachments": {"batchjob": "true", "req-key": "..."}}

Methods with special behaviour (any interface):
    returnNull        replies OK with a null value (response flag RESPONSE_NULL_VALUE)
    fail              raises: dubbo-py replies status 90 with the error text as the body
    failStatus(n)     replies status n with an error text
    noReply           no handler: dubbo-py sends no reply at all (the caller times out)
    sayHelloSlow(s, ms)  sleeps ms milliseconds (default 1000) before echoing
A request attachment ``x-delay-ms: N`` delays any echoing method by N milliseconds.
With --log-requests every echo is also written to stderr as one line ``served <JSON>``.

dubbo-py's DubboService binds 0.0.0.0 and calls out to find its public address; this script
builds the same server from the library's own pieces (_DubboServer, _ServerThread and the
request handler from _get_dubbo_request_handler) bound to --host instead. The library's
handlers get only the call arguments, so a Decoder subclass remembers the request being
handled in a thread-local (dubbo-py handles each connection on one thread, one request at a
time) and the echo handler reads the attachments from there.
"""
import argparse
import json
import logging
import os
import signal
import sys
import threading
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    p.add_argument("--group", default="default", help="group name echoed in every reply")
    p.add_argument("--interfaces", default="",
                   help="comma-separated interfaces to serve (default: every interface; a "
                        "request for another one gets no reply, as dubbo-py does)")
    p.add_argument("--stable-reply", action="store_true",
                   help="leave pid and port out of replies (reproducible byte captures)")
    p.add_argument("--log-level", default="WARNING", help="python logging level (stderr)")
    p.add_argument("--log-requests", action="store_true",
                   help="write one stderr line 'served <the JSON echo>' per echoed request "
                        "(whatever --log-level says): a count of the requests this "
                        "provider answered, with the attachments it saw")
    return p.parse_args(argv)


def jsonable(value):
    """Arguments decoded by dubbo-py may be bytes, datetimes or namedtuples."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if hasattr(value, "_asdict"):
        return {"$class": type(value).__name__, **{k: jsonable(v) for k, v in value._asdict().items()}}
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def text(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return value


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s provider[" + args.group + "] %(levelname)s %(message)s")

    import dubbo.server as dserver
    from dubbo.errors import DubboError

    current = threading.local()

    class RecordingDecoder(dserver.Decoder):
        def decode(self):
            msg = super().decode()
            current.msg = msg
            return msg

    # dubbo.server looks Decoder up as a module global on every message.
    dserver.Decoder = RecordingDecoder

    served = {s.strip() for s in args.interfaces.split(",") if s.strip()}
    port_box = {}
    log_lock = threading.Lock()

    def echo(*call_args):
        msg = getattr(current, "msg", None)
        attachments = dict(getattr(msg, "attachment", None) or {})
        method = text(getattr(msg, "method_name", b""))
        delay_ms = 0
        if method == "sayHelloSlow":
            delay_ms = int(call_args[1]) if len(call_args) > 1 else 1000
        if "x-delay-ms" in attachments:
            delay_ms = int(attachments["x-delay-ms"])
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        reply = {
            "group": args.group,
            "port": port_box.get("port"),
            "pid": os.getpid(),
            "request_id": getattr(msg, "id", None),
            "dubbo_version": text(getattr(msg, "dubbo_version", None)),
            "interface": text(getattr(msg, "service_name", None)),
            "version": text(getattr(msg, "service_version", None)),
            "method": method,
            "args": jsonable(list(call_args)),
            "attachments": jsonable(attachments),
        }
        # ASCII only: dubbo-py writes the hessian string length as len(str), so keep
        # characters and bytes equal.
        if args.stable_reply:
            del reply["pid"], reply["port"]
        encoded = json.dumps(reply, ensure_ascii=True, sort_keys=True)
        if args.log_requests:
            # One write per line under a lock: handler threads must not interleave.
            with log_lock:
                sys.stderr.write("served " + encoded + "\n")
                sys.stderr.flush()
        return encoded

    def return_null(*_):
        return None

    def fail(*_):
        raise RuntimeError("provider %s: fail() raised on purpose" % args.group)

    def fail_status(*call_args):
        status = int(call_args[0]) if call_args else 70
        raise DubboError(status, "provider %s: failStatus(%d)" % (args.group, status))

    special = {"returnNull": return_null, "fail": fail, "failStatus": fail_status}

    class AnyMethod(dict):
        def get(self, method, default=None):
            if method == "noReply":
                return None
            return special.get(method, echo)

    class AnyInterface(dict):
        def get(self, interface, default=None):
            if served and interface not in served:
                return {}
            return AnyMethod()

    server = dserver._DubboServer((args.host, args.port),
                                  dserver._get_dubbo_request_handler(AnyInterface()))
    port = server.server_address[1]
    port_box["port"] = port
    thread = dserver._ServerThread(server)
    thread.start()

    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    logging.info("listening on %s:%d group=%s", args.host, port, args.group)
    sys.stdout.write("READY %d\n" % port)
    sys.stdout.flush()

    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
