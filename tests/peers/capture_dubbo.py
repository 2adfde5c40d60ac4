#!/usr/bin/env python3
"""Capture the exact Dubbo2 frames that dubbo-py and dubbo-python put on the wire.

    .venv/bin/python tests/peers/capture_dubbo.py [--out protocols/tests/fixtures/dubbo]
                                                  [--idle-heartbeats]

Starts tests/peers/dubbo_provider.py (dubbo-py's server), puts a recording TCP relay in
front of it, and runs each client scenario in its own subprocess (dubbo-py and dubbo-python
both call their package "dubbo", so they cannot share a process) over its own connection.
The relay forwards bytes unchanged in both directions and cuts each direction into frames
(16-byte header, body length at offset 12). Every fixture is written as lowercase hex, 32
bytes per line, one frame per file.

--idle-heartbeats also keeps two connections idle for ~65 s so that the libraries' own
60-second heartbeat timers fire (dubbo-python client, dubbo-py client and dubbo-py server).

Everything stays on 127.0.0.1. Run with the virtualenv's python (scripts/setup-test-deps.sh).
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from relay import RecordingRelay  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "protocols", "tests", "fixtures", "dubbo")
DUBBO_PYTHON_LIB = os.path.join(REPO, ".venv", "dubbo-python-lib")
INTERFACE = "org.apache.dubbo.samples.DemoService"
IDLE_SECONDS = 65
# idle scenario -> {(direction, is_request): fixture} for the heartbeat frames it produces
IDLE_SCENARIOS = {
    "py-idle": {("c2s", True): "dubbo_py_idle_heartbeat_request.hex",
                ("s2c", True): "provider_heartbeat_request.hex",
                ("c2s", False): "dubbo_py_heartbeat_response.hex"},
    "dp-idle": {("c2s", False): "dubbo_python_heartbeat_response.hex"},
    "dp-idle-own-heartbeat": {("c2s", True): "dubbo_python_heartbeat_request.hex"},
}


# ------------------------------------------------------------------ recording relay

class Recorder(RecordingRelay):
    """Cuts each direction into Dubbo frames (16-byte header, body length at offset 12)."""

    def __init__(self, upstream):
        # connection indexes on which server-to-client event requests (heartbeats) are
        # recorded but not forwarded, so that the client's own idle timer can fire
        self.swallow_server_events = set()
        super().__init__(upstream)

    def new_record(self, index):
        return {"frames": [], "junk": [], "swallow": index in self.swallow_server_events}

    def forward(self, rec, direction, buf):
        out = b""
        while len(buf) >= 16:
            if buf[:2] != b"\xda\xbb":
                with self.lock:
                    rec["junk"].append((direction, buf))
                return out + buf, b""
            total = 16 + struct.unpack(">I", buf[12:16])[0]
            if len(buf) < total:
                break
            frame, buf = buf[:total], buf[total:]
            swallowed = (rec["swallow"] and direction == "s2c"
                         and frame[2] & 0xa0 == 0xa0)
            with self.lock:
                rec["frames"].append((direction + (" (not forwarded)" if swallowed else ""),
                                      frame))
            if not swallowed:
                out += frame
        return out, buf


# ------------------------------------------------------------------ client scenarios
# Each runs in a subprocess: capture_dubbo.py --scenario NAME --target HOST:PORT

def scenario_dubbo_py(name, host, port):
    from dubbo.client import DubboClient
    from dubbo.java_class import JavaString
    c = DubboClient(host, port)  # library defaults: dubbo version 2.5.3, service version 1.0

    def call(**kw):
        r = c.send_request_and_return_response(service_name=INTERFACE, **kw)
        print("%s: status=%s data=%r error=%r" % (name, r.status, r.data, r.error), file=sys.stderr)

    if name == "py-attachments":
        call(method_name="sayHello", args=[JavaString("world")],
             attachment={"batchjob": "true", "tenant": "acme"})
    elif name == "py-no-attachments":
        call(method_name="sayHello", args=[JavaString("world")])
    elif name == "py-str-arg":
        call(method_name="sayHello", args=["world"])
    elif name == "py-mixed-args":
        call(method_name="echoMixed", args=[JavaString("s"), 42, long(7), 1.5, True, {"k": "v"}])
    elif name == "py-exception":
        call(method_name="fail", args=[JavaString("world")])
    elif name == "py-null":
        call(method_name="returnNull", args=[])
    elif name == "py-oneway":
        c.send_request_without_response(service_name=INTERFACE, method_name="sayHello",
                                        args=[JavaString("oneway")])
        time.sleep(0.5)  # dubbo-py's server answers even oneway requests; let it arrive
    elif name == "py-heartbeat":
        c.send_heartbeat_request(1000)
        time.sleep(0.5)
    elif name == "py-idle":
        time.sleep(IDLE_SECONDS)
    else:
        raise SystemExit("unknown scenario " + name)
    time.sleep(0.1)


def scenario_dubbo_python(name, host, port):
    sys.path.insert(0, DUBBO_PYTHON_LIB)
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    from dubbo.client import DubboClient
    c = DubboClient(INTERFACE, host="%s:%d" % (host, port))  # defaults: version 1.0.0, dubbo 2.4.10
    if name == "dp-two-requests":
        for arg in ("world", "again"):
            r = c.call("sayHello", arg, timeout=5)
            print("%s: %r" % (name, r), file=sys.stderr)
    elif name in ("dp-idle", "dp-idle-own-heartbeat"):
        r = c.call("sayHello", "idle", timeout=5)
        time.sleep(IDLE_SECONDS)
        from dubbo.connection.connections import connection_pool
        key = "%s:%d" % (host, port)
        print("%s: after idle, connection still in pool: %s"
              % (name, key in connection_pool._connection_pool), file=sys.stderr)
    else:
        raise SystemExit("unknown scenario " + name)
    time.sleep(0.1)


def run_scenario(name, target):
    host, _, port = target.rpartition(":")
    if name.startswith("dp-"):
        scenario_dubbo_python(name, host, int(port))
    else:
        scenario_dubbo_py(name, host, int(port))
    os._exit(0)


# ------------------------------------------------------------------ orchestration

def hexdump(frame):
    h = frame.hex()
    return "\n".join(h[i:i + 64] for i in range(0, len(h), 64)) + "\n"


def describe(frame):
    flag, status = frame[2], frame[3]
    rid = struct.unpack(">q", frame[4:12])[0]
    blen = struct.unpack(">I", frame[12:16])[0]
    kinds = ["req" if flag & 0x80 else "resp"]
    if flag & 0x40:
        kinds.append("twoway")
    if flag & 0x20:
        kinds.append("event")
    return ("flag=0x%02x(%s,ser=%d) status=%d id=%d body=%d"
            % (flag, "|".join(kinds), flag & 0x1f, status, rid, blen))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--idle-heartbeats", action="store_true",
                    help="also wait ~65 s for the libraries' heartbeat timers")
    ap.add_argument("--scenario", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.scenario:
        run_scenario(a.scenario, a.target)

    provider = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "dubbo_provider.py"), "--host", "127.0.0.1",
         "--port", "0", "--group", "capture", "--stable-reply"],
        stdout=subprocess.PIPE, text=True)
    line = provider.stdout.readline().split()
    if len(line) != 2 or line[0] != "READY":
        raise SystemExit("provider did not become ready")
    rec = Recorder(("127.0.0.1", int(line[1])))
    target = "127.0.0.1:%d" % rec.port
    os.makedirs(a.out, exist_ok=True)
    written = []

    def run(name):
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--scenario", name,
                                 "--target", target])

    def save(fname, frame, what):
        with open(os.path.join(a.out, fname), "w") as f:
            f.write(hexdump(frame))
        written.append(fname)
        print("%-44s %s  %s" % (fname, describe(frame), what))

    def capture(name):
        index = rec.connection_count()
        proc = run(name)
        proc.wait(timeout=120)
        r = rec.wait_connection(index)
        if r["junk"]:
            print("non-dubbo bytes on %s: %r" % (name, r["junk"]), file=sys.stderr)
        return r["frames"]

    def pick(frames, direction, n=0):
        return [f for d, f in frames if d == direction][n]

    try:
        idle = []
        if a.idle_heartbeats:
            # Started first; they idle while the quick scenarios run. On
            # dp-idle-own-heartbeat the relay swallows the provider's heartbeat requests,
            # because each one resets dubbo-python's idle timer before it fires.
            for name in IDLE_SCENARIOS:
                index = rec.connection_count()
                if name == "dp-idle-own-heartbeat":
                    rec.swallow_server_events.add(index)
                idle.append((name, index, run(name)))
                while rec.connection_count() <= index:
                    time.sleep(0.05)

        f = capture("py-attachments")
        save("dubbo_py_request_attachments.hex", pick(f, "c2s"),
             "dubbo-py sayHello(String) with attachments batchjob=true, tenant=acme")
        save("provider_response_attachments.hex", pick(f, "s2c"),
             "dubbo-py provider's reply to it")

        f = capture("py-no-attachments")
        save("dubbo_py_request_no_attachments.hex", pick(f, "c2s"),
             "dubbo-py sayHello(String) without attachments")
        save("provider_response_no_attachments.hex", pick(f, "s2c"),
             "dubbo-py provider's reply to it")

        f = capture("py-str-arg")
        save("dubbo_py_request_py_str_arg.hex", pick(f, "c2s"),
             "dubbo-py sayHello with a plain Python str argument (descriptor S)")

        f = capture("py-mixed-args")
        save("dubbo_py_request_mixed_args.hex", pick(f, "c2s"),
             "dubbo-py echoMixed(String, int, long, double, boolean, dict)")

        f = capture("py-exception")
        save("provider_response_exception.hex", pick(f, "s2c"),
             "dubbo-py provider's reply when the handler raises (method fail)")

        f = capture("py-null")
        save("dubbo_py_request_no_args.hex", pick(f, "c2s"),
             "dubbo-py returnNull() with no arguments")
        save("provider_response_null.hex", pick(f, "s2c"),
             "dubbo-py provider's reply with a null value")

        f = capture("py-oneway")
        save("dubbo_py_request_oneway.hex", pick(f, "c2s"),
             "dubbo-py oneway request (send_request_without_response)")
        save("provider_response_to_oneway.hex", pick(f, "s2c"),
             "dubbo-py provider's reply to a oneway request (it replies anyway)")

        f = capture("py-heartbeat")
        save("dubbo_py_heartbeat_request.hex", pick(f, "c2s"),
             "dubbo-py client heartbeat (send_heartbeat_request(1000))")
        save("provider_heartbeat_response.hex", pick(f, "s2c"),
             "dubbo-py provider's heartbeat reply")

        f = capture("dp-two-requests")
        save("dubbo_python_request.hex", pick(f, "c2s", 0),
             "dubbo-python sayHello(String), first request of the process")
        save("dubbo_python_request_second.hex", pick(f, "c2s", 1),
             "dubbo-python second request of the same process")
        save("provider_response_dubbo_python.hex", pick(f, "s2c", 0),
             "dubbo-py provider's reply to the first dubbo-python request")

        for name, index, proc in idle:
            proc.wait(timeout=IDLE_SECONDS + 60)
            r = rec.wait_connection(index)
            for direction, frame in r["frames"]:
                print("  %s %-20s %s" % (name, direction, describe(frame)))
            for direction, frame in r["frames"]:
                if not frame[2] & 0x20:
                    continue
                fname = IDLE_SCENARIOS[name].get((direction.split()[0], bool(frame[2] & 0x80)))
                if fname and fname not in written:
                    save(fname, frame, "%s: %s after the 60 s timer" % (name, direction))
    finally:
        provider.terminate()
        provider.wait(timeout=10)
    print(json.dumps({"written": written}))


if __name__ == "__main__":
    main()
