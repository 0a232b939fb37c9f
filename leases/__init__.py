"""The etcd registry: flannel-compatible network config, subnet leases and vxflow endpoints."""
