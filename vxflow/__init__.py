"""vxflow: flannel-compatible VXLAN overlay under OpenFlow control."""
