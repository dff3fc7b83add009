"""The agent's kubelet device plugin (API v1beta1): generated stubs, pure decisions, the server.

``api.proto`` is written from Kubernetes' official definition; ``api_pb2.py`` and
``api_pb2_grpc.py`` are generated from it (see the proto's header) and committed.
``devices.py`` decides what to offer and answer; ``plugin.py`` serves it over unix sockets.
"""
