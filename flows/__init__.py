"""The pure flow compiler: (config, leases, endpoints, node) -> the flows its br-int must hold.

No I/O and no OpenFlow library objects: plain values, so it is unit-tested and
benchmarked alone. Entry points: `flows.compiler.compile_node`,
`flows.compiler.remote_lease_flows`, `flows.compiler.node_table` (the table with its
remote-lease flows kept as compact rows), `flows.diff.diff_flows` / `diff_table`,
`flows.flow.to_ofctl`.
"""
