#!/usr/bin/env python3
"""Capture the exact Thrift messages Apache Thrift's Python library puts on the wire.

    .venv/bin/python tests/peers/capture_thrift.py [--out protocols/tests/fixtures/thrift]

Starts tests/peers/thrift_server.py once per server mode (framed/buffered transport,
binary/compact protocol, THeader, multiplexed; group "capture", --stable-reply), puts a
recording TCP relay in front of each, and runs every client scenario over its own
connection with the library's generated client (tests/peers/thrift_common.py `connect`).
The relay forwards bytes unchanged and records each direction. Framed and THeader streams
are cut at their 4-byte length prefix; a buffered (unframed) connection carries exactly one
call, so each direction is one message. Every fixture is written as lowercase hex, 32 bytes
per line, one message per file, and a one-line description is printed per file.

Everything stays on 127.0.0.1. Run with the virtualenv's python (scripts/setup-test-deps.sh).
"""
import argparse
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "protocols", "tests", "fixtures", "thrift")
sys.path.insert(0, HERE)

import thrift_common  # noqa: E402
from relay import RecordingRelay  # noqa: E402

SEQID = 0x01020304
HEADERS = [("x-tenant", "acme"), ("x-route", "blue")]

SERVERS = {
    "framed-binary": ["--transport", "framed", "--protocol", "binary"],
    "framed-binary-nonstrict": ["--transport", "framed", "--protocol", "binary", "--non-strict"],
    "framed-compact": ["--transport", "framed", "--protocol", "compact"],
    "buffered-binary": ["--transport", "buffered", "--protocol", "binary"],
    "buffered-compact": ["--transport", "buffered", "--protocol", "compact"],
    "header": ["--transport", "header", "--protocol", "binary"],
    "mux-framed-binary": ["--transport", "framed", "--protocol", "binary",
                          "--multiplexed", "EchoService,Other"],
    "mux-framed-compact": ["--transport", "framed", "--protocol", "compact",
                           "--multiplexed", "EchoService"],
    "mux-header": ["--transport", "header", "--protocol", "binary",
                   "--multiplexed", "EchoService"],
}

# (file prefix, server, client transport, client protocol, options)
# options: method (echo|fail|undeclared|fire|unknown), seqid, headers, strict, service, zlib
SCENARIOS = [
    ("binary_framed_echo", "framed-binary", "framed", "binary", {}),
    ("binary_framed_echo_seqid", "framed-binary", "framed", "binary", {"seqid": SEQID}),
    ("binary_framed_fail", "framed-binary", "framed", "binary", {"method": "fail"}),
    ("binary_framed_undeclared", "framed-binary", "framed", "binary", {"method": "undeclared"}),
    ("binary_framed_unknown_method", "framed-binary", "framed", "binary", {"method": "unknown"}),
    ("binary_framed_oneway", "framed-binary", "framed", "binary", {"method": "fire"}),
    ("binary_framed_nonstrict_echo", "framed-binary-nonstrict", "framed", "binary",
     {"strict": False}),
    ("compact_framed_echo", "framed-compact", "framed", "compact", {}),
    ("compact_framed_echo_seqid", "framed-compact", "framed", "compact", {"seqid": SEQID}),
    ("compact_framed_fail", "framed-compact", "framed", "compact", {"method": "fail"}),
    ("compact_framed_undeclared", "framed-compact", "framed", "compact", {"method": "undeclared"}),
    ("compact_framed_unknown_method", "framed-compact", "framed", "compact", {"method": "unknown"}),
    ("compact_framed_oneway", "framed-compact", "framed", "compact", {"method": "fire"}),
    ("binary_buffered_echo", "buffered-binary", "buffered", "binary", {}),
    ("binary_buffered_echo_seqid", "buffered-binary", "buffered", "binary", {"seqid": SEQID}),
    ("binary_buffered_fail", "buffered-binary", "buffered", "binary", {"method": "fail"}),
    ("binary_buffered_undeclared", "buffered-binary", "buffered", "binary", {"method": "undeclared"}),
    ("binary_buffered_oneway", "buffered-binary", "buffered", "binary", {"method": "fire"}),
    ("compact_buffered_echo", "buffered-compact", "buffered", "compact", {}),
    ("compact_buffered_undeclared", "buffered-compact", "buffered", "compact", {"method": "undeclared"}),
    ("header_binary_echo", "header", "header", "binary", {"headers": HEADERS}),
    ("header_binary_no_headers_echo", "header", "header", "binary", {}),
    ("header_binary_echo_seqid", "header", "header", "binary", {"headers": HEADERS, "seqid": SEQID}),
    ("header_binary_fail", "header", "header", "binary", {"method": "fail", "headers": HEADERS}),
    ("header_binary_undeclared", "header", "header", "binary",
     {"method": "undeclared", "headers": HEADERS}),
    ("header_binary_unknown_method", "header", "header", "binary",
     {"method": "unknown", "headers": HEADERS}),
    ("header_binary_oneway", "header", "header", "binary", {"method": "fire", "headers": HEADERS}),
    ("header_binary_zlib_echo", "header", "header", "binary", {"headers": HEADERS, "zlib": True}),
    ("header_compact_echo", "header", "header", "compact", {"headers": HEADERS}),
    ("header_compact_echo_seqid", "header", "header", "compact", {"headers": HEADERS, "seqid": SEQID}),
    ("header_compact_undeclared", "header", "header", "compact",
     {"method": "undeclared", "headers": HEADERS}),
    ("mux_binary_framed_echo", "mux-framed-binary", "framed", "binary", {"service": "EchoService"}),
    ("mux_binary_framed_fail", "mux-framed-binary", "framed", "binary",
     {"service": "EchoService", "method": "fail"}),
    ("mux_binary_framed_oneway", "mux-framed-binary", "framed", "binary",
     {"service": "EchoService", "method": "fire"}),
    ("mux_compact_framed_echo", "mux-framed-compact", "framed", "compact", {"service": "EchoService"}),
    ("mux_header_binary_echo", "mux-header", "header", "binary",
     {"service": "EchoService", "headers": HEADERS}),
]


# ------------------------------------------------------------------ recording relay

class Recorder(RecordingRelay):
    """Records the raw bytes of each direction."""

    def new_record(self, index):
        return {"c2s": bytearray(), "s2c": bytearray()}

    def forward(self, rec, direction, buf):
        with self.lock:
            rec[direction] += buf
        return buf, b""


def split_framed(stream):
    frames = []
    while len(stream) >= 4:
        n = struct.unpack(">I", stream[:4])[0]
        if len(stream) < 4 + n:
            break
        frames.append(stream[:4 + n])
        stream = stream[4 + n:]
    if stream:
        raise SystemExit("trailing bytes after frames: %r" % stream)
    return frames


# ------------------------------------------------------------------ describing messages

MESSAGE_TYPES = {1: "CALL", 2: "REPLY", 3: "EXCEPTION", 4: "ONEWAY"}


def varint(buf, pos):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def message_begin(payload, protocol):
    """(name, type, seqid, encoding notes) of a binary or compact message."""
    if protocol == "compact":
        assert payload[0] == 0x82, payload[:2]
        mtype = payload[1] >> 5
        seqid, pos = varint(payload, 2)
        n, pos = varint(payload, pos)
        return payload[pos:pos + n].decode(), mtype, seqid, "compact"
    word = struct.unpack(">i", payload[:4])[0]
    if word < 0:
        mtype = word & 0xFF
        n = struct.unpack(">I", payload[4:8])[0]
        name = payload[8:8 + n].decode()
        seqid = struct.unpack(">i", payload[8 + n:12 + n])[0]
        return name, mtype, seqid, "binary strict"
    n = word
    name = payload[4:4 + n].decode()
    mtype = payload[4 + n]
    seqid = struct.unpack(">i", payload[5 + n:9 + n])[0]
    return name, mtype, seqid, "binary non-strict"


def describe(msg, transport, protocol):
    parts = []
    body = msg
    if transport in ("framed", "header"):
        parts.append("frame %d" % struct.unpack(">I", msg[:4])[0])
        body = msg[4:]
    if transport == "header" and body[:2] == b"\x0f\xff":
        import zlib
        flags, hseq, hwords = struct.unpack(">HiH", body[2:10])
        pos = 10
        end = pos + hwords * 4
        proto_id, pos = varint(body, pos)
        ntrans, pos = varint(body, pos)
        transforms = []
        for _ in range(ntrans):
            t, pos = varint(body, pos)
            transforms.append(t)
        infos = []
        while pos < end and body[pos] != 0:
            htype, pos = varint(body, pos)
            if htype != 1:
                break
            count, pos = varint(body, pos)
            for _ in range(count):
                kl, pos = varint(body, pos)
                k = body[pos:pos + kl].decode()
                pos += kl
                vl, pos = varint(body, pos)
                v = body[pos:pos + vl].decode()
                pos += vl
                infos.append("%s=%s" % (k, v))
        payload = body[end:]
        if 1 in transforms:
            payload = zlib.decompress(payload)
        protocol = "compact" if proto_id == 2 else "binary"
        parts.append("THeader flags=0x%04x seqid=%d header=%dB protocol=%s transforms=%s info=[%s]"
                     % (flags, hseq, hwords * 4, protocol, transforms, ", ".join(infos)))
        body = payload
    name, mtype, seqid, enc = message_begin(body, protocol)
    parts.append("%s %s %r seqid=%d" % (enc, MESSAGE_TYPES.get(mtype, mtype), name, seqid))
    return "; ".join(parts)


def hexdump(frame):
    h = frame.hex()
    return "\n".join(h[i:i + 64] for i in range(0, len(h), 64)) + "\n"


# ------------------------------------------------------------------ scenarios

def run_scenario(port, transport, protocol, opts):
    thrift_common.load_stubs()
    from metamesh_echo.ttypes import EchoRequest
    from thrift.transport.THeaderTransport import THeaderTransformID

    trans, proto, client = thrift_common.connect(
        "127.0.0.1", port, transport, protocol, strict=opts.get("strict", True),
        service=opts.get("service", ""), timeout=10.0)
    try:
        if "seqid" in opts:
            client._seqid = opts["seqid"]
        for k, v in opts.get("headers", []):
            proto.set_header(k.encode(), v.encode())
        if opts.get("zlib"):
            proto.add_transform(THeaderTransformID.ZLIB)
        req = EchoRequest(message="hello")
        method = opts.get("method", "echo")
        try:
            if method == "echo":
                client.echo(req)
            elif method == "fail":
                client.fail(req)
            elif method == "undeclared":
                client.undeclared(req)
            elif method == "unknown":
                thrift_common.call_unknown(client, req)
            elif method == "fire":
                client.fire("bye")
            else:
                raise SystemExit("unknown method " + method)
        except Exception as e:  # the declared and undeclared errors are expected
            if method == "echo":
                raise
            print("  %s raised %s: %s" % (method, type(e).__name__, e), file=sys.stderr)
    finally:
        trans.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    servers = {}
    relays = {}
    written = []
    try:
        for key in sorted({s[1] for s in SCENARIOS}):
            servers[key] = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "thrift_server.py"), "--host", "127.0.0.1",
                 "--port", "0", "--group", "capture", "--stable-reply"] + SERVERS[key],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for key, proc in servers.items():
            line = proc.stdout.readline().split()
            if len(line) != 2 or line[0] != "READY":
                raise SystemExit("server %s did not become ready" % key)
            relays[key] = Recorder(("127.0.0.1", int(line[1])))

        def save(fname, msg, transport, protocol):
            with open(os.path.join(a.out, fname), "w") as f:
                f.write(hexdump(msg))
            written.append(fname)
            print("%-44s %4dB  %s" % (fname, len(msg), describe(msg, transport, protocol)))

        for prefix, server, transport, protocol, opts in SCENARIOS:
            rec = relays[server]
            index = rec.connection_count()
            run_scenario(rec.port, transport, protocol, opts)
            conn = rec.wait_connection(index)
            for direction, suffix in (("c2s", "request"), ("s2c", "reply")):
                stream = conn[direction]
                if not stream:
                    continue
                msgs = [stream] if transport == "buffered" else split_framed(stream)
                if len(msgs) != 1:
                    raise SystemExit("%s %s: %d messages" % (prefix, direction, len(msgs)))
                save("%s_%s.hex" % (prefix, suffix), msgs[0], transport, protocol)
            if opts.get("method") == "fire" and conn["s2c"]:
                raise SystemExit("%s: a reply to a oneway call" % prefix)
    finally:
        for proc in servers.values():
            proc.terminate()
        for proc in servers.values():
            proc.wait(timeout=10)
    print(json.dumps({"written": written}))


if __name__ == "__main__":
    main()
