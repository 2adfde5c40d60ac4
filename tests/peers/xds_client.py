"""A third-party xDS client: Envoy's generated protos (PyPI xds-protos) over grpcio.

    .venv/bin/python tests/peers/xds_client.py --server 127.0.0.1:PORT --node-id ID
        [--region R --zone Z]

Fetches clusters over ADS (state of the world), ACKs them, fetches the endpoints of
every EDS cluster, ACKs those, and checks that the server sends nothing more once both
are ACKed. Then opens a second stream with a request for an unknown type URL and one
without a node, and finally a third stream that must still be served. Prints one JSON
object on stdout.
"""

import argparse
import json
import queue
import sys
import threading

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TIMEOUT = 10


class Stream:
    """One ADS stream: requests go into a queue, responses come out of another."""

    def __init__(self, stub):
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        self.error = None

        def gen():
            while True:
                r = self.requests.get()
                if r is None:
                    return
                yield r

        def pump():
            try:
                for resp in stub.StreamAggregatedResources(gen()):
                    self.responses.put(resp)
            except grpc.RpcError as e:  # the server ended the stream
                self.error = e.code().name
            self.responses.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def send(self, req):
        self.requests.put(req)

    def recv(self, timeout=TIMEOUT):
        try:
            return self.responses.get(timeout=timeout)
        except queue.Empty:
            return "timeout"

    def close(self):
        self.requests.put(None)


def node(args):
    return base_pb2.Node(
        id=args.node_id,
        cluster="python-client",
        locality=base_pb2.Locality(region=args.region, zone=args.zone),
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--region", default="")
    p.add_argument("--zone", default="")
    args = p.parse_args()

    out = {"clusters": [], "endpoints": {}, "errors": []}
    channel = grpc.insecure_channel(args.server)
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

    s = Stream(stub)
    s.send(discovery_pb2.DiscoveryRequest(node=node(args), type_url=CLUSTER))
    resp = s.recv()
    if not isinstance(resp, discovery_pb2.DiscoveryResponse) or resp.type_url != CLUSTER:
        out["errors"].append(f"no cluster response: {resp!r}"[:300])
        print(json.dumps(out))
        return 0
    eds = []
    for any_ in resp.resources:
        c = cluster_pb2.Cluster()
        any_.Unpack(c)
        out["clusters"].append(
            {
                "name": c.name,
                "lb_policy": cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy),
                "eds": c.HasField("eds_cluster_config"),
            }
        )
        if c.HasField("eds_cluster_config"):
            eds.append(c.eds_cluster_config.service_name or c.name)
    out["cluster_version"] = resp.version_info
    # ACK the clusters, then ask for their endpoints.
    s.send(
        discovery_pb2.DiscoveryRequest(
            node=node(args),
            type_url=CLUSTER,
            version_info=resp.version_info,
            response_nonce=resp.nonce,
        )
    )
    s.send(
        discovery_pb2.DiscoveryRequest(
            node=node(args), type_url=ENDPOINTS, resource_names=eds
        )
    )
    resp = s.recv()
    if not isinstance(resp, discovery_pb2.DiscoveryResponse) or resp.type_url != ENDPOINTS:
        out["errors"].append(f"no endpoint response: {resp!r}"[:300])
    else:
        for any_ in resp.resources:
            cla = endpoint_pb2.ClusterLoadAssignment()
            any_.Unpack(cla)
            addrs = []
            for group in cla.endpoints:
                for lb in group.lb_endpoints:
                    sa = lb.endpoint.address.socket_address
                    addrs.append(f"{sa.address}:{sa.port_value}")
            out["endpoints"][cla.cluster_name] = sorted(addrs)
        s.send(
            discovery_pb2.DiscoveryRequest(
                node=node(args),
                type_url=ENDPOINTS,
                resource_names=eds,
                version_info=resp.version_info,
                response_nonce=resp.nonce,
            )
        )
    # Both ACKed and nothing changed: the server must stay quiet.
    extra = s.recv(timeout=1.0)
    out["quiet_after_ack"] = extra == "timeout"
    s.close()

    # Malformed requests on a second stream.
    bad = Stream(stub)
    bad.send(
        discovery_pb2.DiscoveryRequest(
            node=node(args), type_url="type.googleapis.com/no.such.Type"
        )
    )
    reply = bad.recv(timeout=1.0)
    out["unknown_type"] = "ignored" if reply == "timeout" else (bad.error or "answered")
    bad.close()
    nameless = Stream(stub)
    nameless.send(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))
    reply = nameless.recv()
    out["no_node"] = nameless.error or ("answered" if reply not in (None, "timeout") else "closed")
    nameless.close()

    # The server still serves.
    again = Stream(stub)
    again.send(discovery_pb2.DiscoveryRequest(node=node(args), type_url=CLUSTER))
    resp = again.recv()
    out["served_after"] = isinstance(resp, discovery_pb2.DiscoveryResponse) and len(
        resp.resources
    ) == len(out["clusters"])
    again.close()
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
