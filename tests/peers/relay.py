"""A recording TCP relay for the capture scripts (capture_dubbo.py, capture_thrift.py).

RecordingRelay(upstream) listens on 127.0.0.1:<port> and connects every accepted connection
to `upstream`; two threads pump the bytes of each direction ("c2s", "s2c"). A subclass
decides what to record and what to forward by overriding new_record() and forward().
"""
import socket
import threading
import time


class RecordingRelay:
    """TCP relay 127.0.0.1:<port> -> upstream that records each connection."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []  # one record (dict) per accepted connection, in accept order
        threading.Thread(target=self._accept, daemon=True).start()

    def new_record(self, index):
        """The record of connection `index` (called with the lock held)."""
        return {}

    def forward(self, rec, direction, buf):
        """Bytes `buf` arrived (plus whatever an earlier call kept): returns (bytes to
        forward now, bytes to keep for the next call). Default: forward everything."""
        return buf, b""

    def _accept(self):
        while True:
            try:
                down, _ = self.lsock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            with self.lock:
                rec = self.new_record(len(self.conns))
                rec.update({"closed": threading.Event(), "done": 0})
                self.conns.append(rec)
            for src, dst, direction in ((down, up, "c2s"), (up, down, "s2c")):
                threading.Thread(target=self._pump, args=(src, dst, direction, rec),
                                 daemon=True).start()

    def _pump(self, src, dst, direction, rec):
        buf = b""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            out, buf = self.forward(rec, direction, buf + data)
            try:
                if out:
                    dst.sendall(out)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.lock:
            rec["done"] += 1
            if rec["done"] == 2:
                rec["closed"].set()

    def connection_count(self):
        with self.lock:
            return len(self.conns)

    def wait_connection(self, index, timeout=10):
        """The record of connection `index` once both directions are closed."""
        deadline = time.time() + timeout
        while self.connection_count() <= index:
            if time.time() > deadline:
                raise RuntimeError("no connection %d reached the recorder" % index)
            time.sleep(0.01)
        rec = self.conns[index]
        if not rec["closed"].wait(timeout):
            raise RuntimeError("connection %d did not close" % index)
        return rec
