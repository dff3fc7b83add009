"""The kubelet pod-resources API (v1): generated stubs and a small client.

``api.proto`` is written from Kubernetes' official definition; ``api_pb2.py`` and
``api_pb2_grpc.py`` are generated from it (see the proto's header) and committed.
"""
