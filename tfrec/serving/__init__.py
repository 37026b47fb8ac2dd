"""Serving: a TF Serving-compatible gRPC model server and a client."""
