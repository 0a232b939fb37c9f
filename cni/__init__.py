"""vxflow's CNI plugin (`vxflow-cni`, conflist type "vxflow"): spec logic pure, I/O at the edges.

`cni.spec` (the protocol), `cni.config` (configuration, IPAM delegation) and
`cni.attachments` (naming and records) are pure or file-only; the kernel and
OVSDB edges are `cni.veth` and `ovsdb.plug`, the IPAM plugin call `cni.ipam`.
"""
